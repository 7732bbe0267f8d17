package rpc

import (
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// DefaultMaxStreamMessages is how many messages a client may send on one
// stream unless WithMaxStreamMessages says otherwise.
const DefaultMaxStreamMessages = 10_000

// DefaultMaxStreamBytes is how many bytes of messages a client may send on
// one stream unless WithMaxStreamBytes says otherwise: twice
// DefaultReadMaxBytes, so a stream carries two messages of the largest size,
// or the sample order service's largest valid import (1,000 orders of 100
// line items: 7.1 MB), while one principal's open streams
// (DefaultMaxStreamsPerPrincipal) can deliver at most 256 MiB at once.
const DefaultMaxStreamBytes = 2 * DefaultReadMaxBytes

// WithMaxStreamBytes caps the bytes a client may send on one client or bidi
// stream, over all its messages (default DefaultMaxStreamBytes; 0 or less:
// no cap). A message counts with its size after decompression — the
// measure of WithReadMaxBytes, fields the schema does not know included,
// though the server does not keep them. The message that takes a stream
// past the cap is not decoded, and the stream fails with
// resource_exhausted. A server stream's single request is bounded by
// WithReadMaxBytes alone.
func WithMaxStreamBytes(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxStreamBytes = n })
}

// WithMaxStreamMessages caps the messages a client may send on one stream
// (default DefaultMaxStreamMessages; 0 or less: no cap). The message past
// the cap fails the stream with resource_exhausted. Each message is also
// subject to WithReadMaxBytes.
func WithMaxStreamMessages(n int) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.maxStreamMessages = n })
}

// boundedGzip is connect's "gzip" compression with a bound on how much one
// message may decompress to. connect-go itself stops reading a decompressed
// message at the WithReadMaxBytes limit but then decompresses the rest to
// report its size, so a gzip bomb (a few MiB inflating to GiBs) would cost
// the server the whole inflation in CPU. This decompressor fails instead
// once limit+1 bytes came out, and connect reports resource_exhausted
// without the size.
func boundedGzip(limit int) connect.HandlerOption {
	return connect.WithCompression("gzip",
		func() connect.Decompressor { return &boundedDecompressor{limit: int64(limit)} },
		func() connect.Compressor { return gzip.NewWriter(io.Discard) },
	)
}

// boundedDecompressor is a gzip reader that yields at most limit+1 bytes per
// message (any count when limit <= 0).
type boundedDecompressor struct {
	gz    gzip.Reader
	limit int64
	left  int64
}

// errDecompressedTooLarge is what a boundedDecompressor returns past its bound.
var errDecompressedTooLarge = errors.New("decompressed message too large; stopped decompressing")

func (d *boundedDecompressor) Read(p []byte) (int, error) {
	if d.limit <= 0 {
		return d.gz.Read(p)
	}
	if d.left <= 0 {
		return 0, errDecompressedTooLarge
	}
	if int64(len(p)) > d.left {
		p = p[:d.left]
	}
	n, err := d.gz.Read(p)
	d.left -= int64(n)
	return n, err
}

func (d *boundedDecompressor) Close() error { return d.gz.Close() }

func (d *boundedDecompressor) Reset(r io.Reader) error {
	d.left = d.limit + 1
	return d.gz.Reset(r)
}

// streamLimit caps what a client sends on a client or bidi stream: its
// messages (maxMessages) and their bytes (maxBytes), each cap off when 0.
// The bytes of a message are its size after decompression, as the codec
// received it (see messageSizes), the measure WithReadMaxBytes applies to
// one message: unknown fields count, though they are not kept.
type streamLimit struct {
	maxMessages int
	maxBytes    int
	sizes       *messageSizes
}

func (l *streamLimit) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }

func (l *streamLimit) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (l *streamLimit) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		t := conn.Spec().StreamType
		if t != connect.StreamTypeClient && t != connect.StreamTypeBidi {
			return next(ctx, conn)
		}
		counted := &countingConn{StreamingHandlerConn: conn, limit: l}
		err := next(ctx, counted)
		if exceeded := counted.exceeded.Load(); exceeded != nil {
			// Whatever the handler made of it, the stream failed on the limit.
			return exceeded
		}
		return err
	}
}

// countingConn refuses the message past either cap, and every message
// after it.
type countingConn struct {
	connect.StreamingHandlerConn
	limit    *streamLimit
	received atomic.Int64 // messages
	bytes    atomic.Int64
	exceeded atomic.Pointer[connect.Error]
}

// fail records that the stream passed a cap, and returns the error it
// fails with from now on.
func (c *countingConn) fail(reason error) error {
	c.exceeded.CompareAndSwap(nil, connect.NewError(connect.CodeResourceExhausted, reason))
	return c.exceeded.Load()
}

func (c *countingConn) Receive(msg any) error {
	if err := c.exceeded.Load(); err != nil {
		return err
	}
	l := c.limit
	var slot *sizeSlot
	if l.maxBytes > 0 {
		if slot = l.sizes.watch(msg, l.maxBytes-int(c.bytes.Load())); slot != nil {
			defer l.sizes.done(msg)
		}
	}
	err := c.StreamingHandlerConn.Receive(msg)
	if l.maxBytes > 0 {
		size := -1
		if slot != nil {
			size = slot.size
		}
		if size < 0 && err == nil {
			// Decoded without our codec seeing it: count what was kept.
			if m, ok := msg.(proto.Message); ok {
				size = proto.Size(m)
			}
		}
		if size > 0 && c.bytes.Add(int64(size)) > int64(l.maxBytes) {
			return c.fail(fmt.Errorf("a stream may carry at most %d bytes from the client", l.maxBytes))
		}
	}
	if err != nil {
		return err
	}
	if l.maxMessages > 0 && c.received.Add(1) > int64(l.maxMessages) {
		return c.fail(fmt.Errorf("a stream may carry at most %d messages from the client", l.maxMessages))
	}
	return nil
}

// WithBodyReadTimeout bounds how long a client may take, once its request
// headers are in, to send what the call needs before its handler can run:
// the whole body of a unary call, the first message of a stream (default
// DefaultBodyReadTimeout; 0 or less: no bound). A call whose body or first
// message is not in by then ends with deadline_exceeded, and the server
// logs it ("ending a call: its request body did not arrive in time"). Later
// messages of a stream are not bound by it: a long-lived stream may be
// quiet for as long as it likes. A stream's handler must read its first
// message within the bound too (every handler that receives does so at
// once).
//
// Over HTTP/1.1 the bound is the connection's read deadline; over HTTP/2 a
// timer that closes the request body (a read deadline there would cost a
// message to the connection's serving goroutine per call).
func WithBodyReadTimeout(d time.Duration) ServerOption {
	return serverOptionFunc(func(c *serverConfig) { c.bodyReadTimeout = d })
}

// bodyWatch is a request body under WithBodyReadTimeout. Armed when the
// request reaches the server's middleware, it is done when the body has
// been read to its end (a unary call) or its first message has (a stream:
// the request gate says which, before any read); if the bound passes first,
// reads fail with errBodyTimeout and the call is logged. One lives in each
// callRecord, and HTTP/2 timers are pooled: watching costs no allocation.
type bodyWatch struct {
	io.ReadCloser
	rec      *callRecord
	s        *Server
	r        *http.Request // for the log line
	deadline int64         // Unix nanoseconds
	timer    *bodyTimer    // HTTP/2; nil over HTTP/1.1, which uses the connection's read deadline
	state    atomic.Int32
	// Read by the handler's goroutine only:
	stream bool    // done after the first message, not at the end of the body
	have   uint8   // bytes of prefix read
	prefix [5]byte // the first message's envelope prefix (flags, length)
	left   int64   // bytes of the first message still to come, once have == 5
	read   int64   // bytes read while armed
}

// States of a bodyWatch.
const (
	watchOff     = iota // not watching: no body, no bound, or a writer without deadlines
	watchArmed          // the bound runs
	watchDone           // what the call needs has arrived in time
	watchExpired        // the bound passed first
)

// errBodyTimeout is what reads of a body return once its bound passed; it
// wraps os.ErrDeadlineExceeded, which connect reports as deadline_exceeded.
var errBodyTimeout = fmt.Errorf("request body not received within the body read timeout: %w", os.ErrDeadlineExceeded)

// watchBody arms the body watch of rec on r, and makes it r's body. Called
// before the request goes down the chain (nothing has read the body yet).
func (s *Server) watchBody(r *http.Request, rec *callRecord) {
	d := s.cfg.bodyReadTimeout
	if d <= 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	w := &rec.body
	deadline := time.Now().Add(d)
	*w = bodyWatch{ReadCloser: r.Body, rec: rec, s: s, r: r, deadline: deadline.UnixNano()}
	if r.ProtoMajor >= 2 {
		w.timer = startBodyTimer(w, d)
	} else if err := http.NewResponseController(&rec.w).SetReadDeadline(deadline); err != nil {
		return // a writer without deadlines (an in-process test): no bound
	}
	w.state.Store(watchArmed)
	r.Body = w
}

// expire ends an HTTP/2 body whose bound passed: closing it fails the read
// waiting on it, and the ones after.
func (w *bodyWatch) expire() {
	if w.state.CompareAndSwap(watchArmed, watchExpired) {
		_ = w.ReadCloser.Close()
	}
}

// firstMessage makes w done after the first enveloped message instead of at
// the end of the body: the request gate calls it for streams.
func (w *bodyWatch) firstMessage() { w.stream = true }

func (w *bodyWatch) Read(p []byte) (int, error) {
	n, err := w.ReadCloser.Read(p)
	switch w.state.Load() {
	case watchArmed:
		w.read += int64(n)
		switch {
		case err == io.EOF || (w.stream && w.firstMessageIn(p[:n])):
			w.disarm()
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && time.Now().UnixNano() >= w.deadline:
			// HTTP/1.1: the connection's read deadline, ours. (An earlier
			// one is the stream guard's, ending the stream.)
			w.state.Store(watchExpired)
			w.expired()
			return n, errBodyTimeout
		}
	case watchExpired:
		if err != nil {
			w.expired()
			return n, errBodyTimeout
		}
	}
	return n, err
}

// firstMessageIn counts b toward the first message and reports whether
// that message is now complete.
func (w *bodyWatch) firstMessageIn(b []byte) bool {
	if int(w.have) < len(w.prefix) {
		k := copy(w.prefix[w.have:], b)
		w.have, b = w.have+uint8(k), b[k:]
		if int(w.have) < len(w.prefix) {
			return false
		}
		w.left = int64(binary.BigEndian.Uint32(w.prefix[1:]))
	}
	w.left -= int64(len(b))
	return w.left <= 0
}

// disarm stops the bound: what the call needs has arrived.
func (w *bodyWatch) disarm() {
	if !w.state.CompareAndSwap(watchArmed, watchDone) {
		return
	}
	if w.timer != nil {
		w.timer.stop()
		return
	}
	_ = http.NewResponseController(&w.rec.w).SetReadDeadline(time.Time{})
}

// expired logs, once, a call whose body did not arrive in time, and records
// its code for the access log (a unary call ends before any interceptor).
func (w *bodyWatch) expired() {
	if w.rec.coded {
		return
	}
	w.rec.set(connect.CodeDeadlineExceeded)
	w.s.cfg.logger.Warn("ending a call: its request body did not arrive in time",
		"procedure", truncatePath(w.r.URL.Path), "remote", w.r.RemoteAddr, "timeout", w.s.cfg.bodyReadTimeout.String(),
		"bytes_read", w.read, "first_message", w.stream, "request_id", w.rec.id)
}

// abandonGrace is how long, over HTTP/1.1, the server may still spend
// reading and discarding the rest of a body the call did not read, so that
// a connection whose body has arrived is kept, and a client still sending
// is not reset before it reads the answer.
const abandonGrace = 500 * time.Millisecond

// abandon ends the watch of a body the call will not read (any more): a
// refusal before the body, or a handler that returned without reading it
// to its end. Over HTTP/1.1 net/http discards what is left of a body (up to
// 256 KiB; a larger one makes it close the connection) before it sends the
// answer, waiting for the client as long as the read deadline lets it: the
// deadline becomes abandonGrace from now, so a client that stalls its body
// is answered within it, and one whose body is in keeps its connection.
// Over HTTP/2 the timer is stopped; the server resets the stream.
func (w *bodyWatch) abandon() {
	if !w.state.CompareAndSwap(watchArmed, watchDone) {
		return
	}
	if w.timer != nil {
		w.timer.stop()
		return
	}
	_ = http.NewResponseController(&w.rec.w).SetReadDeadline(time.Now().Add(abandonGrace))
}

// bodyTimer is the timer of an HTTP/2 bodyWatch. Timers are pooled: one
// per call would cost two allocations (the timer and its function) on
// every call.
type bodyTimer struct {
	t *time.Timer
	w atomic.Pointer[bodyWatch]
}

var bodyTimers sync.Pool // of *bodyTimer, stopped

// startBodyTimer runs w's expire after d.
func startBodyTimer(w *bodyWatch, d time.Duration) *bodyTimer {
	bt, _ := bodyTimers.Get().(*bodyTimer)
	if bt == nil {
		bt = &bodyTimer{}
		bt.w.Store(w)
		bt.t = time.AfterFunc(d, bt.fire)
		return bt
	}
	bt.w.Store(w)
	bt.t.Reset(d)
	return bt
}

func (bt *bodyTimer) fire() {
	if w := bt.w.Load(); w != nil {
		w.expire()
	}
}

// stop stops the timer; one that had not fired goes back to the pool (a
// timer whose function has started is left to the collector).
func (bt *bodyTimer) stop() {
	if bt.t.Stop() {
		bt.w.Store(nil)
		bodyTimers.Put(bt)
	}
}

func truncatePath(path string) string {
	if len(path) > maxLoggedPath {
		return path[:maxLoggedPath] + "…"
	}
	return path
}

// http2ErrorLog is the http.Server's error log: net/http's lines, at warn
// level, with one of them said plainly. An HTTP/2 client that stops in the
// middle of a frame — most often a header block it trickles, HEADERS and
// then CONTINUATION frames byte by byte — cannot answer the server's PING,
// so net/http closes its connection once the PING goes unanswered
// (http.HTTP2Config.SendPingTimeout + PingTimeout), logging only "timeout
// waiting for PING response".
func http2ErrorLog(l *slog.Logger) *log.Logger {
	return log.New(errorLogWriter{l}, "", 0)
}

type errorLogWriter struct{ l *slog.Logger }

func (w errorLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if strings.Contains(msg, "timeout waiting for PING response") {
		w.l.Warn("closing a slow client's connection: it did not answer a PING (an HTTP/2 client stalled mid-frame, such as a trickled header block, or gone)")
	} else {
		w.l.Warn(msg)
	}
	return len(p), nil
}

// slowClientListener logs the connections closed because their read deadline
// passed while a request was arriving: the http.Server's ReadHeaderTimeout
// (and the TLS handshake's share of it) cutting off a slow-loris client, or
// over HTTP/1.1 a body that did not arrive within WithBodyReadTimeout. The
// http.Server closes such connections without a word; this says so.
type slowClientListener struct {
	net.Listener
	log *slog.Logger
}

func (l slowClientListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	// Under TLS, so that the records of the frames the HTTP/2 server
	// flushes one by one share a write once HTTP/2 is negotiated
	// (coalesce.go; the connection guard turns it on).
	return &deadlineConn{Conn: newCoalescingConn(c, false), log: l.log}, nil
}

// deadlineConn counts the bytes read since the read deadline was last set.
// A read that hits the deadline after some bytes came is a client that
// started a handshake or a request and did not finish it in time; a read
// that hits it with nothing read is an idle connection timing out, which is
// not worth a line.
type deadlineConn struct {
	net.Conn
	log        *slog.Logger
	sinceReset atomic.Int64
	logged     atomic.Bool
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.sinceReset.Store(0)
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.sinceReset.Store(0)
	return c.Conn.SetDeadline(t)
}

func (c *deadlineConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	read := c.sinceReset.Add(int64(n))
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && read > 0 && c.logged.CompareAndSwap(false, true) {
		c.log.Warn("closing a slow client's connection: request not complete within its read deadline",
			"remote", c.RemoteAddr().String(), "bytes_read", read)
	}
	return n, err
}
