package rpctest

import (
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/palisade-rpc/palisade/security/mtls"
)

// GRPCGo returns a grpc-go client connection to the server at addr (on
// 127.0.0.1) over mTLS with src's certificate, accepting a server that
// authorize accepts — what a grpc-go user would dial — closed when the
// test ends.
func GRPCGo(tb testing.TB, addr string, src mtls.Source, authorize mtls.Authorizer) *grpc.ClientConn {
	tb.Helper()
	cfg, err := mtls.ClientConfig(src, "127.0.0.1", authorize)
	if err != nil {
		tb.Fatal(err)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}
