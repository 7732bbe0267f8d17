// Package child runs a harness's servers in a child process — so that their
// CPU and memory are measured apart from the client's — and speaks to it in
// JSON messages over its standard input and output: one request, one
// reply.
package child

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

// Process is the parent's end of a child process.
type Process struct {
	name   string // the harness's, prefixing errors
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	enc    *json.Encoder
	dec    *json.Decoder
	stderr *Tail
	done   chan error
	closed bool
}

// Start starts command. Its standard error is kept (the last 4 KiB, for
// Failure) and forwarded line by line to progress, if not nil, each line
// prefixed "server process: ". name prefixes errors ("bench").
func Start(ctx context.Context, name string, command []string, progress io.Writer) (*Process, error) {
	cmd := exec.CommandContext(ctx, command[0], command[1:]...)
	p := &Process{name: name, cmd: cmd, stderr: &Tail{Forward: progress}, done: make(chan error, 1)}
	cmd.Stderr = p.stderr
	var err error
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, fmt.Errorf("%s: server process: %w", name, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("%s: server process: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start the server process %q: %w", name, command, err)
	}
	go func() { p.done <- cmd.Wait() }()
	p.enc, p.dec = json.NewEncoder(p.stdin), json.NewDecoder(stdout)
	return p, nil
}

// Call sends req and decodes the reply into reply. Its error is not
// described (see Failure).
func (p *Process) Call(req, reply any) error {
	if err := p.enc.Encode(req); err != nil {
		return err
	}
	return p.dec.Decode(reply)
}

// Stop sends stop, decodes the reply into reply (check is then asked for
// the error it carries, if not nil), and waits for the process to exit;
// it kills the process (by its PID) if it has not exited within 30
// seconds. A second Stop does nothing.
func (p *Process) Stop(stop, reply any, check func() error) error {
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.Call(stop, reply)
	if err == nil && check != nil {
		err = check()
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
		return p.Failure("stop", err)
	}
	return nil
}

// Failure describes err, met doing what, with the end of the process's
// standard error, where a crash says why.
func (p *Process) Failure(what string, err error) error {
	if tail := p.stderr.String(); tail != "" {
		return fmt.Errorf("%s: server process: %s: %w; its standard error ends with:\n%s", p.name, what, err, tail)
	}
	return fmt.Errorf("%s: server process: %s: %w", p.name, what, err)
}

// Tail is an io.Writer that keeps the last 4 KiB written to it and
// forwards every complete line, prefixed "server process: ", to Forward
// (if set).
type Tail struct {
	Forward io.Writer

	mu   sync.Mutex
	tail []byte
	line []byte
}

const tailBytes = 4 << 10

// Write implements io.Writer.
func (t *Tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tail = append(t.tail, b...)
	if len(t.tail) > tailBytes {
		t.tail = append(t.tail[:0], t.tail[len(t.tail)-tailBytes:]...)
	}
	if t.Forward != nil {
		t.line = append(t.line, b...)
		for {
			i := bytes.IndexByte(t.line, '\n')
			if i < 0 {
				break
			}
			fmt.Fprintf(t.Forward, "server process: %s\n", t.line[:i])
			t.line = t.line[i+1:]
		}
	}
	return len(b), nil
}

// String returns what is kept, without surrounding white space.
func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.tail))
}
