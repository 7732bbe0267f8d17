package rpc

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"testing"
	"time"
)

// gatedConn is the conn under a coalescingConn in these tests: it records
// what it is asked to write, and its first Write waits for open (or a write
// deadline set meanwhile, which fails it as a real socket's would).
type gatedConn struct {
	net.Conn // nil: only Write, SetWriteDeadline and Close are called
	open     chan struct{}
	entered  chan struct{}
	mu       sync.Mutex
	writes   int
	written  bytes.Buffer
	closed   bool
	deadline chan struct{}
	fail     error
}

func newGatedConn() *gatedConn {
	return &gatedConn{open: make(chan struct{}), entered: make(chan struct{}, 1), deadline: make(chan struct{})}
}

func (g *gatedConn) Write(p []byte) (int, error) {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
	default:
		select {
		case <-g.open:
		case <-g.deadline:
			return 0, os.ErrDeadlineExceeded
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.fail != nil {
		return 0, g.fail
	}
	g.writes++
	g.written.Write(p)
	return len(p), nil
}

func (g *gatedConn) SetWriteDeadline(time.Time) error {
	select {
	case <-g.deadline:
	default:
		close(g.deadline)
	}
	return nil
}

func (g *gatedConn) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

// TestCoalescingConnBatchesWrites: what is written while the conn's writer
// is in a system call goes out in one next write, in order, whole.
func TestCoalescingConnBatchesWrites(t *testing.T) {
	g := newGatedConn()
	c := newCoalescingConn(g, true)
	var want bytes.Buffer
	for i := range 100 {
		frame := bytes.Repeat([]byte{byte(i)}, 1+i%7)
		want.Write(frame)
		if n, err := c.Write(frame); err != nil || n != len(frame) {
			t.Fatalf("Write %d: %d, %v", i, n, err)
		}
		if i == 0 {
			<-g.entered // the first frame is in the writer's system call
		}
	}
	close(g.open)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !bytes.Equal(g.written.Bytes(), want.Bytes()) {
		t.Fatalf("the bytes written differ from those sent (%d against %d bytes)", g.written.Len(), want.Len())
	}
	// The first frame, then the 99 that came meanwhile.
	if g.writes != 2 {
		t.Fatalf("100 frames took %d writes, want 2", g.writes)
	}
	if !g.closed {
		t.Fatal("Close did not close the conn")
	}
}

// TestCoalescingConnBoundsPending: a peer that does not read holds at most
// coalesceMaxPending bytes of its connection in memory; the writer then
// waits, and fails with the conn's error once Close gives up on the peer.
func TestCoalescingConnBoundsPending(t *testing.T) {
	g := newGatedConn()
	c := newCoalescingConn(g, true)
	const chunk = 4 << 10
	var accepted int
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, chunk)
		for range (8 << 20) / chunk {
			if _, err := c.Write(buf); err != nil {
				done <- err
				return
			}
			accepted += chunk
		}
		done <- nil
	}()
	<-g.entered
	select {
	case err := <-done:
		t.Fatalf("8 MiB went into a conn whose peer reads nothing (Write returned %v)", err)
	case <-time.After(2 * time.Second):
	}
	c.mu.Lock()
	pending := len(c.pending)
	c.mu.Unlock()
	if pending > coalesceMaxPending {
		t.Fatalf("%d bytes pending for a peer that reads nothing, limit %d", pending, coalesceMaxPending)
	}
	_ = c.Close() // sets the write deadline: the writer fails, the Write with it
	err := <-done
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the blocked Write returned %v, want the writer's deadline error", err)
	}
	// What the writer took in its one (blocked) write, at most a full
	// pending buffer, and what waited behind it.
	if accepted > 2*coalesceMaxPending {
		t.Fatalf("%d bytes accepted for a peer that reads nothing, limit 2 × %d", accepted, coalesceMaxPending)
	}
	t.Logf("accepted %d bytes before the writer blocked (limit %d pending)", accepted, coalesceMaxPending)
}

// TestCoalescingConnReportsWriteErrors: a failed write is returned by the
// next Write, and nothing more is sent.
func TestCoalescingConnReportsWriteErrors(t *testing.T) {
	g := newGatedConn()
	g.fail = errors.New("connection reset by peer")
	c := newCoalescingConn(g, true)
	if _, err := c.Write([]byte("first")); err != nil {
		t.Fatalf("the first Write is queued and returns nil, got %v", err)
	}
	close(g.open)
	var err error
	for range 1000 {
		if _, err = c.Write([]byte("next")); err != nil {
			break
		}
		c.mu.Lock()
		for c.writing {
			c.room.Wait()
		}
		c.mu.Unlock()
	}
	if err == nil || err.Error() != "connection reset by peer" {
		t.Fatalf("Write after a failed write returned %v", err)
	}
	if g.writes != 0 {
		t.Fatalf("%d writes succeeded", g.writes)
	}
}
