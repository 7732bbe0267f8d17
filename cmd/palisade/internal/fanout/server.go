package fanout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/user"
)

// The Palisade side's server runs in a process of its own (Options.
// ServerCommand, which calls Serve), so that its memory and CPU time are
// its own: the subscribers run in the parent. The parent sends it the
// spec on its standard input and reads its address back on its standard
// output, then sends it requests, one JSON message each: "commit" (make
// one change), "sample" (its counters) and "stop".

// serverSpec is the server process's first message: what to serve.
type serverSpec struct {
	Fixture serverMessage `json:"fixture"`
	// MaxStreams is the per-principal stream cap (rpc.WithMaxStreamsPerPrincipal).
	MaxStreams int    `json:"max_streams"`
	CPUProfile string `json:"cpu_profile,omitempty"`
}

// serverHello is the answer to the spec: the address served, and the
// newest sequence of the change history (the demo users' creation).
type serverHello struct {
	Addr   string `json:"addr"`
	Latest int64  `json:"latest"`
	Err    string `json:"error,omitempty"`
}

// serverRequest is a later message: Op is "commit", "sample" (GC: collect
// garbage and return freed memory to the system first) or "stop".
type serverRequest struct {
	Op string `json:"op"`
	GC bool   `json:"gc,omitempty"`
}

// serverReply answers a request: a commit's sequence and commit time (on
// the clock of now), or a sample of the process's counters.
type serverReply struct {
	Seq    int64 `json:"seq,omitempty"`
	Commit int64 `json:"commit_ns,omitempty"`
	sample
	Err string `json:"error,omitempty"`
}

// sample is a server's counters at one instant.
type sample struct {
	// CPU is the CPU time used so far (user + system), if CPUKnown.
	CPU      time.Duration `json:"cpu_ns"`
	CPUKnown bool          `json:"cpu_known"`
	// Live is the memory in use by the server: for a Go server, the heap's
	// live objects and the goroutine stacks after a collection; for Redis,
	// what its allocator has handed out (used_memory).
	Live uint64 `json:"live_bytes"`
	// RSS is the resident set size (0: unknown).
	RSS uint64 `json:"rss_bytes"`
	// Conns is the number of client connections the server holds open
	// (Go server: accepted and not yet closed).
	Conns int64 `json:"conns"`
}

// Serve is the server process of a run: it reads what to serve from in,
// starts the user service's change feed on 127.0.0.1 (a throwaway SQLite
// store with the demo users, the default policy, the Palisade server),
// writes its address to out, then answers the parent's requests until told
// to stop or in ends. Options.ServerCommand must name a program that calls
// it with its standard input and output and writes nothing else to its
// standard output.
func Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	var spec serverSpec
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("fanout: server process: read the spec: %w", err)
	}
	fail := func(err error) error {
		_ = enc.Encode(serverHello{Err: err.Error()})
		return err
	}
	srv, err := startServer(ctx, spec)
	if err != nil {
		return fail(err)
	}
	defer srv.stop()
	stopProfile := func() error { return nil }
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return fail(fmt.Errorf("fanout: server cpu profile: %w", err))
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return fail(fmt.Errorf("fanout: server cpu profile: %w", err))
		}
		stopProfile = func() error {
			pprof.StopCPUProfile()
			return f.Close()
		}
	}
	_, latest, err := srv.store.ChangeBounds(ctx)
	if err != nil {
		_ = stopProfile()
		return fail(err)
	}
	if err := enc.Encode(serverHello{Addr: srv.addr, Latest: latest}); err != nil {
		_ = stopProfile()
		return fmt.Errorf("fanout: server process: %w", err)
	}
	for n := 0; ; n++ {
		var req serverRequest
		if err := dec.Decode(&req); err != nil {
			_ = stopProfile()
			if errors.Is(err, io.EOF) {
				return nil // the parent is gone
			}
			return fmt.Errorf("fanout: server process: read a request: %w", err)
		}
		var reply serverReply
		switch req.Op {
		case "commit":
			reply.Seq, reply.Commit, err = srv.commit(ctx, n)
			if err != nil {
				reply.Err = err.Error()
			}
		case "sample":
			reply.sample = srv.sample(req.GC)
		case "stop":
			srv.stop()
			err := stopProfile()
			if err != nil {
				reply.Err = fmt.Sprintf("fanout: server cpu profile: %v", err)
			}
			return errors.Join(err, enc.Encode(reply))
		default:
			reply.Err = fmt.Sprintf("unknown request %q", req.Op)
		}
		if err := enc.Encode(reply); err != nil {
			_ = stopProfile()
			return fmt.Errorf("fanout: server process: %w", err)
		}
	}
}

// feedServer is the user service's change feed, served as usersvc serves
// it: WatchUserChanges on a Palisade server with the default policy.
type feedServer struct {
	addr  string
	store *user.Store
	conns atomic.Int64
	stop  func()
}

// startServer opens a SQLite store in a new temporary directory, seeds the
// demo users and serves user.v1.UserService on 127.0.0.1 with the default
// policy engine and spec.MaxStreams streams per principal. The server logs
// as usersvc does (JSON, Info) into io.Discard: the formatting is paid,
// the writing is not.
func startServer(ctx context.Context, spec serverSpec) (*feedServer, error) {
	cert, pool, err := spec.Fixture.credentials()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "palisade-fanout-")
	if err != nil {
		return nil, fmt.Errorf("fanout: %w", err)
	}
	cleanups := []func(){func() { _ = os.RemoveAll(dir) }}
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	logger := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	store, err := user.OpenStore(ctx, filepath.Join(dir, "users.db"), user.WithStoreLogger(logger))
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	cleanups = append(cleanups, func() { _ = store.Close() })
	if _, err := store.SeedDemoUsers(ctx); err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	bundle, err := policy.LoadFS(user.Policy(), "services/user/policy")
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	engine, err := policy.NewEngine(ctx, bundle, policy.WithLogger(logger))
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	srv, err := rpc.NewServer(mtls.NewStaticSource(cert, pool), engine,
		rpc.WithLogger(logger),
		rpc.WithMaxStreamsPerPrincipal(spec.MaxStreams),
		rpc.WithShutdownGrace(time.Second))
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	if err := rpc.Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(user.NewService(store, logger))); err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("fanout: listen: %w", err)
	}
	fs := &feedServer{addr: ln.Addr().String(), store: store}
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(sctx, countingListener{Listener: ln, n: &fs.conns}) // returns once stopped
	}()
	stopped := false
	fs.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		<-done
		cleanup()
	}
	return fs, nil
}

// commit renames alice, as an administrator's UpdateUser would, and
// returns the change's sequence and the time the store's write returned.
func (s *feedServer) commit(ctx context.Context, n int) (seq, at int64, err error) {
	u := &userv1.User{Id: "alice", DisplayName: "Alice " + strconv.Itoa(n)}
	if _, err := s.store.Update(ctx, u, []string{"display_name"}); err != nil {
		return 0, 0, fmt.Errorf("fanout: commit: %w", err)
	}
	at = now()
	// This process is the only writer: the newest change is this one.
	if _, seq, err = s.store.ChangeBounds(ctx); err != nil {
		return 0, 0, fmt.Errorf("fanout: commit: %w", err)
	}
	return seq, at, nil
}

// sample reads this process's counters; gc collects garbage and returns
// the freed memory to the system first, so that Live and RSS count what
// the server holds.
func (s *feedServer) sample(gc bool) sample {
	if gc {
		debug.FreeOSMemory()
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	cpu, known := processCPU()
	return sample{CPU: cpu, CPUKnown: known, Live: ms.HeapAlloc + ms.StackInuse, RSS: selfRSS(), Conns: s.conns.Load()}
}

// selfRSS returns this process's resident set size from /proc (0 where
// there is none).
func selfRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// countingListener counts the connections open: accepted and not closed.
type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.n.Add(1)
	return &countedConn{Conn: c, n: l.n}, nil
}

type countedConn struct {
	net.Conn
	n      *atomic.Int64
	closed atomic.Bool
}

func (c *countedConn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.n.Add(-1)
	}
	return c.Conn.Close()
}
