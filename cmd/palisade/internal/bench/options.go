package bench

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Configurations, in the order the report lists them. Each serves the same
// GetUser handler; they differ only in what stands in front of it.
const (
	// ConfigH2C is bare Connect over cleartext HTTP/2: no security at all.
	ConfigH2C = "h2c"
	// ConfigTLS is bare Connect over TLS 1.3, the server authenticated only.
	ConfigTLS = "tls"
	// ConfigMTLS is bare Connect over TLS 1.3 with client certificates
	// required and verified: the baseline of the Connect configurations'
	// ratio columns.
	ConfigMTLS = "mtls"
	// ConfigMTLSBearer is ConfigMTLS with every call carrying its user's
	// bearer token, which the server ignores: what the token costs on the
	// wire alone (HPACK, header checks, bytes), for reading the gap
	// between mtls and the Palisade configurations.
	ConfigMTLSBearer = "mtls+bearer"
	// ConfigConnectDefault is ConfigMTLS with connect-go's handler built
	// with the library's defaults instead of a Palisade server's options:
	// among them, every reply the client accepts gzip for is gzipped,
	// however small.
	ConfigConnectDefault = "connect-default-mtls"
	// ConfigNetHTTPMTLS is ConfigMTLS's net/http server and TLS with a
	// hand-written gRPC handler instead of connect-go's (nethttp.go): the
	// floor of net/http's HTTP/2 transport without connect-go, a
	// diagnostic row. It speaks gRPC only; like the bare Connect rows it
	// lacks a Palisade server's write coalescing.
	ConfigNetHTTPMTLS = "nethttp-mtls"
	// ConfigMTLSJWT is Palisade's server (rpc.NewServer) with a token
	// verifier and an authorizer that allows everything.
	ConfigMTLSJWT = "mtls+jwt"
	// ConfigFull is Palisade's whole chain: the token verifier and the OPA
	// engine on the default policy.
	ConfigFull = "mtls+jwt+opa"
	// ConfigGRPCGoMTLS is bare grpc-go with mTLS: the baseline of the
	// grpc-go configurations' ratio columns.
	ConfigGRPCGoMTLS = "grpcgo-mtls"
	// ConfigGRPCGo is grpc-go with mTLS and the chain a user would write
	// without Palisade: golang-jwt verification and an OPA prepared query
	// evaluated per call, no caches.
	ConfigGRPCGo = "grpcgo-mtls+jwt+opa"
	// ConfigGRPCGoCache is ConfigGRPCGo with the caches a competent team
	// would add: verified tokens by a hash of the token and decisions by a
	// hash of their input, each bounded and expiring with the token. The
	// reference of the report's second ratio columns.
	ConfigGRPCGoCache = "grpcgo-mtls+jwt+opa+cache"
	// ConfigGRPCGoPalisade is grpc-go with mTLS and Palisade's own parts of
	// the chain in a unary interceptor: what serving gRPC on grpc-go's
	// transport would cost (a prototype for measurement, grpcgopalisade.go).
	ConfigGRPCGoPalisade = "grpcgo-mtls+palisade"
)

// Protocols the configurations are measured with (the grpc-go
// configurations speak gRPC only).
const (
	ProtocolConnect = "connect"
	ProtocolGRPC    = "grpc"
)

// Clients the calls are made with. Each configuration is driven by the
// client of its own stack (connect-go for net/http's); the cross
// configurations (mtls, nethttp-mtls, mtls+jwt+opa, grpcgo-mtls,
// grpcgo-mtls+jwt+opa+cache, grpcgo-mtls+palisade) also by the other
// stack's client over gRPC, which separates a stack's client cost from its
// server's.
const (
	// ClientConnect is connect-go's generated-style client on Palisade's
	// HTTP/2 client (rpc.NewHTTPClient).
	ClientConnect = "connect-go"
	// ClientGRPCGo is a grpc-go ClientConn with mTLS transport credentials.
	ClientGRPCGo = "grpc-go"
)

// Configs returns every configuration name, in report order.
func Configs() []string {
	out := make([]string, len(configSpecs))
	for i, c := range configSpecs {
		out[i] = c.name
	}
	return out
}

// Protocols returns every protocol name.
func Protocols() []string { return []string{ProtocolConnect, ProtocolGRPC} }

// Clients returns every client name.
func Clients() []string { return []string{ClientConnect, ClientGRPCGo} }

// Server stacks.
const (
	stackConnect = "connect" // net/http and connect-go (Palisade's stack)
	stackGRPCGo  = "grpcgo"  // grpc-go
	// stackNetHTTP is net/http with a hand-written gRPC handler: gRPC only,
	// driven by the connect-go client, compared with mtls.
	stackNetHTTP = "nethttp"
)

// Authorization a configuration claims.
const (
	authzNone     = ""
	authzAllowAll = "allow-all"
	authzOPA      = "opa"
)

// configSpec is what a configuration claims to do. The preflight checks
// each claim against the running server, whatever started it.
type configSpec struct {
	name  string
	stack string
	// tls is false for h2c; clientCert says a client certificate is
	// required and verified.
	tls, clientCert bool
	// tokens says callers send their user's token; verifies that the
	// server checks it (signature, claims, certificate binding).
	tokens, verifies bool
	authz            string
	// cross says the configuration is also driven by the other stack's
	// client, over gRPC.
	cross bool
}

var configSpecs = []configSpec{
	{name: ConfigH2C, stack: stackConnect},
	{name: ConfigTLS, stack: stackConnect, tls: true},
	{name: ConfigMTLS, stack: stackConnect, tls: true, clientCert: true, cross: true},
	{name: ConfigMTLSBearer, stack: stackConnect, tls: true, clientCert: true, tokens: true},
	{name: ConfigConnectDefault, stack: stackConnect, tls: true, clientCert: true},
	{name: ConfigNetHTTPMTLS, stack: stackNetHTTP, tls: true, clientCert: true, cross: true},
	{name: ConfigMTLSJWT, stack: stackConnect, tls: true, clientCert: true, tokens: true, verifies: true, authz: authzAllowAll},
	{name: ConfigFull, stack: stackConnect, tls: true, clientCert: true, tokens: true, verifies: true, authz: authzOPA, cross: true},
	{name: ConfigGRPCGoMTLS, stack: stackGRPCGo, tls: true, clientCert: true, cross: true},
	{name: ConfigGRPCGo, stack: stackGRPCGo, tls: true, clientCert: true, tokens: true, verifies: true, authz: authzOPA},
	{name: ConfigGRPCGoCache, stack: stackGRPCGo, tls: true, clientCert: true, tokens: true, verifies: true, authz: authzOPA, cross: true},
	{name: ConfigGRPCGoPalisade, stack: stackGRPCGo, tls: true, clientCert: true, tokens: true, verifies: true, authz: authzOPA, cross: true},
}

// specOf returns the claims of a configuration (the zero spec for an
// unknown name, which validate refuses earlier).
func specOf(config string) configSpec {
	for _, c := range configSpecs {
		if c.name == config {
			return c
		}
	}
	return configSpec{name: config}
}

// nativeClient is the client of the configuration's own stack: grpc-go's
// for grpc-go, connect-go's for net/http (with or without connect-go on the
// server).
func (c configSpec) nativeClient() string {
	if c.stack == stackGRPCGo {
		return ClientGRPCGo
	}
	return ClientConnect
}

// drives says whether client speaks protocol to c: c's own client over
// every protocol its server speaks (Connect and gRPC for connect-go's
// stack, gRPC for the others), the other stack's over gRPC when c is a
// cross configuration.
func (c configSpec) drives(client, protocol string) bool {
	if client == c.nativeClient() {
		return c.stack == stackConnect || protocol == ProtocolGRPC
	}
	return c.cross && protocol == ProtocolGRPC
}

// bare is the bare mTLS configuration of c's stack: the baseline of its
// ratio columns. nethttp-mtls's is mtls, the same net/http server with
// connect-go's handler, so its ×bare columns say what connect-go's
// per-call work costs in throughput and latency.
func (c configSpec) bare() string {
	if c.stack == stackGRPCGo {
		return ConfigGRPCGoMTLS
	}
	return ConfigMTLS
}

// Server log modes of the Palisade configurations.
const (
	// ServerLogDiscard disables the access and decision logs (a handler
	// that is never enabled), so no log line is formatted.
	ServerLogDiscard = "discard"
	// ServerLogJSON formats every access and decision log line as JSON at
	// info level and writes it to io.Discard: the logging cost without I/O.
	ServerLogJSON = "json"
)

// Defaults of Options.
const (
	DefaultDuration    = 4 * time.Second
	DefaultWarmup      = time.Second
	DefaultRounds      = 4
	DefaultConcurrency = 64
	DefaultConnections = 8
	DefaultUsers       = 1000
	DefaultSeed        = 1
)

// Options configures Run. Zero values take the defaults above, except
// Warmup: zero means none. Configs and Protocols default to all of them.
type Options struct {
	// Duration is how long each configuration and protocol is measured in
	// each round.
	Duration time.Duration
	// Warmup is how long each configuration and protocol runs, unmeasured,
	// right before each of its measured windows (0: not at all).
	Warmup time.Duration
	// Rounds is how many times every configuration is measured. Rounds
	// alternate direction (forward, then backward, …) so that a linear drift
	// of the machine weighs on every configuration alike.
	Rounds int
	// Concurrency is the number of concurrent callers.
	Concurrency int
	// Connections is the number of connections per configuration; caller i
	// uses connection i mod Connections.
	Connections int
	// Users is the number of distinct users (and tokens, and request bodies).
	Users int
	// Configs, Protocols and Clients select what to measure: every
	// selected configuration over every selected protocol it speaks, with
	// every selected client that drives it (see the Client constants).
	Configs   []string
	Protocols []string
	Clients   []string
	// Seed seeds the callers' choice of users.
	Seed uint64
	// ServerLog is ServerLogDiscard (default) or ServerLogJSON.
	ServerLog string
	// Progress, when set, receives a line per measured window, and the
	// server process's standard error, each line prefixed.
	Progress io.Writer
	// ServerCommand is the command line of the server process: a program
	// that calls Serve on its standard input and output (`palisade bench
	// server-process`). The servers run there and the clients here, so
	// that CPU time and allocations are measured for each side apart.
	// Required unless InProcess.
	ServerCommand []string
	// InProcess runs the servers in this process instead: CPU time and
	// allocations are then those of both sides together.
	InProcess bool
	// ServerCPUProfile, when set, is the file the server process writes
	// a CPU profile of the whole run to (not with InProcess).
	ServerCPUProfile string
}

// withDefaults returns o with zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
	}
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
	}
	if o.Users == 0 {
		o.Users = DefaultUsers
	}
	if len(o.Configs) == 0 {
		o.Configs = Configs()
	}
	if len(o.Protocols) == 0 {
		o.Protocols = Protocols()
	}
	if len(o.Clients) == 0 {
		o.Clients = Clients()
	}
	if o.Seed == 0 {
		o.Seed = DefaultSeed
	}
	if o.ServerLog == "" {
		o.ServerLog = ServerLogDiscard
	}
	return o
}

// validate checks o (after withDefaults) and returns what is wrong with it.
func (o Options) validate() error {
	var errs []error
	if o.Duration < 0 {
		errs = append(errs, fmt.Errorf("duration %s is negative", o.Duration))
	}
	if o.Warmup < 0 {
		errs = append(errs, fmt.Errorf("warm-up %s is negative", o.Warmup))
	}
	if o.Rounds < 1 {
		errs = append(errs, fmt.Errorf("rounds must be at least 1, not %d", o.Rounds))
	}
	if o.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("concurrency must be at least 1, not %d", o.Concurrency))
	}
	if o.Connections < 1 || o.Connections > o.Concurrency {
		errs = append(errs, fmt.Errorf("connections must be between 1 and the concurrency (%d), not %d", o.Concurrency, o.Connections))
	}
	if o.Users < 1 {
		errs = append(errs, fmt.Errorf("users must be at least 1, not %d", o.Users))
	}
	for _, c := range o.Configs {
		if !slices.Contains(Configs(), c) {
			errs = append(errs, fmt.Errorf("unknown configuration %q (known: %v)", c, Configs()))
		}
	}
	for _, p := range o.Protocols {
		if !slices.Contains(Protocols(), p) {
			errs = append(errs, fmt.Errorf("unknown protocol %q (known: %v)", p, Protocols()))
		}
	}
	for _, c := range o.Clients {
		if !slices.Contains(Clients(), c) {
			errs = append(errs, fmt.Errorf("unknown client %q (known: %v)", c, Clients()))
		}
	}
	if o.ServerLog != ServerLogDiscard && o.ServerLog != ServerLogJSON {
		errs = append(errs, fmt.Errorf("server log %q is neither %q nor %q", o.ServerLog, ServerLogDiscard, ServerLogJSON))
	}
	if o.InProcess && o.ServerCPUProfile != "" {
		errs = append(errs, errors.New("a server CPU profile needs a server process: the in-process servers are in this process's profile"))
	}
	if !o.InProcess && len(o.ServerCommand) == 0 {
		errs = append(errs, errors.New("no server command to start the server process with (or run the servers in this process)"))
	}
	if len(errs) == 0 && len(o.pairs()) == 0 {
		errs = append(errs, errors.New("nothing to measure: no selected configuration speaks a selected protocol with a selected client "+
			"(the grpc-go configurations and nethttp-mtls speak only grpc; only mtls, nethttp-mtls, mtls+jwt+opa, grpcgo-mtls, grpcgo-mtls+jwt+opa+cache and grpcgo-mtls+palisade are driven by the other stack's client)"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: %w", errors.Join(errs...))
	}
	return nil
}

// pair is one measured series: a configuration spoken to in a protocol by
// a client.
type pair struct {
	config, protocol, client string
}

// String names the pair: config/protocol, with the client in brackets
// when it is not the configuration's own stack's.
func (p pair) String() string {
	s := p.config + "/" + p.protocol
	if p.client != specOf(p.config).nativeClient() {
		s += "[" + p.client + "]"
	}
	return s
}

// pairs returns the selected pairs in report order (configurations in the
// order of Configs, then protocols, then clients, in the order of theirs),
// without duplicates.
func (o Options) pairs() []pair {
	var out []pair
	for _, spec := range configSpecs {
		if !slices.Contains(o.Configs, spec.name) {
			continue
		}
		for _, p := range Protocols() {
			for _, c := range Clients() {
				if slices.Contains(o.Protocols, p) && slices.Contains(o.Clients, c) && spec.drives(c, p) {
					out = append(out, pair{spec.name, p, c})
				}
			}
		}
	}
	return out
}

// roundOrder returns the pairs in the order round r (from 0) measures them:
// forward in even rounds, backward in odd ones, so that with an even number
// of rounds every pair's positions sum to the same total and a linear drift
// of the machine costs every pair alike.
func roundOrder(pairs []pair, r int) []pair {
	out := slices.Clone(pairs)
	if r%2 == 1 {
		slices.Reverse(out)
	}
	return out
}

// estimate is how long the measurement will take, set-up aside.
func (o Options) estimate() time.Duration {
	return time.Duration(o.Rounds*len(o.pairs())) * (o.Warmup + o.Duration)
}
