package rpc

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
)

type benchUsers struct {
	userv1connect.UnimplementedUserServiceHandler
}

func (benchUsers) GetUser(_ context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId()}}, nil
}

// BenchmarkChain serves a unary Connect call (binary protobuf) through the
// whole server handler — request id, access log, authentication, tracing and
// metrics when configured, authorization (an allow-list), validation — to a
// handler that answers at once. TLS and the network are left out: the
// request carries the verified client certificate as net/http would. Logs
// are JSON to io.Discard, so their cost is counted.
//
//	go test -run '^$' -bench Chain -benchmem ./rpc
func BenchmarkChain(b *testing.B) {
	ca := certstest.NewCA(b)
	client := ca.Client("/client/cli")
	state := &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{client.Cert}}}
	authz, err := policy.NewAllowList(map[string]policy.Rule{
		userv1connect.UserServiceGetUserProcedure: {Workloads: []string{policy.AnyWorkload}},
	})
	if err != nil {
		b.Fatal(err)
	}
	body, err := proto.Marshal(&userv1.GetUserRequest{Id: "alice"})
	if err != nil {
		b.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(io.Discard, nil))
	variants := map[string][]ServerOption{
		"plain": nil,
		"traced+metered": {
			WithTracerProvider(sdktrace.NewTracerProvider()),
			WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))),
		},
	}
	for name, opts := range variants {
		b.Run(name, func(b *testing.B) {
			srv, err := NewServer(ca.Source(ca.Server("/svc/user")), authz, append([]ServerOption{WithLogger(logger)}, opts...)...)
			if err != nil {
				b.Fatal(err)
			}
			if err := Mount(srv, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(benchUsers{})); err != nil {
				b.Fatal(err)
			}
			h := srv.http.Handler
			b.ReportAllocs()
			for b.Loop() {
				req := httptest.NewRequest(http.MethodPost, userv1connect.UserServiceGetUserProcedure, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/proto")
				req.TLS = state
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
			}
		})
	}
}
