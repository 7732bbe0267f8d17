package palisade_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/token"
)

// recorder is an authorizer that allows everything and keeps, per call, the
// input documents the OPA engine would have evaluated (policy.InputValue),
// in the order they were asked. It decides before the request too (as a
// policy that mentions request_needed does), so the early input is seen.
type recorder struct {
	mu     sync.Mutex
	inputs []any
}

func (r *recorder) Decide(_ context.Context, in *authz.Input) (authz.Decision, error) {
	doc, err := ast.JSON(policy.InputValue(in))
	if err != nil {
		return authz.Decision{}, err
	}
	r.mu.Lock()
	r.inputs = append(r.inputs, doc)
	r.mu.Unlock()
	return authz.Decision{Allow: true}, nil
}

func (r *recorder) DecidesBeforeRequest() bool { return true }

func (r *recorder) take() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	in := r.inputs
	r.inputs = nil
	return in
}

// TestDesignPolicyInput checks the policy input documents DESIGN.md shows
// ("The policy input"): it makes the calls they describe through a real
// server — no token, a user's own token, a token delegated to the order
// service — records the inputs the engine is given, and compares them with
// the JSON blocks of DESIGN.md, field by field. Values that differ from run
// to run (certificate hashes, jti, exp) are compared by type; every key,
// every other value and every null must match, so an input that gains,
// loses or renames a field, or turns a null into an absence, fails here
// until DESIGN.md says so.
func TestDesignPolicyInput(t *testing.T) {
	t.Parallel()
	want := designInputs(t)

	ca := certstest.NewCA(t)
	const td = "spiffe://" + certstest.TrustDomain
	srvCert := ca.Server("/svc/user")
	cli := ca.Client("/client/cli")
	order := ca.Issue(certs.Leaf{SPIFFEID: td + "/svc/order", Usage: certs.UsageWorkload})

	ks, err := token.NewKeySet(token.AlgEdDSA)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := token.NewIssuer(ks, td+"/svc/user", token.WithAudience(td+"/svc/user", td+"/svc/order"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := ks.PublicKeys()
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := token.NewVerifier(td+"/svc/user", td+"/svc/user", token.NewStaticKeys(pub))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	users := &testusers.Service{}
	srv := rpctest.Start(t, ca.Source(srvCert), rec, users.Mount, rpc.WithTokenVerifier(verifier))

	cliHash, orderHash := certHash(cli), certHash(order)
	direct, _, err := issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"}, CertSHA256: &cliHash})
	if err != nil {
		t.Fatal(err)
	}
	delegated, _, err := issuer.Issue(token.Grant{Subject: "alice", Roles: []string{"customer"},
		Audience: []string{td + "/svc/user"}, CertSHA256: &orderHash, Actor: td + "/svc/order"})
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name   string
		client *certs.Issued
		token  string
	}{
		{"no token", cli, ""},
		{"direct", cli, direct},
		{"delegated", order, delegated},
	} {
		var opts []rpc.ClientOption
		if c.token != "" {
			tok := c.token
			opts = append(opts, rpc.WithTokenSource(func(context.Context) (string, error) { return tok, nil }))
		}
		client, err := rpc.NewClient(userv1connect.NewUserServiceClient, srv.URL, ca.Source(c.client), opts...)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "alice"}); err != nil {
			t.Fatalf("%s: GetUser: %v", c.name, err)
		}
		got := rec.take()
		// A unary call is asked about twice by an authorizer that decides
		// before the request: without the request, then with it.
		if len(got) != 2 {
			t.Fatalf("%s: %d decisions, want 2 (before and with the request)", c.name, len(got))
		}
		early, full := got[0].(map[string]any), got[1].(map[string]any)
		if _, ok := early["request"]; ok {
			t.Errorf("%s: the early input has a request: %v", c.name, early["request"])
		}
		withoutRequest := maps.Clone(full)
		delete(withoutRequest, "request")
		if !reflect.DeepEqual(early, withoutRequest) {
			t.Errorf("%s: the early input is not the full one without its request:\n%v\n%v", c.name, early, withoutRequest)
		}
		if pretty, err := json.MarshalIndent(full, "", "  "); err == nil {
			t.Logf("%s: the input of GetUser {id: alice}:\n%s", c.name, pretty)
		}
		w, ok := want[c.name]
		if !ok {
			t.Errorf("DESIGN.md has no input block for %q", c.name)
			continue
		}
		hashes := map[string]string{"no token": hex.EncodeToString(cliHash[:]), "direct": hex.EncodeToString(cliHash[:]), "delegated": hex.EncodeToString(orderHash[:])}
		compareInput(t, c.name, "input", full, w, hashes[c.name])
	}
}

// variable are the fields whose values change from run to run; their type
// is compared, not their value.
var variable = []string{"input.token.exp", "input.token.jti"}

func compareInput(t *testing.T, call, path string, got, want any, certHex string) {
	t.Helper()
	if path == "input.peer.cert_sha256" {
		if got != certHex {
			t.Errorf("%s: %s = %v, want the client certificate's SHA-256 %s", call, path, got, certHex)
		}
		if s, _ := want.(string); !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(s) {
			t.Errorf("%s: DESIGN.md's %s is %v, not a hex SHA-256", call, path, want)
		}
		return
	}
	if reflect.TypeOf(got) != reflect.TypeOf(want) {
		t.Errorf("%s: %s is %T (%v) in the input, %T (%v) in DESIGN.md", call, path, got, got, want, want)
		return
	}
	switch g := got.(type) {
	case map[string]any:
		w := want.(map[string]any)
		for k := range g {
			if _, ok := w[k]; !ok {
				t.Errorf("%s: %s.%s is in the input (%v) but not in DESIGN.md", call, path, k, g[k])
			}
		}
		for k := range w {
			if _, ok := g[k]; !ok {
				t.Errorf("%s: %s.%s is in DESIGN.md but absent from the input", call, path, k)
				continue
			}
			compareInput(t, call, path+"."+k, g[k], w[k], certHex)
		}
	case []any:
		w := want.([]any)
		if len(g) != len(w) {
			t.Errorf("%s: %s = %v, DESIGN.md says %v", call, path, g, w)
			return
		}
		for i := range g {
			compareInput(t, call, fmt.Sprintf("%s[%d]", path, i), g[i], w[i], certHex)
		}
	default:
		if !slices.Contains(variable, path) && !reflect.DeepEqual(got, want) {
			t.Errorf("%s: %s = %v, DESIGN.md says %v", call, path, got, want)
		}
	}
}

// designInputs reads DESIGN.md's input examples: each is a ```json block
// preceded by a line "<!-- policy input: NAME -->".
func designInputs(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile("DESIGN.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- policy input: ([a-z ]+) -->\\s*```json\n(.*?)```")
	out := map[string]any{}
	for _, m := range re.FindAllStringSubmatch(string(data), -1) {
		var v any
		dec := json.NewDecoder(strings.NewReader(m[2]))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("DESIGN.md, policy input %q: %v", m[1], err)
		}
		out[m[1]] = v
	}
	return out
}

func certHash(issued *certs.Issued) [32]byte { return sha256.Sum256(issued.Cert.Raw) }
