package rpc_test

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptrace"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/services/user"
)

// These tests play the client that holds a server's resources by not
// finishing its requests: bodies held open or stalled, streams that never
// send their first message. They measure what the server keeps (heap,
// goroutines) and how long it takes to let go, in this process: the tests
// that measure the heap or count goroutines do not run in parallel. The
// HTTP/2-specific ones are in h2limits_test.go.

// heapInUse returns the bytes of heap in use after a collection.
func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

const mib = 1 << 20

// heldBody is a request body of size bytes that gives all but its last
// byte and then holds — a client sleeping before its last byte — until the
// transport closes it (when the call ends) or release.
type heldBody struct {
	size int64
	sent atomic.Int64
	held chan struct{}
	once sync.Once
}

func newHeldBody(size int64) *heldBody { return &heldBody{size: size, held: make(chan struct{})} }

func (b *heldBody) Read(p []byte) (int, error) {
	left := b.size - 1 - b.sent.Load()
	if left <= 0 {
		<-b.held
		return 0, io.ErrUnexpectedEOF
	}
	n := int(min(int64(len(p)), left))
	clear(p[:n])
	b.sent.Add(int64(n))
	return n, nil
}

func (b *heldBody) Close() error {
	b.once.Do(func() { close(b.held) })
	return nil
}

// allSent reports whether the client has written every byte it means to
// before holding.
func (b *heldBody) allSent() bool { return b.sent.Load() >= b.size-1 }

// attempt is one held call: how it was answered, and when.
type attempt struct {
	body    *heldBody
	status  int
	header  http.Header
	message string
	err     error
	latency time.Duration
	done    chan struct{}
}

// holdCalls starts n Connect unary calls of procedure, each from its own
// connection (as n curl processes would), each declaring a body of size
// bytes and sending all of it but the last byte.
func holdCalls(t *testing.T, l *limited, h2 bool, procedure string, n int, size int64, timeout time.Duration) []*attempt {
	t.Helper()
	calls := make([]*attempt, n)
	for i := range calls {
		a := &attempt{body: newHeldBody(size), done: make(chan struct{})}
		calls[i] = a
		client := l.httpClient(h2)
		t.Cleanup(client.CloseIdleConnections)
		t.Cleanup(func() { _ = a.body.Close() })
		go func() {
			defer close(a.done)
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			// The latency is counted from the request's headers, not from
			// the dial: the TLS handshakes of 50 connections at once are
			// not the server's answer.
			var start atomic.Int64
			ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{WroteHeaders: func() { start.Store(time.Now().UnixNano()) }})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, l.srv.URL+procedure, a.body)
			req.ContentLength = size
			req.Header.Set("Content-Type", "application/proto")
			req.Header.Set("Connect-Protocol-Version", "1")
			res, err := client.Do(req)
			a.latency = time.Duration(time.Now().UnixNano() - start.Load())
			if err != nil {
				a.err = err
				return
			}
			body, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
			_ = res.Body.Close()
			a.status, a.header, a.message = res.StatusCode, res.Header, string(body)
		}()
	}
	return calls
}

// waitHeld waits until every call is answered or has sent its body but the
// last byte, or until timeout.
func waitHeld(calls []*attempt, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		pending := 0
		for _, a := range calls {
			select {
			case <-a.done:
			default:
				if !a.body.allSent() {
					pending++
				}
			}
		}
		if pending == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func latencies(calls []*attempt) (answered int, p50, worst time.Duration) {
	var ds []time.Duration
	for _, a := range calls {
		if a.err == nil && a.status != 0 {
			ds = append(ds, a.latency)
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return len(ds), ds[len(ds)/2], ds[len(ds)-1]
}

// defaultEngine is the OPA engine with the user service's policy.
func defaultEngine(t testing.TB) *policy.Engine {
	t.Helper()
	b, err := policy.LoadFS(user.Policy(), "services/user/policy")
	if err != nil {
		t.Fatal(err)
	}
	e, err := policy.NewEngine(context.Background(), b, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestRefusedBodiesAreNotRead: 50 clients, each on its own connection,
// make a call the server refuses from its headers alone, send a 4 MiB body
// but its last byte, and hold. Each is answered at once, with the code and
// message of the refusal, without its body being read: the server's heap
// does not grow by the bodies, and over HTTP/2 a client cannot even send
// more than the stream's flow-control window. The handler never runs. The
// refusals: GetUser without a token, which the shipped policy says needs a
// user (401); a procedure the policy does not allow (403); a caller over
// its rate limit (429).
func TestRefusedBodiesAreNotRead(t *testing.T) {
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	cases := []struct {
		name       string
		authorizer func(t testing.TB) authz.Authorizer
		opts       []rpc.ServerOption
		procedure  string
		status     int
		code       connect.Code
		message    string
	}{
		{"no token", func(t testing.TB) authz.Authorizer { return defaultEngine(t) }, nil,
			userv1connect.UserServiceGetUserProcedure, http.StatusUnauthorized, connect.CodeUnauthenticated, "authentication required: call with a user token (decision "},
		{"refused procedure", allowAll, nil,
			userv1connect.UserServiceListUsersProcedure, http.StatusForbidden, connect.CodePermissionDenied, "permission denied (decision "},
		{"over the rate limit", allowAll, []rpc.ServerOption{rpc.WithRateLimit(1, 1), rpc.WithRateLimitClock(clock.Now)},
			userv1connect.UserServiceGetUserProcedure, http.StatusTooManyRequests, connect.CodeResourceExhausted, "rate limit exceeded: retry after 1 s"},
	}
	for _, c := range cases {
		for _, h2 := range []bool{true, false} {
			name := c.name + map[bool]string{true: " over HTTP/2", false: " over HTTP/1.1"}[h2]
			t.Run(name, func(t *testing.T) {
				ca := certstest.NewCA(t)
				users := &testusers.Service{}
				srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), c.authorizer(t), users.Mount, c.opts...)
				l := &limited{ca: ca, srv: srv, users: users, cli: ca.Client("/client/cli")}
				if c.status == http.StatusTooManyRequests {
					// The principal's one call: the burst is spent, and the
					// clock never refills it.
					res, err := l.httpClient(true).Post(srv.URL+c.procedure, "application/json", strings.NewReader(`{"id":"x"}`))
					if err != nil || res.StatusCode != http.StatusOK {
						t.Fatalf("first call: %v %v", res, err)
					}
					_ = res.Body.Close()
				}
				handled := users.Calls()
				const n, size = 50, 4 * mib
				before := heapInUse()
				calls := holdCalls(t, l, h2, c.procedure, n, size, 15*time.Second)
				waitHeld(calls, 15*time.Second)
				growth := int64(heapInUse()) - int64(before)
				var sent int64
				for _, a := range calls {
					sent += a.body.sent.Load()
				}
				answered, p50, worst := latencies(calls)
				t.Logf("%s: %d of %d calls answered (p50 %v, slowest %v); heap %+.1f MiB while held; clients sent %.1f MiB",
					name, answered, n, p50.Round(time.Millisecond), worst.Round(time.Millisecond), float64(growth)/mib, float64(sent)/mib)
				for _, a := range calls {
					_ = a.body.Close()
					<-a.done
				}
				resets := 0
				for i, a := range calls {
					if !h2 && a.err != nil && (strings.Contains(a.err.Error(), "connection reset by peer") || strings.Contains(a.err.Error(), "broken pipe")) {
						// Over HTTP/1.1 the server answers and closes the
						// connection without reading the body (net/http
						// lingers 500 ms); a client that is still writing and
						// has not read the answer by then gets a reset. The
						// access log below shows the server's answer.
						resets++
						continue
					}
					if a.status != c.status || !strings.Contains(a.message, c.message) {
						t.Fatalf("call %d: status %d, %q, err %v; want %d with %q", i, a.status, a.message, a.err, c.status, c.message)
					}
					if c.status == http.StatusUnauthorized && a.header.Get("WWW-Authenticate") != "Bearer" {
						t.Fatalf("call %d: WWW-Authenticate %q", i, a.header.Get("WWW-Authenticate"))
					}
					if a.latency > 8*time.Second {
						t.Errorf("call %d answered after %v", i, a.latency)
					}
				}
				if growth > 40*mib {
					t.Errorf("heap grew by %.1f MiB while %d bodies of 4 MiB were held: the bodies were read", float64(growth)/mib, n)
				}
				if h2 {
					// A body that is not read cannot get past the stream's
					// flow-control window (256 KiB).
					for i, a := range calls {
						if s := a.body.sent.Load(); s > mib/2 {
							t.Errorf("call %d: the client sent %d bytes of its body", i, s)
						}
					}
				}
				if got := users.Calls() - handled; got != 0 {
					t.Errorf("%d calls reached the handler", got)
				}
				refused := 0
				for _, line := range srv.Lines() {
					if strings.Contains(line, "msg=rpc procedure="+c.procedure+" ") && strings.Contains(line, "code="+c.code.String()+" ") {
						refused++
					}
				}
				if refused != n {
					t.Errorf("the access log shows %d calls refused with %v, want %d", refused, c.code, n)
				}
				if resets > 0 {
					t.Logf("%d clients were reset before they read the answer", resets)
				}
				if c.status != http.StatusTooManyRequests {
					srv.WaitForLog(t, "msg=decision", "procedure="+c.procedure, "allow=false")
				}
			})
		}
	}
}

// TestRefusedSmallBodyKeepsTheConnection: over HTTP/1.1, a call refused
// before its body is read — curl without a token — still gets its answer
// and keeps its connection when its body (64 KiB, more than the server
// reads with the headers) is in: the server discards it rather than
// closing on it.
func TestRefusedSmallBodyKeepsTheConnection(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), defaultEngine(t), (&testusers.Service{}).Mount)
	l := &limited{ca: ca, srv: srv, cli: ca.Client("/client/cli")}
	client := l.httpClient(false)
	reused := 0
	for i := range 3 {
		trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
			if info.Reused {
				reused++
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodPost,
			srv.URL+userv1connect.UserServiceGetUserProcedure, strings.NewReader(`{"id":"alice","pad":"`+strings.Repeat("p", 64<<10)+`"}`))
		req.Header.Set("Content-Type", "application/json")
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		body, _ := io.ReadAll(res.Body)
		_ = res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "authentication required") {
			t.Fatalf("call %d: %d %s", i, res.StatusCode, body)
		}
	}
	if reused != 2 {
		t.Fatalf("%d of the 2 later calls reused the connection", reused)
	}
}

// TestStalledBodyEnds: a caller the policy allows sends 100 bytes of a
// 1,000-byte body and holds. Once WithBodyReadTimeout passes the call ends
// with deadline_exceeded, over HTTP/2 and HTTP/1.1, and the server logs it.
func TestStalledBodyEnds(t *testing.T) {
	t.Parallel()
	const bound = time.Second
	for _, h2 := range []bool{true, false} {
		name := map[bool]string{true: "HTTP/2", false: "HTTP/1.1"}[h2]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			l := startLimited(t, nil, rpc.WithBodyReadTimeout(bound))
			calls := holdCalls(t, l, h2, userv1connect.UserServiceGetUserProcedure, 10, 101, 15*time.Second)
			for _, a := range calls {
				<-a.done
			}
			answered, p50, worst := latencies(calls)
			t.Logf("%s: %d of %d stalled calls ended (p50 %v, slowest %v)", name, answered, len(calls), p50.Round(time.Millisecond), worst.Round(time.Millisecond))
			for i, a := range calls {
				if a.status != http.StatusGatewayTimeout || !strings.Contains(a.message, `"code":"deadline_exceeded"`) {
					t.Fatalf("call %d: status %d %q, err %v; want 504 deadline_exceeded", i, a.status, a.message, a.err)
				}
				if a.latency < bound || a.latency > bound+5*time.Second {
					t.Errorf("call %d ended after %v; the bound is %v", i, a.latency, bound)
				}
			}
			l.srv.WaitForLog(t, "ending a call: its request body did not arrive in time",
				"procedure="+userv1connect.UserServiceGetUserProcedure, "timeout=1s")
			if c := l.users.Calls(); c != 0 {
				t.Errorf("%d calls reached the handler", c)
			}
		})
	}
}

// h2Conn is a raw HTTP/2 connection for many streams: a goroutine reads
// its frames, answers the server's PINGs and SETTINGS, and records how
// each stream ended.
type h2Conn struct {
	*rawH2
	wmu   sync.Mutex
	mu    sync.Mutex
	ended map[uint32]h2End
	gone  chan struct{} // closed when the connection is
	// settled is closed once the server's SETTINGS are acknowledged: from
	// then on the client writes only the frames it chooses.
	settled chan struct{}
	// holdPings makes the reader leave the server's PINGs unanswered.
	holdPings bool
}

// h2End is how a stream ended: its response status, the gRPC status of
// its trailers, or a reset.
type h2End struct {
	status, grpcStatus string
	reset              http2.ErrCode
	at                 time.Time
}

func dialH2Conn(t *testing.T, l *limited, holdPings bool) *h2Conn {
	t.Helper()
	c := &h2Conn{rawH2: dialH2(t, l), ended: map[uint32]h2End{}, gone: make(chan struct{}), settled: make(chan struct{}), holdPings: holdPings}
	_ = c.conn.SetDeadline(time.Time{})
	go c.read()
	select {
	case <-c.settled:
	case <-time.After(10 * time.Second):
		t.Fatal("no SETTINGS from the server")
	}
	return c
}

func (c *h2Conn) read() {
	defer close(c.gone)
	status := map[uint32]string{}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.write(func() error { return c.fr.WriteSettingsAck() })
				select {
				case <-c.settled:
				default:
					close(c.settled)
				}
			}
		case *http2.PingFrame:
			if !f.IsAck() && !c.holdPings {
				c.write(func() error { return c.fr.WritePing(true, f.Data) })
			}
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" {
				status[f.StreamID] = s
			}
			if f.StreamEnded() {
				c.end(f.StreamID, h2End{status: status[f.StreamID], grpcStatus: headerValue(f, "grpc-status")})
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				c.end(f.StreamID, h2End{status: status[f.StreamID]})
			}
		case *http2.RSTStreamFrame:
			c.end(f.StreamID, h2End{status: status[f.StreamID], reset: f.ErrCode})
		case *http2.GoAwayFrame:
			c.end(0, h2End{reset: f.ErrCode})
		}
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.Fields {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

func (c *h2Conn) end(id uint32, e h2End) {
	e.at = time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.ended[id]; !ok {
		c.ended[id] = e
	}
}

func (c *h2Conn) write(f func() error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = f()
}

// open sends the HEADERS of a POST to path with contentType, and no body:
// the stream stays open, waiting for a first byte that never comes.
func (c *h2Conn) open(id uint32, path, contentType string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "127.0.0.1"}, {":path", path},
		{"content-type", contentType}, {"te", "trailers"},
	} {
		_ = c.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.hbuf.Bytes(), EndHeaders: true}); err != nil {
		c.t.Errorf("open stream %d: %v", id, err)
	}
}

func (c *h2Conn) endedCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ended)
}

func (c *h2Conn) endings() map[uint32]h2End {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.ended)
}

// TestHeaderOnlyStreamsEnd: 2,000 streams over 8 connections — half unary
// GetUser calls (Connect), half server-reflection bidi streams (gRPC) —
// send their headers and nothing else. Each ends with deadline_exceeded
// once WithBodyReadTimeout passes (the unary call never gets its body, the
// stream its first message: a code only the handler reading the body can
// give), and the server's goroutines and heap go back to where they were.
// The streams all come from one principal, so the cap on a principal's
// open streams (tested on its own in streamcaps_test.go) is lifted here:
// this test is about streams that are let in and then stall.
func TestHeaderOnlyStreamsEnd(t *testing.T) {
	const bound = 3 * time.Second
	const conns, perConn = 8, 250
	l := startLimited(t, nil, rpc.WithBodyReadTimeout(bound), rpc.WithMaxStreamsPerPrincipal(0))
	baseGoroutines, baseHeap := runtime.NumGoroutine(), heapInUse()

	hs := make([]*h2Conn, conns)
	for i := range hs {
		hs[i] = dialH2Conn(t, l, false)
	}
	start := time.Now()
	for _, h := range hs {
		for s := range perConn {
			id := uint32(2*s + 1)
			if s%2 == 0 {
				h.open(id, userv1connect.UserServiceGetUserProcedure, "application/proto")
			} else {
				h.open(id, rpc.ReflectionV1Procedure, "application/grpc")
			}
		}
	}
	opened := time.Since(start)
	// The server runs a handler for every stream (the first end after the
	// bound; on a slow machine the last may start after that).
	peakGoroutines := 0
	deadline := time.Now().Add(bound * 3 / 4)
	for time.Now().Before(deadline) {
		peakGoroutines = max(peakGoroutines, runtime.NumGoroutine())
		time.Sleep(20 * time.Millisecond)
	}
	peakHeap := heapInUse()
	total := func() int {
		n := 0
		for _, h := range hs {
			n += h.endedCount()
		}
		return n
	}
	deadline = time.Now().Add(bound + 10*time.Second)
	for total() < conns*perConn && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	var last time.Time
	codes := map[string]int{}
	for _, h := range hs {
		for id, e := range h.endings() {
			last = later(last, e.at)
			kind := "bidi grpc-status=" + e.grpcStatus
			if id%4 == 1 { // even s: a unary call over Connect
				kind = "unary " + e.status
			}
			if e.status == "" {
				kind += " reset " + e.reset.String()
			}
			codes[kind]++
		}
	}
	endedIn := last.Sub(start)
	// Once the streams are gone, the goroutines of their handlers are too.
	var goroutines int
	deadline = time.Now().Add(10 * time.Second)
	for {
		goroutines = runtime.NumGoroutine()
		if goroutines <= baseGoroutines+2*conns+20 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	afterHeap := heapInUse()
	t.Logf("%d streams opened in %v; %d ended, the last %v after the first was opened; codes %v", conns*perConn, opened.Round(time.Millisecond), total(), endedIn.Round(time.Millisecond), codes)
	t.Logf("goroutines: %d before, %d with the streams open, %d after; heap %.1f MiB before, %.1f with the streams open, %.1f after",
		baseGoroutines, peakGoroutines, goroutines, float64(baseHeap)/mib, float64(peakHeap)/mib, float64(afterHeap)/mib)

	if n := total(); n != conns*perConn {
		t.Fatalf("%d of %d streams ended", n, conns*perConn)
	}
	if peakGoroutines < baseGoroutines+conns*perConn/2 {
		t.Errorf("only %d goroutines with the streams open (baseline %d): the streams did not reach their handlers", peakGoroutines, baseGoroutines)
	}
	if endedIn > bound+8*time.Second {
		t.Errorf("the streams took %v to end; the bound is %v", endedIn, bound)
	}
	if want := map[string]int{"unary 504": conns * perConn / 2, "bidi grpc-status=4": conns * perConn / 2}; !reflect.DeepEqual(codes, want) {
		t.Errorf("endings %v, want every unary call 504 (deadline_exceeded) and every bidi stream grpc-status 4", codes)
	}
	if goroutines > baseGoroutines+2*conns+20 {
		t.Errorf("%d goroutines after the streams ended, %d before", goroutines, baseGoroutines)
	}
	if growth := int64(afterHeap) - int64(baseHeap); growth > 16*mib {
		t.Errorf("heap %+.1f MiB after the streams ended", float64(growth)/mib)
	}
	l.srv.WaitForLog(t, "ending a call: its request body did not arrive in time", "procedure="+rpc.ReflectionV1Procedure)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// TestLaterStreamMessagesAreNotTimed: the body timeout bounds a stream's
// first message only; a bidi stream whose client pauses longer than the
// bound between later messages goes on.
func TestLaterStreamMessagesAreNotTimed(t *testing.T) {
	t.Parallel()
	const bound = 500 * time.Millisecond
	l := startLimited(t, nil, rpc.WithBodyReadTimeout(bound))
	hc, err := rpc.NewHTTPClient(l.ca.Source(l.cli))
	if err != nil {
		t.Fatal(err)
	}
	client := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](hc, l.srv.URL+rpc.ReflectionV1Procedure, connect.WithGRPC())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream := client.CallBidiStream(ctx)
	for i := range 3 {
		if err := stream.Send(listServices); err != nil {
			t.Fatalf("send %d: %v", i+1, err)
		}
		if _, err := stream.Receive(); err != nil {
			t.Fatalf("message %d: %v", i+1, err)
		}
		time.Sleep(3 * bound)
	}
	_ = stream.CloseRequest()
	_ = stream.CloseResponse()
}
