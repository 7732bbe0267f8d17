package rpc

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
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

// slowClientListener logs the connections closed because their read deadline
// passed while a request was arriving: the http.Server's ReadHeaderTimeout
// (and the TLS handshake's share of it) cutting off a slow-loris client. The
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
	return &deadlineConn{Conn: c, log: l.log}, nil
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
		c.log.Warn("closing a slow client's connection: request not complete within the read-header timeout",
			"remote", c.RemoteAddr().String(), "bytes_read", read)
	}
	return n, err
}
