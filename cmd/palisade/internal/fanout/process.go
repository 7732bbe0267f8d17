package fanout

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"
)

// serverProcess is the parent's end of a server process (see Serve).
type serverProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	dec    *json.Decoder
	stderr *stderrTail
	hello  serverHello
	done   chan error
	closed bool
}

// startServerProcess starts command and has it serve spec.
func startServerProcess(ctx context.Context, command []string, spec serverSpec, progress io.Writer) (*serverProcess, error) {
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	p := &serverProcess{cmd: cmd, stderr: &stderrTail{forward: progress}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("fanout: server process: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("fanout: server process: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("fanout: start the server process %q: %w", command, err)
	}
	go func() { p.done <- cmd.Wait() }()
	p.enc, p.dec = json.NewEncoder(p.stdin), json.NewDecoder(stdout)
	err = p.enc.Encode(spec)
	if err == nil {
		err = p.dec.Decode(&p.hello)
	}
	if err == nil && p.hello.Err != "" {
		err = errors.New(p.hello.Err)
	}
	if err == nil && p.hello.Addr == "" {
		err = errors.New("no address in its answer")
	}
	if err != nil {
		_ = p.close()
		return nil, p.failure("start", err)
	}
	return p, nil
}

// call sends req and reads the reply.
func (p *serverProcess) call(req serverRequest) (serverReply, error) {
	var r serverReply
	err := p.enc.Encode(req)
	if err == nil {
		err = p.dec.Decode(&r)
	}
	if err == nil && r.Err != "" {
		err = errors.New(r.Err)
	}
	if err != nil {
		return r, p.failure(req.Op, err)
	}
	return r, nil
}

// close asks the server process to stop, and kills it (by its PID) if it
// has not exited within 30 seconds.
func (p *serverProcess) close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	var r serverReply
	err := p.enc.Encode(serverRequest{Op: "stop"})
	if err == nil {
		err = p.dec.Decode(&r)
	}
	if err == nil && r.Err != "" {
		err = errors.New(r.Err)
	}
	_ = p.stdin.Close()
	select {
	case werr := <-p.done:
		err = errors.Join(err, werr)
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		err = errors.Join(err, errors.New("did not exit within 30s after stop; killed"), <-p.done)
	}
	if err != nil {
		return p.failure("stop", err)
	}
	return nil
}

// failure describes err with the end of the server process's standard
// error, where a crash says why.
func (p *serverProcess) failure(what string, err error) error {
	if tail := p.stderr.String(); tail != "" {
		return fmt.Errorf("fanout: server process: %s: %w; its standard error ends with:\n%s", what, err, tail)
	}
	return fmt.Errorf("fanout: server process: %s: %w", what, err)
}

// stderrTail keeps the last 4 KiB written to it, and forwards every
// complete line, prefixed with prefix, to forward (if set).
type stderrTail struct {
	mu      sync.Mutex
	prefix  string
	forward io.Writer
	tail    []byte
	line    []byte
}

const stderrTailBytes = 4 << 10

func (t *stderrTail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tail = append(t.tail, b...)
	if len(t.tail) > stderrTailBytes {
		t.tail = append(t.tail[:0], t.tail[len(t.tail)-stderrTailBytes:]...)
	}
	if t.forward != nil {
		t.line = append(t.line, b...)
		for {
			i := bytes.IndexByte(t.line, '\n')
			if i < 0 {
				break
			}
			prefix := t.prefix
			if prefix == "" {
				prefix = "server process: "
			}
			fmt.Fprintf(t.forward, "%s%s\n", prefix, t.line[:i])
			t.line = t.line[i+1:]
		}
	}
	return len(b), nil
}

func (t *stderrTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.tail))
}
