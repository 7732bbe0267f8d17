// Package conformance runs the Connect conformance suite
// (connectrpc.com/conformance) against Palisade's server: Start serves the
// suite's ConformanceService through rpc.NewServer with the whole security
// chain — TLS 1.3 with the runner's client certificate required and
// verified, the authentication middleware (the certificate pinned to a
// workload identity, bearer tokens verified), and an OPA policy deciding
// every call — as the suite's server-under-test protocol asks
// (ServerCompatRequest in, ServerCompatResponse out).
//
// Two suites run against it (make conformance): the suite's own default
// suite, for the protocols, and AuthSuite, generated at test time, for
// tokens and denials across unary and streaming calls.
//
// This is test tooling: the commands in conformance/cmd are not product
// binaries.
package conformance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
	"github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1/conformancev1connect"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// Workload identities the server gives the runner's client certificate; the
// policy (policy/conformance.rego) decides by them.
const (
	// ProtocolClientID needs no token: the default suite sends none.
	ProtocolClientID = "spiffe://palisade.local/client/conformance"
	// UsersClientID needs a user token with the role "conformance" on every call.
	UsersClientID = "spiffe://palisade.local/client/conformance-users"
)

var (
	//go:embed policy/conformance.rego
	policySource string
	//go:embed policy/conformance_test.rego
	policyTests string
)

// PolicyBundle returns the conformance server's policy and its rego tests.
func PolicyBundle() *policy.Bundle {
	return &policy.Bundle{
		Modules: map[string]string{"conformance.rego": policySource, "conformance_test.rego": policyTests},
		Origin:  "conformance",
	}
}

// Options configure Start.
type Options struct {
	// ClientID is the workload identity of the runner's client certificate
	// (default ProtocolClientID).
	ClientID string
	// Tokens verifies bearer tokens. Without it, every call that carries a
	// token is refused with unauthenticated.
	Tokens rpc.TokenVerifier
	// Logger receives the server's log (default: discarded).
	Logger *slog.Logger
	// ShutdownGrace is how long in-flight calls may run once ctx is done
	// (default 2s: the runner's clients leave connections open).
	ShutdownGrace time.Duration
}

// Server is a conformance server that Start started.
type Server struct {
	// Response is what to send the runner: where the server listens and the
	// certificate it presents.
	Response *conformancev1.ServerCompatResponse
	done     chan error
}

// Wait waits until the server has stopped — after the context given to
// Start is done and in-flight calls drained — and returns Serve's error.
func (s *Server) Wait() error { return <-s.done }

// Start serves the ConformanceService as req asks until ctx is done. req
// must ask for TLS with client certificates: Palisade serves nothing else.
// Start uses the runner's server certificate (req.server_creds), trusts and
// pins the runner's client certificate (req.client_tls_cert) as
// opts.ClientID, limits request messages to req.message_receive_limit when
// it is set, and listens on 127.0.0.1 on a free port.
func Start(ctx context.Context, req *conformancev1.ServerCompatRequest, opts Options) (*Server, error) {
	if !req.GetUseTls() {
		return nil, errors.New("conformance: Palisade serves TLS only; the config must exclude cases without TLS")
	}
	if len(req.GetClientTlsCert()) == 0 {
		return nil, errors.New("conformance: Palisade requires client certificates; the config must exclude cases without them")
	}
	if opts.ClientID == "" {
		opts.ClientID = ProtocolClientID
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	serverCert, err := tls.X509KeyPair(req.GetServerCreds().GetCert(), req.GetServerCreds().GetKey())
	if err != nil {
		return nil, fmt.Errorf("conformance: server certificate: %w", err)
	}
	clientCerts, err := pemfile.ParseCertificates(req.GetClientTlsCert())
	if err != nil {
		return nil, fmt.Errorf("conformance: client certificate: %w", err)
	}
	if len(clientCerts) != 1 {
		return nil, fmt.Errorf("conformance: want one client certificate, got %d", len(clientCerts))
	}
	// The runner's client certificate is self-signed: it is its own trust
	// anchor, and the only one.
	bundle := x509.NewCertPool()
	bundle.AddCert(clientCerts[0])
	src := mtls.NewStaticSource(serverCert, bundle)

	grace := opts.ShutdownGrace
	if grace <= 0 {
		grace = 2 * time.Second
	}
	// The conformance policy is complete in itself: it admits the runner
	// to the ConformanceService and nothing else, health included.
	engine, err := policy.NewEngine(ctx, PolicyBundle(), policy.WithLogger(opts.Logger), policy.WithoutBase())
	if err != nil {
		return nil, fmt.Errorf("conformance: policy: %w", err)
	}
	clientID, err := spiffeid.Parse(opts.ClientID)
	if err != nil {
		return nil, fmt.Errorf("conformance: client ID: %w", err)
	}
	serverOpts := []rpc.ServerOption{
		rpc.WithLogger(opts.Logger),
		// The runner's server certificate carries no SPIFFE ID to take the
		// trust domain from: the callers' is the pinned client's.
		rpc.WithTrustDomain(clientID.TrustDomain()),
		rpc.WithPinnedClientCertificate(clientCerts[0], opts.ClientID),
		rpc.WithShutdownGrace(grace),
	}
	if opts.Tokens != nil {
		serverOpts = append(serverOpts, rpc.WithTokenVerifier(opts.Tokens))
	}
	if limit := req.GetMessageReceiveLimit(); limit > 0 {
		serverOpts = append(serverOpts, rpc.WithReadMaxBytes(int(limit)))
	}
	srv, err := rpc.NewServer(src, engine, serverOpts...)
	if err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	if err := rpc.Mount(srv, conformancev1connect.NewConformanceServiceHandler, conformancev1connect.ConformanceServiceHandler(&Service{})); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("conformance: listen: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	s := &Server{
		Response: &conformancev1.ServerCompatResponse{
			Host:    addr.IP.String(),
			Port:    uint32(addr.Port),
			PemCert: req.GetServerCreds().GetCert(),
		},
		done: make(chan error, 1),
	}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	return s, nil
}
