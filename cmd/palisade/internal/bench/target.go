package bench

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
)

// getUserFunc makes one GetUser call for id, sending auth as the
// Authorization header ("" sends none), and returns the id of the user in
// the answer.
type getUserFunc func(ctx context.Context, id, auth string) (string, error)

// Clients the preflight calls from, besides the measured ones.
const (
	// strangerNoCert presents no client certificate.
	strangerNoCert = "no-cert"
	// strangerOtherCert presents another certificate of the same workload
	// than the one the tokens are bound to.
	strangerOtherCert = "other-cert"
)

// target is one configuration as one client drives it: the measured
// connections and, until the preflight is done, the strangers.
type target struct {
	config string
	client string
	// calls[protocol][k] calls over connection k.
	calls map[string][]getUserFunc
	// strangers[kind][protocol] calls from a client presenting no, or
	// another, certificate; empty for h2c. The preflight uses them, then
	// dropStrangers closes them.
	strangers      map[string]map[string]getUserFunc
	strangersClose []func()
	closers        []func()
}

// spec is what t's configuration claims.
func (t *target) spec() configSpec { return specOf(t.config) }

// close stops the clients, last started first.
func (t *target) close() {
	t.dropStrangers()
	for i := len(t.closers) - 1; i >= 0; i-- {
		t.closers[i]()
	}
	t.closers = nil
}

// dropStrangers closes the clients of the preflight, so that nothing of
// them (a grpc-go reconnect loop) runs while the target is measured.
func (t *target) dropStrangers() {
	for _, f := range t.strangersClose {
		f()
	}
	t.strangersClose, t.strangers = nil, nil
}

func (t *target) addStranger(kind, protocol string, call getUserFunc) {
	if t.strangers[kind] == nil {
		t.strangers[kind] = map[string]getUserFunc{}
	}
	t.strangers[kind][protocol] = call
}

// startTarget makes o.Connections connections of client to config's server
// at addr, for protocols, and the strangers of the preflight.
func startTarget(fx *fixture, config, client, addr string, protocols []string, o Options) (*target, error) {
	t := &target{config: config, client: client, calls: map[string][]getUserFunc{}, strangers: map[string]map[string]getUserFunc{}}
	var err error
	if client == ClientGRPCGo {
		err = t.startGRPCGo(fx, addr, o.Connections)
	} else {
		err = t.startConnect(fx, addr, protocols, o.Connections)
	}
	if err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// startConnect makes connect-go clients: one HTTP client, hence one HTTP/2
// connection, per connection slot, shared by the protocols. The TLS
// configurations use Palisade's client (TLS 1.3, the client certificate,
// the server's SPIFFE ID checked); a server that asks for no certificate
// simply gets none.
func (t *target) startConnect(fx *fixture, addr string, protocols []string, connections int) error {
	h2c := !t.spec().tls
	baseURL := "https://" + addr
	if h2c {
		baseURL = "http://" + addr
	}
	for range connections {
		hc, err := newHTTPClient(fx, h2c)
		if err != nil {
			return err
		}
		t.closers = append(t.closers, hc.CloseIdleConnections)
		for _, p := range protocols {
			t.calls[p] = append(t.calls[p], connectGetUser(hc, baseURL, p))
		}
	}
	if h2c {
		return nil
	}
	for kind, cert := range map[string]*tls.Certificate{strangerNoCert: nil, strangerOtherCert: &fx.otherCert} {
		h2 := new(http.Protocols)
		h2.SetHTTP2(true)
		tr := &http.Transport{TLSClientConfig: fx.clientTLS(cert, "h2"), Protocols: h2, ForceAttemptHTTP2: true}
		t.strangersClose = append(t.strangersClose, tr.CloseIdleConnections)
		for _, p := range protocols {
			t.addStranger(kind, p, connectGetUser(&http.Client{Transport: tr}, baseURL, p))
		}
	}
	return nil
}

// startGRPCGo makes grpc-go clients: one ClientConn, which keeps one
// HTTP/2 connection, per connection slot. Only mTLS servers are driven by
// grpc-go.
func (t *target) startGRPCGo(fx *fixture, addr string, connections int) error {
	for range connections {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(fx.clientTLS(&fx.clientCert))))
		if err != nil {
			return fmt.Errorf("bench: grpc-go client: %w", err)
		}
		t.closers = append(t.closers, func() { _ = conn.Close() })
		t.calls[ProtocolGRPC] = append(t.calls[ProtocolGRPC], grpcGetUser(conn))
	}
	for kind, cert := range map[string]*tls.Certificate{strangerNoCert: nil, strangerOtherCert: &fx.otherCert} {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(fx.clientTLS(cert))))
		if err != nil {
			return fmt.Errorf("bench: grpc-go client: %w", err)
		}
		t.strangersClose = append(t.strangersClose, func() { _ = conn.Close() })
		t.addStranger(kind, ProtocolGRPC, grpcGetUser(conn))
	}
	return nil
}

// newHTTPClient returns Palisade's mTLS HTTP/2 client, or for h2c one over
// cleartext HTTP/2 with the same transport settings.
func newHTTPClient(fx *fixture, h2c bool) (*http.Client, error) {
	if !h2c {
		hc, err := rpc.NewHTTPClient(fx.clientSrc, rpc.WithServerID(serverID))
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		return hc, nil
	}
	protocols := new(http.Protocols)
	protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		Protocols:       protocols,
		IdleConnTimeout: 90 * time.Second,
		HTTP2:           &http.HTTP2Config{SendPingTimeout: 15 * time.Second, PingTimeout: 5 * time.Second},
	}}, nil
}

// connectGetUser returns a getUserFunc over a Connect client speaking
// protocol, built as the generated client builds it (connect-go's
// defaults otherwise: it accepts gzipped replies).
func connectGetUser(hc connect.HTTPClient, baseURL, protocol string) getUserFunc {
	method := userv1.File_user_v1_user_proto.Services().ByName("UserService").Methods().ByName("GetUser")
	opts := []connect.ClientOption{connect.WithSchema(method), connect.WithIdempotency(connect.IdempotencyNoSideEffects)}
	if protocol == ProtocolGRPC {
		opts = append(opts, connect.WithGRPC())
	}
	client := connect.NewClient[userv1.GetUserRequest, userv1.GetUserResponse](hc, baseURL+userv1connect.UserServiceGetUserProcedure, opts...)
	return func(ctx context.Context, id, auth string) (string, error) {
		req := connect.NewRequest(&userv1.GetUserRequest{Id: id})
		if auth != "" {
			req.Header().Set("Authorization", auth)
		}
		res, err := client.CallUnary(ctx, req)
		if err != nil {
			return "", err
		}
		return res.Msg.GetUser().GetId(), nil
	}
}

// grpcGetUser returns a getUserFunc over a grpc-go connection, the token
// sent as metadata the usual way.
func grpcGetUser(conn *grpc.ClientConn) getUserFunc {
	return func(ctx context.Context, id, auth string) (string, error) {
		if auth != "" {
			ctx = metadata.AppendToOutgoingContext(ctx, "authorization", auth)
		}
		var res userv1.GetUserResponse
		if err := conn.Invoke(ctx, userv1connect.UserServiceGetUserProcedure, &userv1.GetUserRequest{Id: id}, &res); err != nil {
			return "", err
		}
		return res.GetUser().GetId(), nil
	}
}
