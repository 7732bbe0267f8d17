package kit

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/rpc"
)

// flags are the kit's command-line flags.
type flags struct {
	addr        string
	trustDomain string
	logLevel    string
	logFormat   string
	grace       time.Duration

	// The workload certificate: files, or the Workload API.
	ca, cert, key, crl string
	certReload         time.Duration
	spiffeSocket       string

	policyDir, policyBundle, policyData string
	// A bundle server's bundles (--policy-bundle https://…).
	bundlePersistDir, bundleKey, bundleKeyID string
	policyInterval                           time.Duration
	policyAllowUntested                      bool

	adminAddr        string
	adminAllowRemote bool
	traceStdout      bool
	otlpEndpoint     string
	decisionLogURL   string
	decisionLogInput bool

	rateLimit float64
	rateBurst int

	maxConnectionAge time.Duration

	// Token verification, when the service does not verify tokens itself
	// (WithTokenVerifier).
	tokenIssuer, jwksURL, tokenAudience string

	set map[string]bool // the flags given on the command line
}

// fileFlags are the flags of certificate files, which --spiffe-socket
// replaces.
var fileFlags = []string{"cert", "key", "ca", "crl", "cert-reload-interval"}

// define defines the kit's flags on fs.
func (f *flags) define(fs *flag.FlagSet, cfg *config) {
	certs := filepath.Join(DefaultHome, "certs")
	fs.StringVar(&f.addr, "addr", cfg.addr, "`host:port` to listen on (TLS; Connect, gRPC and gRPC-Web on one port)")
	fs.StringVar(&f.trustDomain, "trust-domain", "", "SPIFFE trust `domain` whose workloads may call this service, and whose servers it calls (default: the trust domain of its own certificate)")
	fs.StringVar(&f.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "json", "log `format`: json or text")
	fs.DurationVar(&f.grace, "shutdown-grace", rpc.DefaultShutdownGrace, "on SIGINT/SIGTERM, the `duration` in-flight calls may still run before they are cut off")

	fs.StringVar(&f.ca, "ca", filepath.Join(certs, "ca.pem"), "PEM `file` of the CA bundle that signs client and server certificates")
	fs.StringVar(&f.cert, "cert", filepath.Join(certs, cfg.name+".pem"), "PEM `file` of this service's certificate (its SPIFFE ID is the URI SAN)")
	fs.StringVar(&f.key, "key", filepath.Join(certs, cfg.name+"-key.pem"), "PEM `file` of this service's private key")
	fs.StringVar(&f.crl, "crl", "", "PEM or DER `file` of a certificate revocation list signed by a CA of --ca (e.g. .palisade/certs/crl.pem from 'palisade certs revoke'); peers with a revoked certificate fail the handshake")
	fs.DurationVar(&f.certReload, "cert-reload-interval", 2*time.Second, "how often to check --cert, --key, --ca and --crl for changes (`duration`; 0 never); changed files are validated in full before they are used, and refused (and logged) otherwise")
	fs.StringVar(&f.spiffeSocket, "spiffe-socket", "", "take the certificate and trust bundle from the SPIFFE Workload API at this unix `socket` (unix:///run/spire/agent.sock: a SPIRE agent) instead of files, rotated as the agent pushes them; --cert, --key, --ca, --crl and --cert-reload-interval are refused with it")

	fs.DurationVar(&f.maxConnectionAge, "max-connection-age", 0, "ask each client to move to a new connection once its connection is about this `duration` old (±10%), so that connections spread again over the replicas behind a load balancer; calls in flight then get --shutdown-grace to finish. 0: never")

	fs.StringVar(&f.policyDir, "policy-dir", "", "`directory` of rego policies (and their *_test.rego tests) replacing the service's own layer of the policy (the framework's base stays); watched, and a changed policy is swapped in only if it compiles and its tests pass")
	fs.StringVar(&f.policyBundle, "policy-bundle", "", "OPA bundle (tar.gz) `path or URL` replacing the service's own layer of the policy, polled with the same tests-before-swap rule; an https URL is fetched over mTLS with this service's certificate by OPA's downloader (ETag, long polling)")
	fs.StringVar(&f.bundlePersistDir, "policy-bundle-persist-dir", "", "`directory` keeping the last bundle from the bundle server (--policy-bundle https://…) that passed the tests, so that the service starts from it when the server is down at start (verified and tested again); without it, it cannot")
	fs.StringVar(&f.bundleKey, "policy-bundle-signing-key", "", "PEM `file` of the public key bundles from the bundle server must be signed with (OPA bundle signatures); an unsigned or tampered bundle is then refused and the last good policy keeps deciding")
	fs.StringVar(&f.bundleKeyID, "policy-bundle-signing-key-id", "default", "key `id` the bundles' signatures name for --policy-bundle-signing-key (OPA's default: default)")
	fs.StringVar(&f.policyData, "policy-data", "", "JSON `file` laid over the policy layer's data.json, read at start: the deployment's configuration of the rules, e.g. {\"palisade\": {\"config\": {\"delegates\": [...]}}}; objects are merged key by key, any other value replaces the layer's; data.palisade.config.trust_domain is this service's trust domain unless the file says otherwise")
	fs.DurationVar(&f.policyInterval, "policy-reload-interval", 2*time.Second, "how often to check --policy-dir or --policy-bundle for changes (`duration`); a source that cannot be read, or a version refused, is tried again after a delay that doubles from it up to 2m")
	fs.BoolVar(&f.policyAllowUntested, "policy-allow-untested", false, "UNSAFE: load a policy version even if it carries no rego test (*_test.rego), logging a warning each time; by default such a version is refused (at start-up the service does not start)")

	fs.StringVar(&f.adminAddr, "admin-addr", "", "`host:port` of the admin listener: plain HTTP serving Prometheus metrics at /metrics and GET /healthz (200 while serving, 503 before and while draining); a loopback address unless --admin-allow-remote (off when empty)")
	fs.BoolVar(&f.adminAllowRemote, "admin-allow-remote", false, "let --admin-addr bind a non-loopback address (\":9090\" in a pod, for Prometheus and the kubelet's probes); it is plain HTTP without authentication, so restrict who reaches it (a NetworkPolicy)")
	fs.BoolVar(&f.traceStdout, "trace-stdout", false, "write every trace span to stdout, one JSON object per line (OpenTelemetry stdout exporter)")
	fs.StringVar(&f.otlpEndpoint, "otlp-endpoint", "", "export trace spans to an OpenTelemetry collector at this https `URL`, over mutual TLS with this service's certificate: OTLP/gRPC without a path (https://otel-collector:4317), OTLP/HTTP to the path otherwise (https://otel-collector:4318/v1/traces)")
	fs.BoolVar(&f.decisionLogInput, "decision-log-input", false, "add the input document the policy decided on to each local decision log line (\"input\"; request fields marked debug_redact erased, listed under \"erased\"), so that `palisade policy eval --input LINE` replays a decision; off by default, as a request can hold personal data")
	fs.StringVar(&f.decisionLogURL, "decision-log-url", "", "ship every authorization decision, as OPA's decision log events, to this https `URL` (POSTed in gzipped batches over mutual TLS with this service's certificate), beside the local decision log line; bounded buffer, never in the way of a call")

	fs.Float64Var(&f.rateLimit, "rate-limit", 0, "calls per second each principal (the token's user, else the workload) may make on average; past it, resource_exhausted (429) with Retry-After (`rate`; 0 = no limit)")
	fs.IntVar(&f.rateBurst, "rate-burst", 0, "calls a principal may make at once under --rate-limit (`n`; default --rate-limit rounded up)")

	if cfg.newVerifier == nil {
		fs.StringVar(&f.tokenIssuer, "token-issuer", "", "verify bearer tokens issued by this `issuer` (their iss; a Palisade issuer's is its SPIFFE ID), with the keys at --jwks-url; without it every token is refused")
		fs.StringVar(&f.jwksURL, "jwks-url", "", "`URL` of the token issuer's JWKS (https://usersvc:8443/.well-known/jwks.json), fetched over mTLS with this service's certificate from a server that must present --token-issuer's SPIFFE ID when it is one, and refreshed in the background")
		fs.StringVar(&f.tokenAudience, "token-audience", "", "aud that tokens must carry (default this service's SPIFFE `ID`)")
	}
}

// validate checks the flags against each other, before anything is built.
func (f *flags) validate(fs *flag.FlagSet) error {
	f.set = map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { f.set[fl.Name] = true })
	if f.spiffeSocket != "" {
		var given []string
		for _, name := range fileFlags {
			if f.set[name] {
				given = append(given, "--"+name)
			}
		}
		if len(given) > 0 {
			return fmt.Errorf("--spiffe-socket takes the certificate and trust bundle from the Workload API: %s cannot be used with it", strings.Join(given, ", "))
		}
	}
	if (f.bundlePersistDir != "" || f.bundleKey != "") && !strings.HasPrefix(f.policyBundle, "https://") {
		return errors.New("--policy-bundle-persist-dir and --policy-bundle-signing-key are for a bundle server: they need --policy-bundle https://…")
	}
	if f.policyDir != "" && f.policyBundle != "" {
		return errors.New("--policy-dir and --policy-bundle are exclusive: each replaces the service's layer of the policy")
	}
	if f.policyInterval <= 0 && (f.policyDir != "" || f.policyBundle != "") {
		return fmt.Errorf("--policy-reload-interval %s is not positive", f.policyInterval)
	}
	if f.certReload < 0 {
		return fmt.Errorf("--cert-reload-interval %s is negative", f.certReload)
	}
	if f.adminAllowRemote && f.adminAddr == "" {
		return errors.New("--admin-allow-remote needs --admin-addr")
	}
	if (f.tokenIssuer == "") != (f.jwksURL == "") {
		return errors.New("--token-issuer and --jwks-url go together: tokens are verified against the issuer's keys")
	}
	if f.tokenAudience != "" && f.tokenIssuer == "" {
		return errors.New("--token-audience needs --token-issuer and --jwks-url")
	}
	return nil
}

// logger returns the logger --log-level and --log-format ask for, writing
// to w, every line carrying the service's name and, for a call, its
// request id.
func (f *flags) logger(name string, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(f.logFormat) {
	case "json":
		h = slog.NewJSONHandler(w, opts)
	case "text":
		h = slog.NewTextHandler(w, opts)
	default:
		return nil, fmt.Errorf("--log-format: %q is not json or text", f.logFormat)
	}
	return slog.New(rpc.LogHandler(h)).With("service", name), nil
}

// usage returns the flag set's Usage function: the description, then the
// flags.
func usage(fs *flag.FlagSet, description string) func() {
	return func() {
		if d := strings.TrimSpace(description); d != "" {
			fmt.Fprintf(fs.Output(), "%s\n\n", d)
		}
		fmt.Fprintf(fs.Output(), "Usage: %s [flags]\n\nFlags:\n", fs.Name())
		fs.PrintDefaults()
	}
}
