package rpc_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// HTTP/2 from the attacker's side: header blocks trickled frame by frame,
// headers past the limit, frames larger than the server reads (see also
// TestHeaderTooLarge and TestMaxConcurrentStreams in limits_test.go). The
// raw client is exhaustion_test.go's h2Conn.

// TestHTTP2HeaderTrickleIsCut: a client that starts a header block (HEADERS
// without END_HEADERS) and then sends one CONTINUATION frame of one byte
// every 200 ms is cut off: mid-block it cannot answer the server's PING,
// and the server closes the connection WithReadHeaderTimeout after the
// client's last complete frame, and logs it. A client that is merely idle
// answers the PINGs and keeps its connection.
func TestHTTP2HeaderTrickleIsCut(t *testing.T) {
	t.Parallel()
	const bound = 2 * time.Second
	l := startLimited(t, nil, rpc.WithReadHeaderTimeout(bound))

	// An idle client: its transport answers PINGs.
	idle := l.httpClient(true)
	get := func() error {
		res, err := idle.Post(l.srv.URL+userv1connect.UserServiceGetUserProcedure, "application/json", strings.NewReader(`{"id":"x"}`))
		if err != nil {
			return err
		}
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", res.StatusCode)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatal(err)
	}

	h := dialH2Conn(t, l, true)
	h.wmu.Lock()
	h.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "https"}, {":authority", "127.0.0.1"},
		{":path", userv1connect.UserServiceGetUserProcedure}, {"content-type", "application/json"},
		{"x-trickle", strings.Repeat("t", 600)},
	} {
		_ = h.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	block := slices.Clone(h.hbuf.Bytes())
	start := time.Now()
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:10]})
	h.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	sent := 10
	cut := time.Duration(0)
	for sent < len(block)-1 {
		select {
		case <-h.gone:
			cut = time.Since(start)
		case <-time.After(200 * time.Millisecond):
			h.write(func() error { return h.fr.WriteContinuation(1, false, block[sent:sent+1]) })
			sent++
			continue
		}
		break
	}
	if cut == 0 {
		t.Fatalf("the server kept the connection through %d bytes of a trickled header block (%v)", sent, time.Since(start))
	}
	t.Logf("trickled header block cut after %v (%d of %d bytes); bound %v", cut.Round(time.Millisecond), sent, len(block), bound)
	if e, goAway := h.endings()[0]; goAway {
		t.Fatalf("the server sent GOAWAY %v: the client broke the protocol, it was not cut for being slow", e.reset)
	}
	if cut > bound+3*time.Second {
		t.Errorf("cut after %v; the bound is %v", cut, bound)
	}
	l.srv.WaitForLog(t, "closing a slow client's connection: it did not answer a PING")

	// The idle client's connection outlived several bounds, and serves.
	time.Sleep(2 * bound)
	if err := get(); err != nil {
		t.Fatalf("idle client after %v: %v", 2*bound, err)
	}
	if n := l.srv.Count("did not answer a PING"); n != 1 {
		t.Errorf("%d connections cut for PINGs, want the trickling one only", n)
	}
	if c := l.users.Calls(); c != 2 {
		t.Errorf("%d calls reached the handler, want the idle client's 2", c)
	}
}

// TestHTTP2OversizedHeaders: over HTTP/2, how a request with headers past
// WithMaxHeaderBytes (64 KiB by default; the server advertises
// SETTINGS_MAX_HEADER_LIST_SIZE 65,856) ends depends on its shape, and it
// decides whether the client's other streams survive:
//
//   - many fields whose sum passes the limit, the excess in the block's
//     last frame: 431 on that stream; another stream on the connection
//     completes; the excess in an earlier frame: a connection error
//     (GOAWAY PROTOCOL_ERROR);
//   - one field longer than the limit (a 70 KiB Authorization header):
//     net/http's HPACK decoder refuses the string, a connection error
//     (GOAWAY COMPRESSION_ERROR) that ends every stream on the connection;
//   - Go's and grpc-go's clients honour the advertised limit and refuse
//     such a request themselves, so their connection is not lost (Go's
//     only once it has read the server's SETTINGS).
//
// Over HTTP/1.1 the same 70 KiB header gets 431.
func TestHTTP2OversizedHeaders(t *testing.T) {
	t.Parallel()
	users := &testusers.Service{Hold: make(chan struct{})}
	l := startLimited(t, users)
	path := userv1connect.UserServiceGetUserProcedure
	bigAuth := [][2]string{{"authorization", "Bearer " + strings.Repeat("A", 70<<10)}}

	// headers writes a header block of fields on stream id in frames of at
	// most 16 KiB (the server's SETTINGS_MAX_FRAME_SIZE), with a JSON body.
	headers := func(h *h2Conn, id uint32, fields [][2]string, raw bool) {
		h.wmu.Lock()
		defer h.wmu.Unlock()
		h.hbuf.Reset()
		all := append([][2]string{{":method", "POST"}, {":scheme", "https"}, {":authority", "127.0.0.1"}, {":path", path}, {"content-type", "application/json"}}, fields...)
		for _, f := range all {
			hf := hpack.HeaderField{Name: f[0], Value: f[1]}
			if raw {
				hf.Sensitive = true // not indexed; still Huffman-coded when shorter
			}
			_ = h.enc.WriteField(hf)
		}
		block := slices.Clone(h.hbuf.Bytes())
		const frame = 16 << 10
		first := true
		for len(block) > 0 {
			n := min(len(block), frame)
			var err error
			if first {
				err = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndHeaders: n == len(block)})
			} else {
				err = h.fr.WriteContinuation(id, n == len(block), block[:n])
			}
			if err != nil {
				t.Errorf("stream %d: %v", id, err)
				return
			}
			first, block = false, block[n:]
		}
		_ = h.fr.WriteData(id, true, []byte(`{"id":"x"}`))
	}
	waitEnd := func(h *h2Conn, id uint32) (h2End, bool) {
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) {
			if e, ok := h.endings()[id]; ok {
				return e, true
			}
			select {
			case <-h.gone:
				e, ok := h.endings()[id]
				return e, ok
			case <-time.After(10 * time.Millisecond):
			}
		}
		return h2End{}, false
	}

	t.Run("one field past the limit kills the connection", func(t *testing.T) {
		h := dialH2Conn(t, l, false)
		headers(h, 1, nil, false) // held in the handler
		rpctest.WaitFor(t, "the first call to reach the handler", func() bool { return users.Calls() >= 1 })
		headers(h, 3, bigAuth, false)
		select {
		case <-h.gone:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection survived a 70 KiB header field")
		}
		got := h.endings()
		if got[0].reset != http2.ErrCodeCompression {
			t.Fatalf("endings %+v, want GOAWAY COMPRESSION_ERROR", got)
		}
		if e, ok := got[1]; ok && e.status != "" {
			t.Fatalf("the held call was answered (%+v) on a connection the server dropped", e)
		}
	})
	t.Run("many fields past the limit: 431 on that stream only", func(t *testing.T) {
		h := dialH2Conn(t, l, false)
		before := users.Calls()
		headers(h, 1, nil, false) // held in the handler
		rpctest.WaitFor(t, "the call to reach the handler", func() bool { return users.Calls() > before })
		// 12 fields of 6,000 bytes (72 KiB): each far under the limit;
		// never indexed, so the block is as large as the fields.
		var fields [][2]string
		for i := range 12 {
			fields = append(fields, [2]string{"x-pad-" + strconv.Itoa(i), strings.Repeat("p", 6000)})
		}
		// The encoder Huffman-codes "p" to 6 bits: the block is ~54 KiB
		// in four frames, the limit passed within the last one.
		headers(h, 3, fields, true)
		e, ok := waitEnd(h, 3)
		if !ok || e.status != "431" {
			t.Fatalf("stream 3 ended %+v (%v), want 431; endings %+v", e, ok, h.endings())
		}
		close(users.Hold)
		if e, ok := waitEnd(h, 1); !ok || e.status != "200" {
			t.Fatalf("the other stream ended %+v, want 200", e)
		}
	})
	t.Run("many fields past the limit before the last frame kill the connection", func(t *testing.T) {
		// Past the limit, net/http stops counting, and closes the
		// connection on any CONTINUATION frame that follows (it cannot
		// tell how much more is coming): 16 fields, ~72 KiB encoded in
		// five frames, the limit passed in the fourth.
		h := dialH2Conn(t, l, false)
		var fields [][2]string
		for i := range 16 {
			fields = append(fields, [2]string{"x-pad-" + strconv.Itoa(i), strings.Repeat("p", 6000)})
		}
		headers(h, 1, fields, true)
		select {
		case <-h.gone:
		case <-time.After(10 * time.Second):
			t.Fatal("the connection survived")
		}
		if got := h.endings(); got[0].reset != http2.ErrCodeProtocol {
			t.Fatalf("endings %+v, want GOAWAY PROTOCOL_ERROR", got)
		}
	})
	t.Run("Go's HTTP/2 client refuses it itself", func(t *testing.T) {
		// Once it has the server's SETTINGS: on a new connection, the
		// first request can go out before them (net/http's transport waits
		// for them only for extended CONNECT), and then the server drops
		// the connection as above. Here the connection has made a call.
		client := l.httpClient(true)
		post := func(auth string) (*http.Response, error) {
			req, _ := http.NewRequest(http.MethodPost, l.srv.URL+path, strings.NewReader(`{"id":"x"}`))
			req.Header.Set("Content-Type", "application/json")
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			return client.Do(req)
		}
		for i, auth := range []string{"", bigAuth[0][1], ""} {
			res, err := post(auth)
			if auth != "" {
				if err == nil || !strings.Contains(err.Error(), "header list larger than peer's advertised limit") {
					t.Fatalf("Go's client with a 70 KiB header: %v", err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			_, _ = io.Copy(io.Discard, res.Body)
			_ = res.Body.Close()
			if res.StatusCode != http.StatusOK {
				t.Fatalf("call %d: status %d", i, res.StatusCode)
			}
		}
	})
	t.Run("grpc-go refuses it itself", func(t *testing.T) {
		// grpc-go waits for the server's SETTINGS before it uses a
		// connection, so it always knows the limit.
		conn := rpctest.GRPCGo(t, l.srv.Addr, l.ca.Source(l.cli), mtls.AuthorizeMemberOf(certstest.TrustDomain))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var res userv1.GetUserResponse
		err := conn.Invoke(metadata.AppendToOutgoingContext(ctx, "authorization", bigAuth[0][1]), path, &userv1.GetUserRequest{Id: "x"}, &res)
		if status.Code(err) != codes.Internal || !strings.Contains(err.Error(), "header list size") {
			t.Fatalf("grpc-go with a 70 KiB header: %v", err)
		}
		if err := conn.Invoke(ctx, path, &userv1.GetUserRequest{Id: "x"}, &res); err != nil {
			t.Fatalf("grpc-go on the same connection afterwards: %v", err)
		}
	})
	t.Run("HTTP/1.1: 431", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, l.srv.URL+path, strings.NewReader(`{"id":"x"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", bigAuth[0][1])
		res, err := l.httpClient(false).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = res.Body.Close()
		if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Fatalf("status %d, want 431", res.StatusCode)
		}
	})
}

// TestBigFramesAreRefused: the server reads frames of at most 16 KiB
// (SETTINGS_MAX_FRAME_SIZE): net/http keeps a connection's read buffer at
// the size of the largest frame announced on it, so with its default of 1
// MiB, 200 connections each announcing one 1 MiB frame and sending none of
// it pin 200 MiB. A frame past the bound is a connection error, and
// connections announcing 16 KiB frames cost 16 KiB each.
func TestBigFramesAreRefused(t *testing.T) {
	l := startLimited(t, nil)
	const n = 200
	before := heapInUse()
	hs := make([]*h2Conn, n)
	for i := range hs {
		hs[i] = dialH2Conn(t, l, false)
		// A DATA frame header for a stream never opened, announcing 1 MiB.
		var hdr [9]byte
		hdr[0], hdr[1], hdr[2] = 0x10, 0, 0 // length 1 MiB
		hdr[3] = byte(http2.FrameData)
		binary.BigEndian.PutUint32(hdr[5:], 1)
		hs[i].write(func() error { _, err := hs[i].conn.Write(hdr[:]); return err })
	}
	time.Sleep(time.Second)
	growth := int64(heapInUse()) - int64(before)
	refused := 0
	deadline := time.After(5 * time.Second)
	for _, h := range hs {
		select {
		case <-h.gone:
			if h.endings()[0].reset == http2.ErrCodeFrameSize {
				refused++
			}
		case <-deadline:
		}
	}
	t.Logf("%d connections announcing a 1 MiB frame: heap %+.1f MiB; %d refused with FRAME_SIZE_ERROR", n, float64(growth)/mib, refused)
	if refused != n {
		t.Errorf("%d of %d connections refused the 1 MiB frame", refused, n)
	}
	if growth > 32*mib {
		t.Errorf("heap grew by %.1f MiB", float64(growth)/mib)
	}
}

// TestHTTP2AdvertisedBounds: what the server tells an HTTP/2 client it may
// send — frames of at most 16 KiB, 256 KiB per stream and 1 MiB per
// connection before a handler reads (net/http refuses more: a flow-control
// error) — and the header list size.
func TestHTTP2AdvertisedBounds(t *testing.T) {
	t.Parallel()
	l := startLimited(t, nil)
	h := dialH2(t, l)
	settings := map[http2.SettingID]uint32{}
	var connWindow uint32 = 65535 // the initial window of every connection
	deadline := time.Now().Add(10 * time.Second)
	for len(settings) == 0 || connWindow == 65535 {
		if time.Now().After(deadline) {
			t.Fatalf("settings %v, connection window %d", settings, connWindow)
		}
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = f.ForeachSetting(func(s http2.Setting) error { settings[s.ID] = s.Val; return nil })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWindow += f.Increment
			}
		}
	}
	want := map[http2.SettingID]uint32{
		http2.SettingMaxFrameSize:         16 << 10,
		http2.SettingInitialWindowSize:    256 << 10,
		http2.SettingMaxHeaderListSize:    64<<10 + 10*32,
		http2.SettingMaxConcurrentStreams: 250,
	}
	for id, v := range want {
		if settings[id] != v {
			t.Errorf("%v = %d, want %d", id, settings[id], v)
		}
	}
	if connWindow != 1<<20 {
		t.Errorf("connection window %d, want 1 MiB", connWindow)
	}
}
