// Package kit runs a Palisade service: the main of a service binary, done
// once. kit.Main parses the command line, builds what every service needs
// from it — logger, workload certificate (files or the SPIFFE Workload API)
// and its rotation, revocation list, the OPA policy (the framework's base
// plus the service's layer) and its reloads, token verification, rate
// limits, telemetry and the admin listener — hands the service's setup the
// RPC server to mount its handlers on, serves until SIGINT or SIGTERM, and
// drains.
//
//	func main() {
//		kit.Main("inventory", func(s *kit.Service) error {
//			return rpc.Mount(s.Server, inventoryv1connect.NewInventoryServiceHandler, inventory.New(s))
//		}, kit.WithPolicy(policy.Files))
//	}
//
// # Background loops
//
// Every loop the kit runs — certificate and policy reloads, the JWKS
// refresh, the admin listener, the decision log shipper — and every loop the service starts with
// Service.Go is owned: it runs until the service stops, and Run returns
// only after all of them have returned. A loop that fails (returns an error
// that is not its context ending) is logged at ERROR and stops the service:
// the server drains, Run returns the loop's error, and Main exits 1. A
// failing loop never goes unnoticed while the service limps on without it.
//
// # Stopping
//
// When the context of Run ends (in Main, at SIGINT or SIGTERM), or a loop
// fails, the service stops: the server drains (rpc.Server.Serve: health
// NOT_SERVING and /healthz 503 at once, open streams ended, in-flight calls
// given --shutdown-grace), the loops' context ends, the loops are joined,
// the admin listener stops, the Workload API connection is closed,
// telemetry is flushed, and the functions given to Service.Cleanup run, last
// first. A second signal ends the process at once.
//
// # Flags
//
// The kit's flags are listed by --help; a service adds its own with
// WithFlags. Certificates come from --cert, --key and --ca (watched every
// --cert-reload-interval, with an optional --crl), or from the Workload API
// with --spiffe-socket, which refuses the file flags. The policy is the
// framework's base plus the service's layer: the one embedded with
// WithPolicy, or --policy-dir or --policy-bundle instead, reloaded every
// --policy-reload-interval once its tests pass. Its data is the layer's
// data.json, with the service's trust domain as
// data.palisade.config.trust_domain and --policy-data's document laid
// over it. A service without a layer does not start. Tokens are verified when an issuer is configured
// (--token-issuer and --jwks-url, audience the service's own SPIFFE ID or
// --token-audience); without one every token is refused, and the kit says so
// at start. --admin-addr serves /metrics and /healthz (loopback only, unless
// --admin-allow-remote). Spans go to stdout with --trace-stdout and to an
// OpenTelemetry collector with --otlp-endpoint; --decision-log-url ships
// every authorization decision to a decision log service.
package kit

import (
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"syscall"

	"github.com/palisade-rpc/palisade/rpc"
)

// DefaultHome is the directory the development defaults of the flags point
// into: .palisade/certs/<name>.pem and friends, as `palisade certs init`
// writes them.
const DefaultHome = ".palisade"

// DefaultAddr is the default of --addr (WithAddr changes it).
const DefaultAddr = "127.0.0.1:8443"

// Main runs the service named name (its logs' service attribute, its
// telemetry's service.name, and the file names of its development
// certificates: .palisade/certs/<name>.pem) with the command line's flags,
// until SIGINT or SIGTERM; then it drains and returns. On an error it
// prints it, prefixed with name, to stderr and exits 1. See Run.
func Main(name string, setup func(*Service) error, opts ...Option) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal the default handling comes back: a second
	// SIGINT or SIGTERM ends the process without waiting for the drain.
	context.AfterFunc(ctx, stop)
	err := Run(ctx, name, os.Args[1:], setup, opts...)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}

// Run is Main without the process: it parses args (without the program
// name), builds the service, calls setup with it, serves until ctx is done
// or a background loop fails, drains, and returns once everything it
// started has stopped. It returns nil after a clean drain, and nil at once
// for -h or --help (after printing the usage). setup mounts the service's
// handlers on s.Server and may start loops (s.Go); if it returns an error,
// nothing is served and Run returns that error once what was started has
// stopped.
func Run(ctx context.Context, name string, args []string, setup func(*Service) error, opts ...Option) error {
	cfg := config{name: name, addr: DefaultAddr, logOutput: os.Stderr, stdout: os.Stdout}
	for _, o := range opts {
		o.apply(&cfg)
	}
	return run(ctx, &cfg, args, setup)
}

// Option configures Main and Run.
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

type config struct {
	name          string
	description   string
	addr          string
	layer         fs.FS
	newVerifier   func(*Service) (rpc.TokenVerifier, error)
	serverOptions []rpc.ServerOption
	flags         []func(*flag.FlagSet)
	logOutput     io.Writer // stderr; tests set it (export_test.go)
	stdout        io.Writer // --trace-stdout's; tests set it
}

// WithPolicy sets the service's policy layer: rego files (package
// palisade.authz, adding allow rules and user_procedures) with their
// *_test.rego tests and an optional data.json, at the root of fsys —
// typically an embed.FS — read with policy.LoadFS. The engine runs the
// framework's base with it. --policy-dir and --policy-bundle replace it.
func WithPolicy(fsys fs.FS) Option {
	return optionFunc(func(c *config) { c.layer = fsys })
}

// WithTokenVerifier makes the service verify bearer tokens itself, with
// the verifier newVerifier returns: a token issuer verifying the tokens it
// issues with its own keys, say. The kit's token flags (--token-issuer,
// --jwks-url, --token-audience) are then not defined, and the service may
// define flags of those names itself. newVerifier is called once the flags
// are parsed and the certificate source, logger and policy are ready,
// before the server is built: s.Server is nil then; the loops the verifier
// needs (a key refresh) may be started with s.Go. A nil verifier refuses
// every token.
func WithTokenVerifier(newVerifier func(s *Service) (rpc.TokenVerifier, error)) Option {
	return optionFunc(func(c *config) { c.newVerifier = newVerifier })
}

// WithServerOptions adds options to the RPC server, after the ones the
// kit's flags set (so they win where both set the same thing).
func WithServerOptions(opts ...rpc.ServerOption) Option {
	return optionFunc(func(c *config) { c.serverOptions = append(c.serverOptions, opts...) })
}

// WithFlags lets the service define its own flags on the kit's flag set,
// before the command line is parsed; read them in setup (or in the
// function given to WithTokenVerifier). The kit's flags are defined first:
// defining one of their names again panics, as flag does.
func WithFlags(define func(fs *flag.FlagSet)) Option {
	return optionFunc(func(c *config) { c.flags = append(c.flags, define) })
}

// WithDescription sets the text --help prints before the flags.
func WithDescription(text string) Option {
	return optionFunc(func(c *config) { c.description = text })
}

// WithAddr sets the default of --addr (DefaultAddr otherwise).
func WithAddr(addr string) Option {
	return optionFunc(func(c *config) { c.addr = addr })
}
