// Package svcmain is the shared main of Palisade's service binaries: the
// flags every service has (listen address, certificate files, trust domain,
// logging, drain grace period), the logger, and the signal handling that
// turns SIGINT/SIGTERM into a graceful drain.
package svcmain

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// DefaultHome is where the demo keeps its state (certificates, databases, logs).
const DefaultHome = ".palisade"

// Flags are the flags common to every service binary.
type Flags struct {
	Addr          string
	CA            string
	Cert          string
	Key           string
	TrustDomain   string
	LogLevel      string
	LogFormat     string
	ShutdownGrace time.Duration
}

// Register defines the common flags on fs. name is the service's file name in
// the dev PKI ("usersvc" → .palisade/certs/usersvc.pem).
func (f *Flags) Register(fs *flag.FlagSet, name, defaultAddr string) {
	certs := filepath.Join(DefaultHome, "certs")
	fs.StringVar(&f.Addr, "addr", defaultAddr, "`host:port` to listen on (TLS; Connect, gRPC and gRPC-Web on one port)")
	fs.StringVar(&f.CA, "ca", filepath.Join(certs, "ca.pem"), "PEM `file` of the CA bundle that signs client and server certificates")
	fs.StringVar(&f.Cert, "cert", filepath.Join(certs, name+".pem"), "PEM `file` of this service's certificate (its SPIFFE ID is the URI SAN)")
	fs.StringVar(&f.Key, "key", filepath.Join(certs, name+"-key.pem"), "PEM `file` of this service's private key")
	fs.StringVar(&f.TrustDomain, "trust-domain", rpc.DefaultTrustDomain, "SPIFFE trust `domain` whose workloads may call this service")
	fs.StringVar(&f.LogLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.LogFormat, "log-format", "json", "log `format`: json or text")
	fs.DurationVar(&f.ShutdownGrace, "shutdown-grace", rpc.DefaultShutdownGrace, "on SIGINT/SIGTERM, the `duration` in-flight calls may still run before they are cut off")
}

// Logger returns the logger the flags ask for, writing to stderr.
func (f *Flags) Logger(service string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(f.LogFormat) {
	case "json":
		h = slog.NewJSONHandler(os.Stderr, opts)
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	default:
		return nil, fmt.Errorf("--log-format: %q is not json or text", f.LogFormat)
	}
	return slog.New(h).With("service", service), nil
}

// Source loads the service's certificate, key and CA bundle.
func (f *Flags) Source() (*mtls.FileSource, error) {
	src, err := mtls.NewFileSource(f.Cert, f.Key, f.CA)
	if err != nil {
		return nil, fmt.Errorf("%w (run `bin/palisade certs init` to create a development PKI)", err)
	}
	return src, nil
}

// ServerOptions returns the rpc options the common flags set.
func (f *Flags) ServerOptions(logger *slog.Logger) []rpc.ServerOption {
	return []rpc.ServerOption{
		rpc.WithLogger(logger),
		rpc.WithTrustDomain(f.TrustDomain),
		rpc.WithShutdownGrace(f.ShutdownGrace),
	}
}

// SignalContext returns a context that is done on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Usage returns a flag.FlagSet Usage function that prints a description
// before the flag defaults.
func Usage(fs *flag.FlagSet, description string) func() {
	return func() {
		fmt.Fprintf(fs.Output(), "%s\n\nUsage: %s [flags]\n\nFlags:\n", strings.TrimSpace(description), fs.Name())
		fs.PrintDefaults()
	}
}
