package overtls_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/token"
)

const (
	issuerName = "spiffe://palisade.local/svc/user"
	audience   = "spiffe://palisade.local/svc/user"
	orderID    = "spiffe://palisade.local/svc/order"
)

var b64 = base64.RawURLEncoding.EncodeToString

// attackFixture is a user service on loopback that verifies tokens, and the
// material to attack it with.
type attackFixture struct {
	ca       *certstest.CA
	srv      *rpctest.Server
	users    *testusers.Service
	issuer   *token.Issuer
	active   *token.SigningKey
	cli      *certs.Issued
	other    *certs.Issued
	order    *certs.Issued
	retired  string // token signed by a key rotated out of the set
	previous string // token signed by the previous, still published key
	verifier *token.Verifier
}

func newAttackFixture(t *testing.T) *attackFixture {
	t.Helper()
	ca := certstest.NewCA(t)
	f := &attackFixture{ca: ca, cli: ca.Client("/client/cli"), other: ca.Client("/client/other"), order: ca.Server("/svc/order")}

	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	f.issuer, err = token.NewIssuer(ks, issuerName, token.WithAudience(audience))
	if err != nil {
		t.Fatal(err)
	}
	cliHash := sha256.Sum256(f.cli.Cert.Raw)
	issue := func() string {
		tok, _, err := f.issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &cliHash})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// K1 signs `retired`; two rotations keeping one previous key retire K1
	// and keep K2, which signed `previous`.
	f.retired = issue()
	if _, _, err := ks.Rotate(token.AlgEdDSA, 1); err != nil {
		t.Fatal(err)
	}
	f.previous = issue()
	if _, _, err := ks.Rotate(token.AlgEdDSA, 1); err != nil {
		t.Fatal(err)
	}
	if f.active, err = ks.ActiveKey(); err != nil {
		t.Fatal(err)
	}
	pubs, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	f.verifier, err = token.NewVerifier(issuerName, audience, token.NewStaticKeys(pubs))
	if err != nil {
		t.Fatal(err)
	}
	authorizer, err := authz.NewAllowList(map[string]authz.Rule{
		userv1connect.UserServiceGetUserProcedure: {Workloads: []string{authz.AnyWorkload}, NeedsUser: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.users = &testusers.Service{}
	f.srv = rpctest.Start(t, ca.Source(ca.Server("/svc/user")), authorizer, f.users.Mount, rpc.WithTokenVerifier(f.verifier))
	return f
}

// call makes GetUser as the holder of cert with the given Authorization
// header value ("" for none).
func (f *attackFixture) call(t *testing.T, cert *certs.Issued, authorization string) (*userv1.User, error) {
	t.Helper()
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.srv.URL, f.ca.Source(cert))
	if err != nil {
		t.Fatal(err)
	}
	ctx, info := connect.NewClientContext(context.Background())
	if authorization != "" {
		info.RequestHeader().Set("Authorization", authorization)
	}
	res, err := client.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	return res.GetUser(), err
}

// forge builds a compact JWS from raw header and payload JSON, signed by sign.
func forge(header, payload string, sign func(input []byte) []byte) string {
	input := b64([]byte(header)) + "." + b64([]byte(payload))
	return input + "." + b64(sign([]byte(input)))
}

func (f *attackFixture) signActive(input []byte) []byte {
	return ed25519.Sign(f.active.Private.(ed25519.PrivateKey), input)
}

func claims(iss, aud string, exp, iat, nbf int64) string {
	return fmt.Sprintf(`{"iss":%q,"sub":"alice","aud":[%q],"exp":%d,"iat":%d,"nbf":%d,"jti":"j1","roles":["customer"]}`, iss, aud, exp, iat, nbf)
}

func TestAttackMatrix(t *testing.T) {
	t.Parallel()
	f := newAttackFixture(t)
	now := time.Now().Unix()
	good := claims(issuerName, audience, now+600, now, now)
	hdr := func(alg, kid string) string { return fmt.Sprintf(`{"alg":%q,"kid":%q,"typ":"at+jwt"}`, alg, kid) }
	activeHeader := hdr("EdDSA", f.active.ID)

	_, attackerKey, _ := ed25519.GenerateKey(rand.Reader)
	attackerPub := attackerKey.Public().(ed25519.PublicKey)
	signAttacker := func(in []byte) []byte { return ed25519.Sign(attackerKey, in) }
	attackerJWK := fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","x":%q,"kid":"attacker"}`, b64(attackerPub))
	attackerCert := b64(f.ca.Client("/client/cli").Cert.Raw)
	randomSig := func([]byte) []byte { s := make([]byte, 64); _, _ = rand.Read(s); return s }
	pubBytes := f.active.Private.Public().(ed25519.PublicKey)
	hmacWithPublicKey := func(in []byte) []byte {
		m := hmac.New(sha256.New, pubBytes)
		m.Write(in)
		return m.Sum(nil)
	}

	cliHash := sha256.Sum256(f.cli.Cert.Raw)
	orderHash := sha256.Sum256(f.order.Cert.Raw)
	boundToCli, _, err := f.issuer.Issue(token.Grant{Subject: "alice", CertSHA256: &cliHash})
	if err != nil {
		t.Fatal(err)
	}
	exchanged, _, err := f.issuer.Issue(token.Grant{Subject: "alice", Actor: orderID, CertSHA256: &orderHash, TTL: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	validSegs := strings.Split(forge(activeHeader, good, f.signActive), ".")
	alteredPayload := validSegs[0] + "." + b64([]byte(strings.Replace(good, `"sub":"alice","aud"`, `"sub":"admin","aud"`, 1))) + "." + validSegs[2]
	// The signature's last base64url character carries 4 padding bits; a
	// lenient decoder ignores them, a canonical one refuses them.
	sig := validSegs[2]
	last := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", sig[len(sig)-1])
	nonCanonical := validSegs[0] + "." + validSegs[1] + "." + sig[:len(sig)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last|1])

	type attack struct {
		authorization string
		cert          *certs.Issued // default cli
		reason        string        // token.Reason* logged by the server; "" for header-level refusals
	}
	bearer := func(tok string) string { return "Bearer " + tok }
	attacks := map[string]attack{
		"alg none":                        {authorization: bearer(forge(hdr("none", f.active.ID), good, randomSig)), reason: token.ReasonAlgorithm},
		"alg None":                        {authorization: bearer(forge(hdr("None", f.active.ID), good, randomSig)), reason: token.ReasonAlgorithm},
		"alg missing":                     {authorization: bearer(forge(fmt.Sprintf(`{"kid":%q,"typ":"at+jwt"}`, f.active.ID), good, f.signActive)), reason: token.ReasonAlgorithm},
		"alg none, empty signature":       {authorization: bearer(b64([]byte(hdr("none", f.active.ID))) + "." + b64([]byte(good)) + "."), reason: token.ReasonMalformed},
		"HS256 keyed with public key":     {authorization: bearer(forge(hdr("HS256", f.active.ID), good, hmacWithPublicKey)), reason: token.ReasonAlgorithm},
		"ES256 header on an EdDSA key":    {authorization: bearer(forge(hdr("ES256", f.active.ID), good, f.signActive)), reason: token.ReasonAlgorithm},
		"unknown kid":                     {authorization: bearer(forge(hdr("EdDSA", "attacker"), good, signAttacker)), reason: token.ReasonUnknownKey},
		"kid path traversal":              {authorization: bearer(forge(hdr("EdDSA", "../../../../etc/passwd"), good, signAttacker)), reason: token.ReasonUnknownKey},
		"jku to attacker JWKS":            {authorization: bearer(forge(`{"alg":"EdDSA","kid":"attacker","typ":"at+jwt","jku":"https://evil.example/jwks.json"}`, good, signAttacker)), reason: token.ReasonHeader},
		"x5u to attacker certificate":     {authorization: bearer(forge(`{"alg":"EdDSA","kid":"attacker","typ":"at+jwt","x5u":"https://evil.example/cert.pem"}`, good, signAttacker)), reason: token.ReasonHeader},
		"embedded attacker jwk":           {authorization: bearer(forge(`{"alg":"EdDSA","kid":"attacker","typ":"at+jwt","jwk":`+attackerJWK+`}`, good, signAttacker)), reason: token.ReasonHeader},
		"x5c with attacker certificate":   {authorization: bearer(forge(`{"alg":"EdDSA","kid":"attacker","typ":"at+jwt","x5c":["`+attackerCert+`"]}`, good, signAttacker)), reason: token.ReasonHeader},
		"crit header, valid signature":    {authorization: bearer(forge(`{"alg":"EdDSA","kid":"`+f.active.ID+`","typ":"at+jwt","crit":["exp"]}`, good, f.signActive)), reason: token.ReasonHeader},
		"wrong typ":                       {authorization: bearer(forge(`{"alg":"EdDSA","kid":"`+f.active.ID+`","typ":"JWT"}`, good, f.signActive)), reason: token.ReasonHeader},
		"duplicate header member":         {authorization: bearer(forge(`{"alg":"EdDSA","alg":"none","kid":"`+f.active.ID+`","typ":"at+jwt"}`, good, f.signActive)), reason: token.ReasonMalformed},
		"expired":                         {authorization: bearer(forge(activeHeader, claims(issuerName, audience, now-3600, now-7200, now-7200), f.signActive)), reason: token.ReasonExpired},
		"nbf in the future":               {authorization: bearer(forge(activeHeader, claims(issuerName, audience, now+7200, now, now+3600), f.signActive)), reason: token.ReasonNotYet},
		"iat in the future":               {authorization: bearer(forge(activeHeader, claims(issuerName, audience, now+7200, now+3600, now), f.signActive)), reason: token.ReasonNotYet},
		"missing exp":                     {authorization: bearer(forge(activeHeader, fmt.Sprintf(`{"iss":%q,"sub":"alice","aud":[%q],"iat":%d}`, issuerName, audience, now), f.signActive)), reason: token.ReasonClaims},
		"exp as a string":                 {authorization: bearer(forge(activeHeader, fmt.Sprintf(`{"iss":%q,"sub":"alice","aud":[%q],"exp":"%d","iat":%d}`, issuerName, audience, now+600, now), f.signActive)), reason: token.ReasonMalformed},
		"duplicate exp claim":             {authorization: bearer(forge(activeHeader, fmt.Sprintf(`{"iss":%q,"sub":"alice","aud":[%q],"exp":%d,"iat":%d,"exp":%d}`, issuerName, audience, now-3600, now, now+600), f.signActive)), reason: token.ReasonMalformed},
		"wrong iss":                       {authorization: bearer(forge(activeHeader, claims("https://evil.example", audience, now+600, now, now), f.signActive)), reason: token.ReasonIssuer},
		"wrong aud":                       {authorization: bearer(forge(activeHeader, claims(issuerName, "spiffe://palisade.local/svc/other", now+600, now, now), f.signActive)), reason: token.ReasonAudience},
		"missing aud":                     {authorization: bearer(forge(activeHeader, fmt.Sprintf(`{"iss":%q,"sub":"alice","exp":%d,"iat":%d}`, issuerName, now+600, now), f.signActive)), reason: token.ReasonAudience},
		"signature stripped":              {authorization: bearer(validSegs[0] + "." + validSegs[1] + "."), reason: token.ReasonMalformed},
		"payload altered":                 {authorization: bearer(alteredPayload), reason: token.ReasonSignature},
		"non-canonical base64":            {authorization: bearer(nonCanonical), reason: token.ReasonMalformed},
		"two segments":                    {authorization: bearer(validSegs[0] + "." + validSegs[1]), reason: token.ReasonMalformed},
		"four segments":                   {authorization: bearer(strings.Join(validSegs, ".") + "." + validSegs[2]), reason: token.ReasonMalformed},
		"header not JSON":                 {authorization: bearer(b64([]byte("not json")) + "." + validSegs[1] + "." + validSegs[2]), reason: token.ReasonMalformed},
		"oversized Authorization":         {authorization: bearer(strings.Repeat("a", rpc.MaxAuthorizationBytes))},
		"not a Bearer token":              {authorization: "Basic YWxpY2U6cGFzc3dvcmQ="},
		"characters outside base64url":    {authorization: bearer(validSegs[0] + "+." + validSegs[1] + "." + validSegs[2])},
		"bound token, other certificate":  {authorization: bearer(boundToCli), cert: f.other, reason: token.ReasonBinding},
		"key rotated out":                 {authorization: bearer(f.retired), reason: token.ReasonUnknownKey},
		"exchanged token, other workload": {authorization: bearer(exchanged), cert: f.cli, reason: token.ReasonBinding},
	}
	for name, a := range attacks {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cert := a.cert
			if cert == nil {
				cert = f.cli
			}
			_, err := f.call(t, cert, a.authorization)
			if connect.CodeOf(err) != connect.CodeUnauthenticated {
				t.Fatalf("got %v, want unauthenticated", err)
			}
			var cerr *connect.Error
			if !asConnectError(err, &cerr) || cerr.Meta().Get("WWW-Authenticate") != rpc.WWWAuthenticateInvalidToken {
				t.Fatalf("WWW-Authenticate = %q", cerr.Meta().Get("WWW-Authenticate"))
			}
			if cerr.Message() != "invalid token" {
				t.Fatalf("message %q tells the caller too much", cerr.Message())
			}
			raw := strings.TrimPrefix(a.authorization, "Bearer ")
			want := "request refused: unauthenticated"
			if a.reason != "" {
				want = "token: " + a.reason + ":"
				// The same verifier, in process, names this case's reason; the
				// log line above may be another case's with the same reason.
				presenter, err := security.WorkloadFromChains([][]*x509.Certificate{{cert.Cert}}, certstest.TrustDomain)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := f.verifier.Verify(context.Background(), raw, presenter); token.ReasonOf(err) != a.reason {
					t.Fatalf("verifier says %v, want reason %s", err, a.reason)
				}
			}
			line := f.srv.WaitForLog(t, want)
			if len(raw) > 20 && strings.Contains(line, raw[:20]) {
				t.Fatalf("server log holds the token: %s", line)
			}
		})
	}

	controls := map[string]struct {
		authorization string
		cert          *certs.Issued
		wantEmail     string
		wantName      string
	}{
		"valid bound token":             {authorization: bearer(boundToCli), cert: f.cli, wantEmail: "alice", wantName: "spiffe://palisade.local/client/cli"},
		"previous key still verifies":   {authorization: bearer(f.previous), cert: f.cli, wantEmail: "alice", wantName: "spiffe://palisade.local/client/cli"},
		"exchanged token, its workload": {authorization: bearer(exchanged), cert: f.order, wantEmail: "alice", wantName: orderID + " acting for alice"},
	}
	for name, c := range controls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			u, err := f.call(t, c.cert, c.authorization)
			if err != nil {
				t.Fatal(err)
			}
			if u.GetEmail() != c.wantEmail || u.GetDisplayName() != c.wantName {
				t.Fatalf("got %v", u)
			}
		})
	}
	t.Run("no token", func(t *testing.T) {
		t.Parallel()
		_, err := f.call(t, f.cli, "")
		var cerr *connect.Error
		if connect.CodeOf(err) != connect.CodeUnauthenticated || !asConnectError(err, &cerr) || cerr.Meta().Get("WWW-Authenticate") != "Bearer" {
			t.Fatalf("got %v, want unauthenticated with a bare Bearer challenge", err)
		}
	})
	t.Cleanup(func() {
		if n := f.users.Calls(); n != int64(len(controls)) {
			t.Errorf("%d calls reached the handler, want %d (the controls)", n, len(controls))
		}
	})
}

// TestStreamsAreAuthenticated: the token check is HTTP middleware, so it
// covers streams as it covers unary calls; here a server stream (gRPC
// health Watch) over grpc-go with a forged token.
func TestStreamsAreAuthenticated(t *testing.T) {
	t.Parallel()
	f := newAttackFixture(t)
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now().Unix()
	forged := forge(`{"alg":"EdDSA","kid":"`+f.active.ID+`","typ":"at+jwt"}`, claims(issuerName, audience, now+600, now, now),
		func(in []byte) []byte { return ed25519.Sign(attacker, in) })
	conn := rpctest.GRPCGo(t, f.srv.Addr, f.ca.Source(f.cli), mtls.AuthorizeMemberOf(certstest.TrustDomain))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+forged)
	stream, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("stream with a forged token: %v, want Unauthenticated", err)
	}
	f.srv.WaitForLog(t, "token: signature:")
}
