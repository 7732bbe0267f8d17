package rpc_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// limited is a server with small limits and a client certificate for it.
type limited struct {
	ca    *certstest.CA
	srv   *rpctest.Server
	users *testusers.Service
	cli   *certs.Issued
}

func startLimited(t *testing.T, users *testusers.Service, opts ...rpc.ServerOption) *limited {
	t.Helper()
	ca := certstest.NewCA(t)
	if users == nil {
		users = &testusers.Service{}
	}
	srv := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), allowAll(t), users.Mount, opts...)
	return &limited{ca: ca, srv: srv, users: users, cli: ca.Client("/client/cli")}
}

func (l *limited) tlsConfig(protos ...string) *tls.Config {
	return &tls.Config{RootCAs: l.ca.Pool(), Certificates: []tls.Certificate{certstest.TLSCertificate(l.cli)}, NextProtos: protos}
}

// httpClient speaks HTTP/1.1 or, with h2, HTTP/2 only.
func (l *limited) httpClient(h2 bool) *http.Client {
	if h2 {
		p := new(http.Protocols)
		p.SetHTTP2(true)
		return &http.Client{Transport: &http.Transport{TLSClientConfig: l.tlsConfig("h2"), Protocols: p}}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: l.tlsConfig("http/1.1")}}
}

var protocols = map[string]rpc.Protocol{"connect": rpc.ProtocolConnect, "grpc": rpc.ProtocolGRPC}

func wantCode(t *testing.T, err error, code connect.Code, msgPart string) {
	t.Helper()
	var ce *connect.Error
	if !errors.As(err, &ce) || ce.Code() != code || !strings.Contains(ce.Message(), msgPart) {
		t.Fatalf("got %v; want %v containing %q", err, code, msgPart)
	}
}

// paddedRequest returns a GetUserRequest for id "x" that marshals to size
// bytes: the padding is an unknown field (number 15), which the validation
// rules of the request do not see.
func paddedRequest(t *testing.T, size int) *userv1.GetUserRequest {
	t.Helper()
	req := &userv1.GetUserRequest{Id: "x"}
	for n := size - proto.Size(req) - 2; n > 0; n-- {
		pad := binary.AppendUvarint([]byte{15<<3 | 2}, uint64(n))
		pad = append(pad, bytes.Repeat([]byte{'p'}, n)...)
		req.ProtoReflect().SetUnknown(pad)
		if proto.Size(req) == size {
			return req
		}
	}
	t.Fatalf("no padding makes a request of %d bytes", size)
	return nil
}

// TestMessageTooLarge: a request message above WithReadMaxBytes is refused
// with resource_exhausted before the handler, in Connect and gRPC; one at
// the limit passes.
func TestMessageTooLarge(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithReadMaxBytes(1024))
	for name, proto := range protocols {
		t.Run(name, func(t *testing.T) {
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, l.srv.URL, l.ca.Source(l.cli), rpc.WithProtocol(proto))
			if err != nil {
				t.Fatal(err)
			}
			before := l.users.Calls()
			if _, err := client.GetUser(context.Background(), paddedRequest(t, 1024)); err != nil {
				t.Fatalf("message of exactly 1024 bytes: %v", err)
			}
			_, err = client.GetUser(context.Background(), paddedRequest(t, 1025))
			wantCode(t, err, connect.CodeResourceExhausted, "message size 1025 is larger than configured max 1024")
			if n := l.users.Calls() - before; n != 1 {
				t.Fatalf("%d calls reached the handler, want 1", n)
			}
		})
	}
}

// TestGzipBomb: a compressed request of 52 KB that inflates to 50 MiB is
// refused with resource_exhausted, and the server stops decompressing at
// the limit: connect-go alone would inflate it all to report its size
// ("message size 52428805 is larger…"); here the size stays unknown. A
// normally compressed request still works.
func TestGzipBomb(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithReadMaxBytes(64<<10))
	bomb, inflated := rpc.GzipBomb(t, 50)
	if len(bomb) >= 64<<10 {
		t.Fatalf("bomb of %d bytes is not under the limit compressed", len(bomb))
	}
	url := l.srv.URL + userv1connect.UserServiceGetUserProcedure
	checkRefused := func(t *testing.T, code, message string) {
		t.Helper()
		if code != connect.CodeResourceExhausted.String() && code != "8" {
			t.Fatalf("code %q (%s), want resource_exhausted", code, message)
		}
		if !strings.Contains(message, "unable to determine message size") || strings.Contains(message, fmt.Sprint(inflated)) {
			t.Fatalf("message %q: the server inflated the whole bomb", message)
		}
	}

	t.Run("connect unary", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bomb))
		req.Header.Set("Content-Type", "application/proto")
		req.Header.Set("Content-Encoding", "gzip")
		res, err := l.httpClient(true).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("status %d, body %s", res.StatusCode, body)
		}
		checkRefused(t, "resource_exhausted", string(body))
	})
	t.Run("grpc", func(t *testing.T) {
		env := binary.BigEndian.AppendUint32([]byte{1}, uint32(len(bomb)))
		req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(append(env, bomb...)))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Grpc-Encoding", "gzip")
		req.Header.Set("Te", "trailers")
		res, err := l.httpClient(true).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		_, _ = io.ReadAll(res.Body)
		status, message := res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
		if status == "" {
			status, message = res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
		}
		checkRefused(t, status, message)
	})
	t.Run("ordinary gzip", func(t *testing.T) {
		for name, proto := range protocols {
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, l.srv.URL, l.ca.Source(l.cli),
				rpc.WithProtocol(proto), rpc.WithConnectOptions(connect.WithSendGzip()))
			if err != nil {
				t.Fatal(err)
			}
			res, err := client.GetUser(context.Background(), paddedRequest(t, 60<<10))
			if err != nil || res.GetUser().GetId() != "x" {
				t.Fatalf("%s: compressed request under the limit: %v", name, err)
			}
		}
	})
	if n := l.users.Calls(); n != 2 {
		t.Fatalf("%d calls reached the handler, want the 2 ordinary ones", n)
	}
}

// TestHeaderTooLarge: request headers past WithMaxHeaderBytes get 431, over
// HTTP/1.1 and over HTTP/2 from a client that ignores the server's
// advertised header list size; the handler never runs. Headers under the
// limit pass.
func TestHeaderTooLarge(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithMaxHeaderBytes(2048))
	url := l.srv.URL + userv1connect.UserServiceGetUserProcedure
	pads := func(total int) [][2]string {
		var h [][2]string
		for i := 0; i*500 < total; i++ {
			h = append(h, [2]string{fmt.Sprintf("x-pad-%d", i), strings.Repeat("p", 500)})
		}
		return h
	}

	t.Run("HTTP/1.1", func(t *testing.T) {
		for size, want := range map[int]int{1000: http.StatusOK, 16 << 10: http.StatusRequestHeaderFieldsTooLarge} {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"id":"x"}`))
			req.Header.Set("Content-Type", "application/json")
			for _, kv := range pads(size) {
				req.Header.Set(kv[0], kv[1])
			}
			res, err := l.httpClient(false).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode != want {
				t.Fatalf("%d bytes of headers: status %d, want %d", size, res.StatusCode, want)
			}
		}
	})
	t.Run("HTTP/2", func(t *testing.T) {
		// The server advertises a header list of 2048 + 10*32 bytes (each
		// field counting 32 more than its name and value). A header block
		// past it is answered 431; one more than twice the limit in a
		// single frame is not even decoded: the connection is closed.
		h := dialH2(t, l)
		h.request(1, userv1connect.UserServiceGetUserProcedure, pads(1000), []byte(`{"id":"x"}`))
		h.request(3, userv1connect.UserServiceGetUserProcedure, pads(3000), []byte(`{"id":"x"}`))
		got := h.results(2)
		if got[1].status != "200" || got[3].status != "431" {
			t.Fatalf("stream results %+v, want 200 for small headers and 431 for large", got)
		}
		h = dialH2(t, l)
		h.request(1, userv1connect.UserServiceGetUserProcedure, pads(12<<10), []byte(`{"id":"x"}`))
		if got := h.results(1); got[0].goAway != http2.ErrCodeProtocol {
			t.Fatalf("12 KiB of headers: %+v, want GOAWAY PROTOCOL_ERROR", got)
		}
	})
	if n := l.users.Calls(); n != 2 {
		t.Fatalf("%d calls reached the handler, want 2", n)
	}
}

// TestStreamLimits: on a bidi stream (server reflection), the message past
// WithMaxStreamMessages fails the stream with resource_exhausted, and a
// message past WithReadMaxBytes does too, in Connect and gRPC.
func TestStreamLimits(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithMaxStreamMessages(3), rpc.WithReadMaxBytes(1024))
	for name, proto := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			hc, err := rpc.NewHTTPClient(l.ca.Source(l.cli))
			if err != nil {
				t.Fatal(err)
			}
			var opts []connect.ClientOption
			if proto == rpc.ProtocolGRPC {
				opts = append(opts, connect.WithGRPC())
			}
			client := connect.NewClient[reflectionpb.ServerReflectionRequest, reflectionpb.ServerReflectionResponse](hc, l.srv.URL+rpc.ReflectionV1Procedure, opts...)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			stream := client.CallBidiStream(ctx)
			for i := range 3 {
				if err := stream.Send(listServices); err != nil {
					t.Fatalf("send %d: %v", i+1, err)
				}
				if _, err := stream.Receive(); err != nil {
					t.Fatalf("message %d of 3: %v", i+1, err)
				}
			}
			_ = stream.Send(listServices) // the server may already have closed; the answer says why
			_, err = stream.Receive()
			wantCode(t, err, connect.CodeResourceExhausted, "a stream may carry at most 3 messages from the client")
			_ = stream.CloseResponse()

			big := client.CallBidiStream(ctx)
			_ = big.Send(&reflectionpb.ServerReflectionRequest{Host: strings.Repeat("h", 2000), MessageRequest: listServices.MessageRequest})
			_, err = big.Receive()
			wantCode(t, err, connect.CodeResourceExhausted, "larger than configured max 1024")
			_ = big.CloseResponse()
		})
	}
}

// TestSlowLoris: a client that completes the TLS handshake and then sends
// its request headers one byte every 20ms is disconnected once
// WithReadHeaderTimeout passes, long before it could finish, the handler
// never runs, and the server logs it.
func TestSlowLoris(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil, rpc.WithReadHeaderTimeout(time.Second))
	conn, err := tls.Dial("tcp", l.srv.Addr, l.tlsConfig("http/1.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// 600 bytes at one per 20ms would take 12s.
	headers := "POST " + userv1connect.UserServiceGetUserProcedure + " HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + strings.Repeat("s", 520) + "\r\n\r\n"
	sent := make(chan int, 1)
	go func() {
		n := 0
		defer func() { sent <- n }()
		for i := range len(headers) {
			if _, err := conn.Write([]byte{headers[i]}); err != nil {
				return
			}
			n++
			time.Sleep(20 * time.Millisecond)
		}
	}()
	// The server closes the connection: silently, or, when the deadline
	// cut a TLS record in half, after a 400 with "Connection: close".
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	answer, err := io.ReadAll(conn)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the server kept the connection open (read %q)", answer)
	}
	if len(answer) > 0 && !strings.HasPrefix(string(answer), "HTTP/1.1 400 ") {
		t.Fatalf("server answered %q", answer)
	}
	_ = conn.Close()
	if n := <-sent; n >= len(headers) {
		t.Fatalf("the client sent all %d bytes of its headers before being cut off", n)
	}
	l.srv.WaitForLog(t, "closing a slow client's connection", "remote=127.0.0.1:")
	if n := l.users.Calls(); n != 0 {
		t.Fatalf("%d calls reached the handler", n)
	}
}

// TestMaxConcurrentStreams: a client opening 8 streams at once on one
// HTTP/2 connection, against a server allowing 4, gets 4 of them reset,
// and the server never runs more than 4 handlers at once; the 4 finish
// normally.
func TestMaxConcurrentStreams(t *testing.T) {
	t.Parallel()
	users := &testusers.Service{Hold: make(chan struct{})}
	l := startLimited(t, users, rpc.WithMaxConcurrentStreams(4))
	h := dialH2(t, l)
	for i := range 8 {
		h.request(uint32(2*i+1), userv1connect.UserServiceGetUserProcedure, nil, []byte(`{"id":"x"}`))
	}
	resets := h.results(4)
	for id, r := range resets {
		if r.status != "" || (r.reset != http2.ErrCodeProtocol && r.reset != http2.ErrCodeRefusedStream) {
			t.Fatalf("stream %d: %+v, want a reset for exceeding the limit", id, r)
		}
	}
	// Every HEADERS frame has been processed (the resets were answers to
	// the last ones); the held handlers are all that can run.
	deadline := time.Now().Add(10 * time.Second)
	for users.Calls() < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := users.Calls(); n != 4 {
		t.Fatalf("%d handlers running, want the limit of 4", n)
	}
	close(users.Hold)
	done := h.results(4)
	for id, r := range done {
		if r.status != "200" {
			t.Fatalf("stream %d: %+v, want 200", id, r)
		}
		if _, refused := resets[id]; refused {
			t.Fatalf("stream %d both reset and answered", id)
		}
	}
	if n := users.Calls(); n != 4 {
		t.Fatalf("%d calls reached the handler, want 4", n)
	}
}

// rawH2 is an HTTP/2 client writing frames itself, as an attacker would:
// it does not hold back for the limits the server advertises.
type rawH2 struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	enc  *hpack.Encoder
	seen map[uint32]bool
}

// h2Result is how a stream ended: a response status or a reset; or, under
// stream id 0, how the connection did (GOAWAY).
type h2Result struct {
	status string
	reset  http2.ErrCode
	goAway http2.ErrCode
}

func dialH2(t *testing.T, l *limited) *rawH2 {
	t.Helper()
	conn, err := tls.Dial("tcp", l.srv.Addr, l.tlsConfig("h2"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	h := &rawH2{t: t, conn: conn, fr: http2.NewFramer(conn, conn), seen: map[uint32]bool{}}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.hbuf)
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// request opens stream id with a Connect JSON unary request to path.
func (h *rawH2) request(id uint32, path string, extra [][2]string, body []byte) {
	h.t.Helper()
	h.hbuf.Reset()
	fields := append([][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "127.0.0.1"}, {":path", path},
		{"content-type", "application/json"},
	}, extra...)
	for _, f := range fields {
		if err := h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			h.t.Fatal(err)
		}
	}
	if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndHeaders: true}); err != nil {
		h.t.Fatal(err)
	}
	if err := h.fr.WriteData(id, true, body); err != nil {
		h.t.Fatal(err)
	}
}

// results reads frames until n more streams have ended with a response
// status or a reset, or the server sent GOAWAY, and returns those.
func (h *rawH2) results(n int) map[uint32]h2Result {
	h.t.Helper()
	got := map[uint32]h2Result{}
	for len(got) < n {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("read frame (have %v): %v", got, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = h.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" && !h.seen[f.StreamID] {
				h.seen[f.StreamID] = true
				got[f.StreamID] = h2Result{status: s}
			}
		case *http2.RSTStreamFrame:
			if !h.seen[f.StreamID] {
				h.seen[f.StreamID] = true
				got[f.StreamID] = h2Result{reset: f.ErrCode}
			}
		case *http2.GoAwayFrame:
			got[0] = h2Result{goAway: f.ErrCode}
			return got
		}
	}
	return got
}
