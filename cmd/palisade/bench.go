package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/bench"
)

// benchServerProcess is the argument `palisade bench` re-executes itself
// with to run the servers of a measurement in a child process.
const benchServerProcess = "server-process"

func benchCmd(args []string) error {
	if len(args) == 1 && args[0] == benchServerProcess {
		// The child of a run: serve on stdin and stdout until the parent
		// stops it or goes away. An interrupt is the parent's to handle.
		signal.Ignore(os.Interrupt)
		return bench.Serve(context.Background(), os.Stdin, os.Stdout)
	}
	fs := newFlagSet("palisade bench", `Measure what security costs. Serves, on 127.0.0.1, the same unary call
(user.v1.UserService/GetUser, a small request and response) in twelve
configurations:

  h2c                        bare Connect over cleartext HTTP/2, no security
  tls                        bare Connect, TLS 1.3, server authenticated only
  mtls                       bare Connect, TLS 1.3, client certificate required (the Connect baseline)
  mtls+bearer                mtls with each call carrying its token, unchecked (the token's wire cost)
  connect-default-mtls       mtls with connect-go's handler defaults: every reply gzipped
  nethttp-mtls               mtls's net/http server and TLS with a hand-written gRPC
                             handler instead of connect-go's, gRPC only: the floor of
                             net/http's transport without connect-go (a diagnostic;
                             its ratios are against mtls)
  mtls+jwt                   Palisade's server: token verification, authorizer allows all
  mtls+jwt+opa               Palisade's whole chain: tokens and OPA on the default policy
  grpcgo-mtls                bare grpc-go, mTLS (the grpc-go baseline)
  grpcgo-mtls+jwt+opa        grpc-go, mTLS, golang-jwt and an OPA query per call, no caches
  grpcgo-mtls+jwt+opa+cache  the same checks with a verified-token cache and a decision
                             cache (by SHA-256 of the token / of the decision input,
                             bounded, expiring with the token)
  grpcgo-mtls+palisade       grpc-go, mTLS, Palisade's own verifier, policy engine and
                             protovalidate in an interceptor: what serving gRPC on
                             grpc-go's transport would cost (a measurement prototype)

checks that each one's security is in place (forged token and token from
another certificate unauthenticated, another user's record denied, no client
certificate refused, as each claims), then drives each over the Connect and
gRPC protocols (grpc-go and nethttp-mtls: gRPC) with its own stack's client
(connect-go for net/http's), and mtls, nethttp-mtls, mtls+jwt+opa and the
grpc-go configurations but the naive one also with the other stack's client
over gRPC (rows marked [grpc-go] or [connect-go]), which separates client
from server cost. --concurrency callers over --connections
connections, --duration per row after a --warmup, in --rounds rounds of
alternating direction; each call by one of --users users picked at random,
with that user's token, for that user's own record.

The servers run in a child process (this command re-executed as "palisade
bench server-process", talking to it over its stdin and stdout), the clients
in this one, so CPU time and allocations per call are reported for each side:
server_cpu_us and server_allocs are the server process's (getrusage user+sys,
runtime.MemStats: TLS, HTTP/2, the chain, the handler, its GC), client_cpu_us
and client_allocs this process's (the client stack and TLS, plus the
harness's own loop); cpu_us_per_call and allocs_per_call their sum.
--in-process runs the servers in this process instead (one set of figures for
both sides; one CPU profile of both).

Prints a markdown table (requests/s, p50 and p99 latency, CPU time,
allocations and bytes per call, ratios against the bare mTLS row of the same
stack and against grpcgo-mtls+jwt+opa+cache, each the median of the rounds'
ratios) and the issues' targets checked; --json writes the rows as JSON.
Fails if any call failed.`)
	o := bench.Options{}
	fs.DurationVar(&o.Duration, "duration", bench.DefaultDuration, "measured `time` per row in each round")
	fs.DurationVar(&o.Warmup, "warmup", bench.DefaultWarmup, "unmeasured `time` before each measured window (0: none)")
	fs.IntVar(&o.Rounds, "rounds", bench.DefaultRounds, "`number` of rounds")
	fs.IntVar(&o.Concurrency, "concurrency", bench.DefaultConcurrency, "`number` of concurrent callers")
	fs.IntVar(&o.Connections, "connections", bench.DefaultConnections, "`number` of connections per configuration and client (callers spread over them)")
	fs.IntVar(&o.Users, "users", bench.DefaultUsers, "`number` of distinct users (tokens and request bodies)")
	fs.Uint64Var(&o.Seed, "seed", bench.DefaultSeed, "`seed` of the callers' random choice of users")
	configs := fs.String("configs", strings.Join(bench.Configs(), ","), "comma-separated `configurations` to measure")
	protocols := fs.String("protocols", strings.Join(bench.Protocols(), ","), "comma-separated `protocols` (connect, grpc)")
	clients := fs.String("clients", strings.Join(bench.Clients(), ","), "comma-separated `clients` (connect-go, grpc-go)")
	fs.StringVar(&o.ServerLog, "server-log", bench.ServerLogDiscard, "Palisade servers' access and decision logs: discard (disabled) or json (formatted, written to io.Discard)")
	fs.BoolVar(&o.InProcess, "in-process", false, "run the servers in this process (CPU and allocations of both sides together)")
	jsonFile := fs.String("json", "", "also write the rows as JSON to `file`")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of this process (the clients; with --in-process, everything) to `file`")
	fs.StringVar(&o.ServerCPUProfile, "server-cpuprofile", "", "write a CPU profile of the server process to `file`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	if o.Duration <= 0 {
		return errors.New("--duration must be positive")
	}
	o.Configs, o.Protocols, o.Clients = splitList(*configs), splitList(*protocols), splitList(*clients)
	o.Progress = os.Stderr
	if !o.InProcess {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: find this program to run the servers with: %w", err)
		}
		o.ServerCommand = []string{exe, "bench", benchServerProcess}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	rep, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	if err := rep.WriteMarkdown(os.Stdout); err != nil {
		return err
	}
	if *jsonFile != "" {
		f, err := os.Create(*jsonFile)
		if err != nil {
			return fmt.Errorf("json: %w", err)
		}
		werr := rep.WriteJSON(f)
		if err := errors.Join(werr, f.Close()); err != nil {
			return fmt.Errorf("json: %w", err)
		}
	}
	if n := rep.FailedCalls(); n > 0 {
		return fmt.Errorf("bench: %d calls failed; the figures are not valid", n)
	}
	return nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
