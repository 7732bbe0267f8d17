package fanout

import (
	"context"
	"errors"
	"io"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/child"
)

// serverProcess is the parent's end of a server process (see Serve).
type serverProcess struct {
	*child.Process
	hello serverHello
}

// startServerProcess starts command and has it serve spec.
func startServerProcess(ctx context.Context, command []string, spec serverSpec, progress io.Writer) (*serverProcess, error) {
	proc, err := child.Start(ctx, "fanout", command, progress)
	if err != nil {
		return nil, err
	}
	p := &serverProcess{Process: proc}
	err = p.Call(spec, &p.hello)
	if err == nil && p.hello.Err != "" {
		err = errors.New(p.hello.Err)
	}
	if err == nil && p.hello.Addr == "" {
		err = errors.New("no address in its answer")
	}
	if err != nil {
		_ = p.close()
		return nil, p.Failure("start", err)
	}
	return p, nil
}

// call sends req and reads the reply.
func (p *serverProcess) call(req serverRequest) (serverReply, error) {
	var r serverReply
	err := p.Call(req, &r)
	if err == nil && r.Err != "" {
		err = errors.New(r.Err)
	}
	if err != nil {
		return r, p.Failure(req.Op, err)
	}
	return r, nil
}

// close asks the server process to stop, and kills it (by its PID) if it
// has not exited within 30 seconds.
func (p *serverProcess) close() error {
	var r serverReply
	return p.Stop(serverRequest{Op: "stop"}, &r, func() error {
		if r.Err != "" {
			return errors.New(r.Err)
		}
		return nil
	})
}
