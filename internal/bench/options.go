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
	// required and verified: the baseline of the ratio columns.
	ConfigMTLS = "mtls"
	// ConfigMTLSBearer is ConfigMTLS with every call carrying its user's
	// bearer token, which the server ignores: what the token costs on the
	// wire alone (HPACK, header checks, bytes), for reading the gap
	// between mtls and the Palisade configurations.
	ConfigMTLSBearer = "mtls+bearer"
	// ConfigMTLSJWT is Palisade's server (rpc.NewServer) with a token
	// verifier and an authorizer that allows everything.
	ConfigMTLSJWT = "mtls+jwt"
	// ConfigFull is Palisade's whole chain: the token verifier and the OPA
	// engine on the default policy.
	ConfigFull = "mtls+jwt+opa"
	// ConfigGRPCGo is grpc-go with mTLS and the chain a user would write
	// without Palisade: golang-jwt verification and an OPA prepared query
	// evaluated per call, no caches.
	ConfigGRPCGo = "grpcgo-mtls+jwt+opa"
)

// Protocols the Connect configurations are measured with (ConfigGRPCGo
// speaks gRPC only).
const (
	ProtocolConnect = "connect"
	ProtocolGRPC    = "grpc"
)

// Configs returns every configuration name, in report order.
func Configs() []string {
	return []string{ConfigH2C, ConfigTLS, ConfigMTLS, ConfigMTLSBearer, ConfigMTLSJWT, ConfigFull, ConfigGRPCGo}
}

// Protocols returns every protocol name.
func Protocols() []string { return []string{ProtocolConnect, ProtocolGRPC} }

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
	// Configs and Protocols select what to measure.
	Configs   []string
	Protocols []string
	// Seed seeds the callers' choice of users.
	Seed uint64
	// ServerLog is ServerLogDiscard (default) or ServerLogJSON.
	ServerLog string
	// Progress, when set, receives a line per measured window.
	Progress io.Writer
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
	if o.ServerLog != ServerLogDiscard && o.ServerLog != ServerLogJSON {
		errs = append(errs, fmt.Errorf("server log %q is neither %q nor %q", o.ServerLog, ServerLogDiscard, ServerLogJSON))
	}
	if len(errs) == 0 && len(o.pairs()) == 0 {
		errs = append(errs, errors.New("nothing to measure: grpcgo-mtls+jwt+opa speaks only the grpc protocol"))
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: %w", errors.Join(errs...))
	}
	return nil
}

// pair is one measured series: a configuration spoken to in a protocol.
type pair struct {
	config, protocol string
}

func (p pair) String() string { return p.config + "/" + p.protocol }

// pairs returns the selected pairs in report order (configurations in the
// order of Configs, protocols in the order of Protocols), without duplicates.
func (o Options) pairs() []pair {
	var out []pair
	for _, c := range Configs() {
		if !slices.Contains(o.Configs, c) {
			continue
		}
		for _, p := range Protocols() {
			if !slices.Contains(o.Protocols, p) || (c == ConfigGRPCGo && p != ProtocolGRPC) {
				continue
			}
			out = append(out, pair{c, p})
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
