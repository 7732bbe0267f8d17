package rpc

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"connectrpc.com/connect"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
)

// benchUsers is the number of distinct users (tokens, request bodies) the
// benchmarks spread their calls over, as `palisade bench` does by default.
const benchUsers = 1000

const benchServerID = "spiffe://palisade.local/svc/user"

// chainFixture is a server's view of calls that passed the TLS handshake:
// the connection state with the client's verified chain, and per user a
// token and a Connect request for the user's own record.
type chainFixture struct {
	src      mtls.Source
	tlsState *tls.ConnectionState
	keys     *token.KeySet
	ids      []string
	auth     []string
}

func newChainFixture(b *testing.B) *chainFixture {
	b.Helper()
	ca := certstest.NewCA(b)
	client := ca.Client("/client/cli")
	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		b.Fatal(err)
	}
	iss, err := token.NewIssuer(ks, benchServerID, token.WithAudience(benchServerID))
	if err != nil {
		b.Fatal(err)
	}
	bound := sha256.Sum256(client.Cert.Raw)
	f := &chainFixture{
		src:  ca.Source(ca.Server("/svc/user")),
		keys: ks,
		tlsState: &tls.ConnectionState{
			Version: tls.VersionTLS13, HandshakeComplete: true, NegotiatedProtocol: "h2",
			PeerCertificates: []*x509.Certificate{client.Cert},
			VerifiedChains:   [][]*x509.Certificate{{client.Cert, ca.Cert}},
		},
	}
	for u := range benchUsers {
		id := fmt.Sprintf("user-%05d", u)
		tok, _, err := iss.Issue(token.Grant{Subject: id, Roles: []string{"customer"}, CertSHA256: &bound})
		if err != nil {
			b.Fatal(err)
		}
		f.ids, f.auth = append(f.ids, id), append(f.auth, "Bearer "+tok)
	}
	return f
}

// verifier returns a token verifier; cacheSize -1 disables its cache.
func (f *chainFixture) verifier(b *testing.B, cacheSize int) *token.Verifier {
	b.Helper()
	pubs, err := f.keys.PublicKeys()
	if err != nil {
		b.Fatal(err)
	}
	v, err := token.NewVerifier(benchServerID, benchServerID, token.NewStaticKeys(pubs), token.WithCacheSize(cacheSize))
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// requests returns, per user, a unary GetUser request for the user's own id
// as a connect-go client sends it over HTTP/2 and TLS in protocol
// (connect.ProtocolConnect or connect.ProtocolGRPC, binary proto), with the
// user's token when withToken, and the body it carries. The body is rewound
// by the caller before every use.
func (f *chainFixture) requests(b *testing.B, protocol string, withToken bool) ([]*http.Request, []*rewindBody) {
	b.Helper()
	reqs := make([]*http.Request, len(f.ids))
	bodies := make([]*rewindBody, len(f.ids))
	for u, id := range f.ids {
		data, err := proto.Marshal(&userv1.GetUserRequest{Id: id})
		if err != nil {
			b.Fatal(err)
		}
		if protocol == connect.ProtocolGRPC {
			data = append(binary.BigEndian.AppendUint32([]byte{0}, uint32(len(data))), data...) // an uncompressed message
		}
		bodies[u] = &rewindBody{data: data}
		r := httptest.NewRequest(http.MethodPost, "https://127.0.0.1:8443"+userv1connect.UserServiceGetUserProcedure, bodies[u])
		r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/2.0", 2, 0
		r.TLS = f.tlsState
		switch protocol {
		case connect.ProtocolConnect:
			r.Header.Set("Content-Type", "application/proto")
			r.Header.Set("Connect-Protocol-Version", "1")
			r.Header.Set("Accept-Encoding", "gzip")
		case connect.ProtocolGRPC:
			r.Header.Set("Content-Type", "application/grpc")
			r.Header.Set("Te", "trailers")
			r.Header.Set("Grpc-Accept-Encoding", "gzip")
		default:
			b.Fatalf("protocol %q", protocol)
		}
		if withToken {
			r.Header.Set("Authorization", f.auth[u])
		}
		reqs[u] = r
	}
	return reqs, bodies
}

// rewindBody is a request body that can be read again after rewind, so a
// benchmark reuses its requests instead of allocating new ones.
type rewindBody struct {
	data []byte
	r    bytes.Reader
}

func (b *rewindBody) rewind()                    { b.r.Reset(b.data) }
func (b *rewindBody) Read(p []byte) (int, error) { return b.r.Read(p) }
func (b *rewindBody) Close() error               { return nil }

// sink is a ResponseWriter that keeps the status and discards the body.
type sink struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (s *sink) reset() {
	clear(s.header)
	s.status = 0
	s.body.Reset()
}
func (s *sink) Header() http.Header { return s.header }
func (s *sink) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
}
func (s *sink) Write(p []byte) (int, error) {
	s.WriteHeader(http.StatusOK)
	return s.body.Write(p)
}

// failure says why the response in s is not a success in protocol: a gRPC
// error comes with status 200 and a grpc-status other than 0, in the
// trailers or, for an error before any message, in the headers.
func (s *sink) failure(protocol string) error {
	if s.status != http.StatusOK {
		return fmt.Errorf("status %d: %s", s.status, s.body.String())
	}
	if protocol != connect.ProtocolGRPC {
		return nil
	}
	st := s.header.Get(http.TrailerPrefix + "Grpc-Status")
	if st == "" {
		st = s.header.Get("Grpc-Status")
	}
	if st != "0" {
		return fmt.Errorf("grpc-status %q: %s", st, s.header.Get(http.TrailerPrefix+"Grpc-Message")+s.header.Get("Grpc-Message"))
	}
	return nil
}

// benchUserService answers GetUser with a small user of constant shape, as
// the harness's service does.
type benchUserService struct {
	userv1connect.UnimplementedUserServiceHandler
}

func (benchUserService) GetUser(_ context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId(), DisplayName: "Bench User", Email: "bench@example.com", Roles: []string{"customer"}, Active: true}}, nil
}

func allowEverything(context.Context, *authz.Input) (authz.Decision, error) {
	return authz.Decision{Allow: true}, nil
}

// BenchmarkPrincipal measures the authenticate middleware alone: the
// workload from the verified chain and, with a token, the user from the
// token verifier (cached: every one of benchUsers tokens verified once
// before timing; cold: the cache disabled, a signature check per call).
func BenchmarkPrincipal(b *testing.B) {
	f := newChainFixture(b)
	cases := []struct {
		name      string
		withToken bool
		cacheSize int
	}{
		{"workload", false, 0},
		{"token-cached", true, 0},
		{"token-cold", true, -1},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			s, err := NewServer(f.src, authz.AuthorizerFunc(allowEverything),
				WithLogger(slog.New(slog.DiscardHandler)), WithTokenVerifier(f.verifier(b, c.cacheSize)))
			if err != nil {
				b.Fatal(err)
			}
			var reached int
			rec := &callRecord{}
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if p, ok := s.authenticate(r.Context(), w, r, rec); ok && (p.User != nil) == c.withToken {
					reached++
				}
			})
			reqs, _ := f.requests(b, connect.ProtocolConnect, c.withToken)
			w := &sink{header: http.Header{}}
			for _, r := range reqs { // fill the token cache
				h.ServeHTTP(w, r)
			}
			reached = 0
			n, u := 0, 0
			b.ReportAllocs()
			for b.Loop() {
				w.reset()
				h.ServeHTTP(w, reqs[u])
				n, u = n+1, (u+1)%len(reqs)
			}
			if reached != n {
				b.Fatalf("%d of %d requests reached the handler with the expected principal (status %d)", reached, n, w.status)
			}
		})
	}
}

// BenchmarkChain measures one unary call through the server's handler
// without the network: the request as it arrives after the TLS handshake
// (a verified client chain, a bearer token of one of benchUsers users,
// binary proto) to the response written, over the Connect and the gRPC
// protocol (the sub-benchmark's last part: bare/connect, bare/grpc, …).
//
//   - bare: the generated Connect handler alone, with the handler options
//     a Palisade server gives it: the cost of the call without security;
//   - workload-only: Palisade's server, no token, an authorizer that allows all;
//   - mtls+jwt: with the token verified (cache warm), allow-all;
//   - mtls+jwt+opa: the whole chain, the OPA engine on the default policy;
//   - mtls+jwt+opa+otel: the same with tracing and metrics on (SDK providers
//     that record but export nowhere).
//
// The chain's own cost is mtls+jwt+opa minus bare, per protocol. One
// goroutine runs the calls, so ns/op is CPU time per call, except for
// garbage collection done on other cores meanwhile.
func BenchmarkChain(b *testing.B) {
	f := newChainFixture(b)
	// The user service's layer, read from its directory: package rpc's own
	// tests cannot import services/user, which imports rpc.
	bundle, err := policy.LoadDir("../services/user/policy")
	if err != nil {
		b.Fatal(err)
	}
	engine, err := policy.NewEngine(context.Background(), bundle, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		b.Fatal(err)
	}
	handlerOptions := []connect.HandlerOption{connect.WithReadMaxBytes(DefaultReadMaxBytes), connect.WithCompressMinBytes(DefaultCompressMinBytes)}
	palisade := func(b *testing.B, authorizer authz.Authorizer, opts ...ServerOption) http.Handler {
		s, err := NewServer(f.src, authorizer, append([]ServerOption{WithLogger(slog.New(slog.DiscardHandler)), WithTokenVerifier(f.verifier(b, 0))}, opts...)...)
		if err != nil {
			b.Fatal(err)
		}
		if err := Mount(s, userv1connect.NewUserServiceHandler, userv1connect.UserServiceHandler(benchUserService{})); err != nil {
			b.Fatal(err)
		}
		return s.http.Handler
	}
	cases := []struct {
		name      string
		withToken bool
		handler   func(b *testing.B) http.Handler
	}{
		{"bare", false, func(*testing.B) http.Handler {
			_, h := userv1connect.NewUserServiceHandler(benchUserService{}, handlerOptions...)
			return h
		}},
		{"workload-only", false, func(b *testing.B) http.Handler { return palisade(b, authz.AuthorizerFunc(allowEverything)) }},
		{"mtls+jwt", true, func(b *testing.B) http.Handler { return palisade(b, authz.AuthorizerFunc(allowEverything)) }},
		{"mtls+jwt+opa", true, func(b *testing.B) http.Handler { return palisade(b, engine) }},
		{"mtls+jwt+opa+otel", true, func(b *testing.B) http.Handler {
			return palisade(b, engine, WithTracerProvider(sdktrace.NewTracerProvider()),
				WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))))
		}},
	}
	for _, c := range cases {
		for _, protocol := range []string{connect.ProtocolConnect, connect.ProtocolGRPC} {
			b.Run(c.name+"/"+protocol, func(b *testing.B) {
				h := c.handler(b)
				reqs, bodies := f.requests(b, protocol, c.withToken)
				w := &sink{header: http.Header{}}
				for u, r := range reqs { // warm the token cache; check every answer once
					w.reset()
					bodies[u].rewind()
					h.ServeHTTP(w, r)
					if err := w.failure(protocol); err != nil {
						b.Fatalf("user %d: %v", u, err)
					}
					msg := w.body.Bytes()
					if protocol == connect.ProtocolGRPC && len(msg) >= 5 {
						msg = msg[5:]
					}
					var res userv1.GetUserResponse
					if err := proto.Unmarshal(msg, &res); err != nil || res.GetUser().GetId() != f.ids[u] {
						b.Fatalf("user %d: %v, %q", u, err, w.body.String())
					}
				}
				u := 0
				b.ReportAllocs()
				for b.Loop() {
					w.reset()
					bodies[u].rewind()
					h.ServeHTTP(w, reqs[u])
					if err := w.failure(protocol); err != nil {
						b.Fatal(err)
					}
					u = (u + 1) % len(reqs)
				}
			})
		}
	}
}
