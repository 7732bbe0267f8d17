package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/child"
)

// The servers run in a process of their own, so that what each side costs
// can be measured apart: CPU time and allocations are process-wide
// counters (getrusage, runtime.MemStats), and goroutines migrate between
// threads, so no per-side figure can be read inside one process. The
// parent (Run: the clients) starts the server process (ServerCommand,
// which calls Serve), sends it the server half of the fixture and the
// configurations on its standard input, reads their addresses back on its
// standard output, and then asks it for its counters before and after each
// measured window, as it reads its own.

// serverSide is where the servers run: a server process, or this process.
type serverSide interface {
	// addr returns config's server address.
	addr(config string) string
	// sample returns the servers' counters; gc collects first.
	sample(gc bool) (serverSample, error)
	close() error
}

// serverSample is the server side's counters at one instant. CPU and
// allocations are known only for a server process (separate).
type serverSample struct {
	Separate bool             `json:"separate"`
	CPU      time.Duration    `json:"cpu_ns"`
	CPUKnown bool             `json:"cpu_known"`
	Mallocs  uint64           `json:"mallocs"`
	Bytes    uint64           `json:"bytes"`
	Accepted map[string]int64 `json:"accepted"`
}

// localServers runs the servers in this process.
type localServers struct{ set serverSet }

func (l localServers) addr(config string) string { return l.set[config].addr }

// sample returns the accepted connections only: the servers' CPU time and
// allocations are in this process's counters. gc is ignored: the caller
// collects this process's heap, which is theirs.
func (l localServers) sample(bool) (serverSample, error) {
	return serverSample{Accepted: l.set.accepted()}, nil
}

func (l localServers) close() error { l.set.close(); return nil }

// serverSpec is the server process's first message: what to serve.
type serverSpec struct {
	Configs    []string       `json:"configs"`
	ServerLog  string         `json:"server_log"`
	Fixture    fixtureMessage `json:"fixture"`
	CPUProfile string         `json:"cpu_profile,omitempty"`
}

// serverHello is the server process's answer to its spec.
type serverHello struct {
	Addrs map[string]string `json:"addrs"`
	Err   string            `json:"error,omitempty"`
}

// serverRequest is a later message to the server process: "sample" (gc
// says to collect first) or "stop".
type serverRequest struct {
	Op string `json:"op"`
	GC bool   `json:"gc,omitempty"`
}

// Serve is the server process of a Run: it reads what to serve from in,
// starts the servers on 127.0.0.1, writes their addresses to out, then
// answers the parent's requests for its counters until told to stop or in
// ends. ServerCommand must name a program that calls it with its standard
// input and output, and writes nothing else to its standard output.
func Serve(ctx context.Context, in io.Reader, out io.Writer) error {
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	var spec serverSpec
	if err := dec.Decode(&spec); err != nil {
		return fmt.Errorf("bench: server process: read the spec: %w", err)
	}
	fail := func(err error) error {
		_ = enc.Encode(serverHello{Err: err.Error()})
		return err
	}
	sf, err := spec.Fixture.serverFixture()
	if err != nil {
		return fail(err)
	}
	set, err := startServers(ctx, sf, spec.Configs, spec.ServerLog)
	if err != nil {
		return fail(err)
	}
	defer set.close()
	stopProfile := func() error { return nil }
	if spec.CPUProfile != "" {
		f, err := os.Create(spec.CPUProfile)
		if err != nil {
			return fail(fmt.Errorf("bench: server cpu profile: %w", err))
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return fail(fmt.Errorf("bench: server cpu profile: %w", err))
		}
		var once sync.Once
		stopProfile = func() error {
			var err error
			once.Do(func() {
				pprof.StopCPUProfile()
				err = f.Close()
			})
			return err
		}
		defer stopProfile()
	}
	if err := enc.Encode(serverHello{Addrs: set.addrs()}); err != nil {
		return fmt.Errorf("bench: server process: %w", err)
	}
	for {
		var req serverRequest
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the parent is gone
			}
			return fmt.Errorf("bench: server process: read a request: %w", err)
		}
		switch req.Op {
		case "sample":
			if req.GC {
				runtime.GC()
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			cpu, known := processCPU()
			s := serverSample{Separate: true, CPU: cpu, CPUKnown: known, Mallocs: ms.Mallocs, Bytes: ms.TotalAlloc, Accepted: set.accepted()}
			if err := enc.Encode(s); err != nil {
				return fmt.Errorf("bench: server process: %w", err)
			}
		case "stop":
			set.close()
			err := stopProfile()
			if err != nil {
				err = fmt.Errorf("bench: server cpu profile: %w", err)
			}
			return errors.Join(err, enc.Encode(serverSample{}))
		default:
			return fmt.Errorf("bench: server process: unknown request %q", req.Op)
		}
	}
}

// serverProcess is the parent's end of a server process (see Serve).
type serverProcess struct {
	*child.Process
	addrs map[string]string
}

// startServerProcess starts o.ServerCommand and has it serve configs.
func startServerProcess(ctx context.Context, o Options, sf *serverFixture, configs []string) (*serverProcess, error) {
	msg, err := sf.message()
	if err != nil {
		return nil, err
	}
	proc, err := child.Start(ctx, "bench", o.ServerCommand, o.Progress)
	if err != nil {
		return nil, err
	}
	p := &serverProcess{Process: proc}
	var hello serverHello
	err = p.Call(serverSpec{Configs: configs, ServerLog: o.ServerLog, Fixture: msg, CPUProfile: o.ServerCPUProfile}, &hello)
	if err == nil && hello.Err != "" {
		err = errors.New(hello.Err)
	}
	if err != nil {
		_ = p.close()
		return nil, p.Failure("start", err)
	}
	p.addrs = hello.Addrs
	return p, nil
}

func (p *serverProcess) addr(config string) string { return p.addrs[config] }

func (p *serverProcess) sample(gc bool) (serverSample, error) {
	var s serverSample
	if err := p.Call(serverRequest{Op: "sample", GC: gc}, &s); err != nil {
		return s, p.Failure("sample", err)
	}
	return s, nil
}

// close asks the server process to stop, and kills it (by its PID) if it
// has not exited within 30 seconds.
func (p *serverProcess) close() error {
	var s serverSample
	return p.Stop(serverRequest{Op: "stop"}, &s, nil)
}
