package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// grpcFrame prefixes msg as a gRPC message with flags.
func grpcFrame(flags byte, msg []byte) []byte {
	out := make([]byte, grpcPrefixLen, grpcPrefixLen+len(msg))
	out[0] = flags
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// grpcPrefix is a message prefix claiming n bytes, with nothing after it.
func grpcPrefix(n uint32) []byte {
	out := make([]byte, grpcPrefixLen)
	binary.BigEndian.PutUint32(out[1:], n)
	return out
}

// startNetHTTPMTLS serves nethttp-mtls on 127.0.0.1 and returns its
// address and an HTTP/2 client presenting the client certificate, to send
// it requests by hand.
func startNetHTTPMTLS(t *testing.T, fx *fixture) (string, *http.Client) {
	t.Helper()
	srv, err := startServer(context.Background(), fx.server, ConfigNetHTTPMTLS, ServerLogDiscard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	h2 := new(http.Protocols)
	h2.SetHTTP2(true)
	tr := &http.Transport{TLSClientConfig: fx.clientTLS(&fx.clientCert, "h2"), Protocols: h2}
	t.Cleanup(tr.CloseIdleConnections)
	return "https://" + srv.addr, &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// TestNetHTTPGRPCHandler: nethttp-mtls's hand-written handler answers a
// well-formed GetUser call as the other configurations do, with grpc-status
// 0 in the trailers, and refuses every malformed request with the HTTP
// status or gRPC code it documents, over a real mTLS connection.
func TestNetHTTPGRPCHandler(t *testing.T) {
	t.Parallel()
	fx, err := newFixture(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base, hc := startNetHTTPMTLS(t, fx)
	req, err := proto.Marshal(&userv1.GetUserRequest{Id: fx.ids[0]})
	if err != nil {
		t.Fatal(err)
	}
	valid := grpcFrame(0, req)
	const ok = codes.OK
	cases := map[string]struct {
		method, path, contentType, encoding string
		body                                []byte
		// httpStatus is the HTTP status wanted; with 200, code is the
		// gRPC status wanted.
		httpStatus int
		code       codes.Code
	}{
		"GetUser":                      {body: valid, httpStatus: 200, code: ok},
		"content type with parameters": {contentType: "application/grpc+proto; charset=utf-8", body: valid, httpStatus: 200, code: ok},
		"GET":                          {method: http.MethodGet, httpStatus: http.StatusMethodNotAllowed},
		"Connect's content type":       {contentType: "application/proto", body: valid, httpStatus: http.StatusUnsupportedMediaType},
		"gRPC with JSON":               {contentType: "application/grpc+json", body: valid, httpStatus: http.StatusUnsupportedMediaType},
		"no content type":              {contentType: "-", body: valid, httpStatus: http.StatusUnsupportedMediaType},
		"another procedure":            {path: userv1connect.UserServiceListUsersProcedure, body: valid, httpStatus: http.StatusNotFound},
		"no message":                   {body: nil, httpStatus: 200, code: codes.Unimplemented},
		"two messages":                 {body: append(slices.Clone(valid), valid...), httpStatus: 200, code: codes.Unimplemented},
		"truncated prefix":             {body: valid[:3], httpStatus: 200, code: codes.Internal},
		"truncated message":            {body: valid[:len(valid)-1], httpStatus: 200, code: codes.Internal},
		"compressed, no encoding":      {body: grpcFrame(1, req), httpStatus: 200, code: codes.Internal},
		"compressed with gzip":         {encoding: "gzip", body: grpcFrame(1, req), httpStatus: 200, code: codes.Unimplemented},
		"unknown flags":                {body: grpcFrame(0x80, req), httpStatus: 200, code: codes.Internal},
		"not a GetUserRequest":         {body: grpcFrame(0, []byte{0x0a, 0x7f, 'x'}), httpStatus: 200, code: codes.Internal},
		"over the bound":               {body: grpcPrefix(rpc.DefaultReadMaxBytes + 1), httpStatus: 200, code: codes.ResourceExhausted},
		"over the bound, 4 GiB":        {body: grpcPrefix(1<<32 - 1), httpStatus: 200, code: codes.ResourceExhausted},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			method, path, contentType := cmp.Or(c.method, http.MethodPost), cmp.Or(c.path, userv1connect.UserServiceGetUserProcedure), cmp.Or(c.contentType, "application/grpc")
			hreq, err := http.NewRequest(method, base+path, bytes.NewReader(c.body))
			if err != nil {
				t.Fatal(err)
			}
			if contentType != "-" {
				hreq.Header.Set("Content-Type", contentType)
			}
			if c.encoding != "" {
				hreq.Header.Set("Grpc-Encoding", c.encoding)
			}
			hreq.Header.Set("Te", "trailers")
			res, err := hc.Do(hreq)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body)
			if err != nil {
				t.Fatal(err)
			}
			if res.StatusCode != c.httpStatus {
				t.Fatalf("HTTP %d (%q), want %d", res.StatusCode, body, c.httpStatus)
			}
			if c.httpStatus != 200 {
				return
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/grpc" {
				t.Errorf("content type %q", ct)
			}
			if c.code != ok {
				// Trailers-only: the status in the headers, no body.
				if got := res.Header.Get("Grpc-Status"); got != strconv.Itoa(int(c.code)) || len(body) != 0 {
					t.Fatalf("grpc-status %q (%s), body %d bytes; want %d (%s) and none", got, res.Header.Get("Grpc-Message"), len(body), c.code, c.code)
				}
				if res.Header.Get("Grpc-Message") == "" {
					t.Error("no grpc-message")
				}
				return
			}
			if got := res.Trailer.Get("Grpc-Status"); got != "0" || res.Header.Get("Grpc-Status") != "" {
				t.Fatalf("grpc-status trailer %q, header %q; want 0 in the trailers", got, res.Header.Get("Grpc-Status"))
			}
			if len(body) < grpcPrefixLen || body[0] != 0 || int(binary.BigEndian.Uint32(body[1:])) != len(body)-grpcPrefixLen {
				t.Fatalf("reply %x is not one uncompressed gRPC message", body)
			}
			var reply userv1.GetUserResponse
			if err := proto.Unmarshal(body[grpcPrefixLen:], &reply); err != nil {
				t.Fatal(err)
			}
			want, _ := users{}.GetUser(context.Background(), &userv1.GetUserRequest{Id: fx.ids[0]})
			if !proto.Equal(&reply, want) {
				t.Fatalf("reply %v, want %v", &reply, want)
			}
		})
	}
}

// TestNetHTTPGRPCHandlerBound: a request whose prefix claims more than the
// bound is refused as soon as the prefix is read, without waiting for the
// body (which never comes here) and without allocating what it claims.
// Measured over the whole process, so the test is not parallel: the
// parallel tests wait until it is done.
func TestNetHTTPGRPCHandlerBound(t *testing.T) {
	fx, err := newFixture(1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	base, hc := startNetHTTPMTLS(t, fx)
	call := func() {
		t.Helper()
		pr, pw := io.Pipe()
		defer pw.Close() // the body stays open until the answer is in
		go func() { _, _ = pw.Write(grpcPrefix(rpc.DefaultReadMaxBytes + 1)) }()
		hreq, err := http.NewRequest(http.MethodPost, base+userv1connect.UserServiceGetUserProcedure, pr)
		if err != nil {
			t.Fatal(err)
		}
		hreq.Header.Set("Content-Type", "application/grpc")
		res, err := hc.Do(hreq)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		if _, err := io.Copy(io.Discard, res.Body); err != nil {
			t.Fatal(err)
		}
		if got := res.Header.Get("Grpc-Status"); got != strconv.Itoa(int(codes.ResourceExhausted)) {
			t.Fatalf("grpc-status %q (%s), want resource_exhausted", got, res.Header.Get("Grpc-Message"))
		}
	}
	call() // the connection, once
	const calls = 8
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	for range calls {
		call()
	}
	elapsed := time.Since(start)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("%d refusals: %d bytes allocated by the whole process, %s", calls, allocated, elapsed)
	// Each claims 4 MiB: a handler that allocated the claim would have
	// allocated 32 MiB. A refusal costs both sides about 80 KiB, up to
	// 300 KiB under the race detector.
	if allocated > calls<<20 {
		t.Errorf("%d refusals allocated %d bytes, want under 1 MiB each", calls, allocated)
	}
}

// FuzzReadUnaryMessage: whatever the body, the reader returns exactly the
// one uncompressed message of at most the bound it frames, or a refusal
// with one of the documented codes.
func FuzzReadUnaryMessage(f *testing.F) {
	f.Add(grpcFrame(0, []byte("hello")), "")
	f.Add(grpcFrame(1, []byte("hello")), "gzip")
	f.Add(grpcPrefix(65), "")
	f.Add(append(grpcFrame(0, nil), grpcFrame(0, nil)...), "")
	f.Add([]byte{0, 0, 0}, "identity")
	f.Fuzz(func(t *testing.T, body []byte, encoding string) {
		const bound = 64
		msg, e := readUnaryMessage(bytes.NewReader(body), encoding, bound)
		if e == nil {
			if len(msg) > bound || len(body) != grpcPrefixLen+len(msg) || body[0] != 0 ||
				int(binary.BigEndian.Uint32(body[1:])) != len(msg) || !bytes.Equal(msg, body[grpcPrefixLen:]) {
				t.Fatalf("body %x read as message %x", body, msg)
			}
			return
		}
		if !slices.Contains([]codes.Code{codes.Internal, codes.Unimplemented, codes.ResourceExhausted}, e.code) || e.msg == "" {
			t.Fatalf("body %x refused with %v %q", body, e.code, e.msg)
		}
		if len(body) >= grpcPrefixLen && body[0] == 0 && binary.BigEndian.Uint32(body[1:]) > bound && e.code != codes.ResourceExhausted {
			t.Fatalf("body %x over the bound refused with %v", body, e.code)
		}
	})
}
