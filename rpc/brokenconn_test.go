package rpc_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/certs/certstest"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// TestServerKilledMidAnswerIsUnavailable: a server that has sent the
// response headers of a unary call and then goes away (GOAWAY, connection
// closed) makes the call fail with unavailable — connect-go alone says
// unknown ("read message: http2: server sent GOAWAY and closed the
// connection"), which a service calling another would pass on as internal.
func TestServerKilledMidAnswerIsUnavailable(t *testing.T) {
	t.Parallel()
	for name, proto := range protocols {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ca := certstest.NewCA(t)
			answering := make(chan struct{})
			hs := &http.Server{
				TLSConfig: mtls.ServerConfig(ca.Source(ca.Server("/svc/user")), "h2"),
				Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ct := "application/proto"
					if proto == rpc.ProtocolGRPC {
						ct = "application/grpc"
					}
					w.Header().Set("Content-Type", ct)
					w.WriteHeader(http.StatusOK)
					w.(http.Flusher).Flush()
					close(answering)
					<-r.Context().Done()
				}),
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			served := make(chan error, 1)
			go func() { served <- hs.ServeTLS(ln, "", "") }()
			client, err := rpc.NewClient(userv1connect.NewUserServiceClient, "https://"+ln.Addr().String(), ca.Source(ca.Client("/client/cli")), rpc.WithProtocol(proto))
			if err != nil {
				t.Fatal(err)
			}
			inFlight := make(chan error, 1)
			go func() {
				_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"})
				inFlight <- err
			}()
			<-answering
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			defer cancel()
			if err := hs.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("shutdown: %v", err)
			}
			_ = hs.Close()
			<-served
			err = <-inFlight
			t.Logf("the client got: %v", err)
			if connect.CodeOf(err) != connect.CodeUnavailable || connect.IsWireError(err) {
				t.Fatalf("got %v, want unavailable", err)
			}
		})
	}
}
