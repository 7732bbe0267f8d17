package rpc

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"time"
)

// coalesceMaxPending bounds the bytes a coalescingConn holds for its
// writer: a Write that would exceed it waits until the writer has sent
// them, so a peer that does not read holds back its own connection only.
const coalesceMaxPending = 64 << 10

// coalesceCloseGrace bounds how long Close waits for pending bytes (an
// HTTP/2 GOAWAY, a TLS close_notify) to be sent before closing.
const coalesceCloseGrace = time.Second

// coalescingConn sends what is written to it from a goroutine of its own,
// so that the bytes written while that goroutine is in a write system call
// go out together in the next one. net/http's HTTP/2 server and client
// flush their buffered frames whenever their queue is empty, which under
// concurrent streams means one TLS record, and one write system call, for
// each frame or two (~2.7 a unary call); grpc-go batches frames of all
// streams. Sitting under TLS, a coalescingConn batches the records.
//
// A server's connection starts writing straight through, and coalesces only
// once HTTP/2 is negotiated (coalesceHTTP2): net/http's HTTP/1.1 server
// answers a refused request and closes without reading its body, which
// relies on its writes having reached the socket. A client's (HTTP/2 only)
// coalesces from the start.
//
// Write returns once its bytes are queued; an error of the underlying
// write is returned by the next Write (and TLS remembers it for good).
// Deadlines are the underlying conn's: the writer's system call obeys
// the write deadline, and a Write waiting for room fails with the
// writer's error.
type coalescingConn struct {
	net.Conn

	// wmu is held around every write to Conn, straight or by the writer,
	// so that turning coalescing on never lets two writes interleave.
	wmu sync.Mutex

	mu       sync.Mutex
	coalesce bool
	room     sync.Cond // signalled when pending shrinks or err is set
	pending  []byte
	spare    []byte
	writing  bool // a writer goroutine is running
	err      error
	closed   bool
}

func newCoalescingConn(c net.Conn, coalesce bool) *coalescingConn {
	cc := &coalescingConn{Conn: c, coalesce: coalesce}
	cc.room.L = &cc.mu
	return cc
}

// startCoalescing makes the writes from now on coalesce.
func (c *coalescingConn) startCoalescing() {
	c.mu.Lock()
	c.coalesce = true
	c.mu.Unlock()
}

// coalesceHTTP2 turns coalescing on for a server's connection c (a
// *tls.Conn over a deadlineConn) if it speaks HTTP/2.
func coalesceHTTP2(c net.Conn) {
	tc, ok := c.(*tls.Conn)
	if !ok || tc.ConnectionState().NegotiatedProtocol != "h2" {
		return
	}
	if dc, ok := tc.NetConn().(*deadlineConn); ok {
		if cc, ok := dc.Conn.(*coalescingConn); ok {
			cc.startCoalescing()
		}
	}
}

var errConnClosed = errors.New("rpc: use of closed connection")

func (c *coalescingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	if !c.coalesce {
		c.mu.Unlock()
		c.wmu.Lock()
		defer c.wmu.Unlock()
		return c.Conn.Write(p)
	}
	defer c.mu.Unlock()
	for c.err == nil && !c.closed && len(c.pending) > 0 && len(c.pending)+len(p) > coalesceMaxPending {
		c.room.Wait()
	}
	if c.err != nil {
		return 0, c.err
	}
	if c.closed {
		return 0, errConnClosed
	}
	c.pending = append(c.pending, p...)
	if !c.writing {
		c.writing = true
		go c.writeLoop()
	}
	return len(p), nil
}

// writeLoop sends the pending bytes until there are none.
func (c *coalescingConn) writeLoop() {
	c.mu.Lock()
	for len(c.pending) > 0 && c.err == nil {
		buf := c.pending
		c.pending = c.spare[:0]
		c.mu.Unlock()
		c.wmu.Lock()
		_, err := c.Conn.Write(buf)
		c.wmu.Unlock()
		c.mu.Lock()
		c.spare = buf[:0]
		if err != nil {
			c.err = err
		}
		c.room.Broadcast()
	}
	c.pending = c.pending[:0]
	c.writing = false
	c.room.Broadcast()
	c.mu.Unlock()
}

// Close sends what is pending (waiting at most coalesceCloseGrace), then
// closes the connection.
func (c *coalescingConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return c.Conn.Close()
	}
	c.closed = true
	if c.writing {
		_ = c.Conn.SetWriteDeadline(time.Now().Add(coalesceCloseGrace))
		for c.writing {
			c.room.Wait()
		}
	}
	c.mu.Unlock()
	return c.Conn.Close()
}
