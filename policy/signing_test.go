package policy_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	opabundle "github.com/open-policy-agent/opa/v1/bundle"

	"github.com/palisade-rpc/palisade/certs/certstest"
	"github.com/palisade-rpc/palisade/internal/testusers"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
)

// bobOpened is alicePolicy with a rule added that lets anyone read bob's
// record, and a test that says so: what an attacker who can write to the
// bundle server would publish. It passes its tests; only its signature
// tells it apart.
func bobOpened() map[string]string {
	return map[string]string{
		"authz.rego": alicePolicy["authz.rego"] + "allow if input.request.id == \"bob\"\n",
		"authz_test.rego": `package palisade.authz_test
import data.palisade.authz
test_alice if authz.decision.allow with input as {"request": {"id": "alice"}}
test_bob if authz.decision.allow with input as {"request": {"id": "bob"}}
`,
	}
}

// withModule returns a tamper func that replaces (or adds) a module after
// signing.
func withModule(name, src string) func(*opabundle.Bundle) {
	return func(b *opabundle.Bundle) {
		for i, m := range b.Modules {
			if m.URL == "/"+name {
				b.Modules[i].Raw = []byte(src)
				return
			}
		}
		b.Modules = append(b.Modules, opabundle.ModuleFile{URL: "/" + name, Path: "/" + name, Raw: []byte(src)})
	}
}

// TestSignedBundles: with a signing key configured, a bundle signed with it
// is taken; one changed after signing (a file edited, a file added),
// an unsigned one and one signed with another key are refused, although
// each passes its rego tests, and the last good policy keeps deciding over
// real TLS: bob's record stays closed. No key reaches the log.
func TestSignedBundles(t *testing.T) {
	t.Parallel()
	ca := certstest.NewCA(t)
	release, other := newBundleKey(t, "release"), newBundleKey(t, "other")
	srv := startBundleServer(t, ca, nil)
	srv.publish(opaBundle(t, "v1", alicePolicy, release, nil))
	logger, logs := rpctest.NewLogger(t)
	src, err := policy.NewBundleSource(srv.url, bundleClient(t, ca), policy.WithLogger(logger),
		policy.WithSigningKey("release", "", release.public), policy.WithTestPollingDelay(0, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	seen := observe(src)
	e, err := src.NewEngine(context.Background())
	if err != nil {
		t.Fatalf("a bundle signed with the configured key was refused: %v", err)
	}
	good := e.Revision()
	runSource(t, src)

	users := rpctest.Start(t, ca.Source(ca.Server("/svc/user")), e, (&testusers.Service{}).Mount)
	client, err := rpc.NewClient(userv1connect.NewUserServiceClient, users.URL, ca.Source(ca.Client("/client/cli")))
	if err != nil {
		t.Fatal(err)
	}
	readBob := func(step string) {
		t.Helper()
		_, err := client.GetUser(context.Background(), &userv1.GetUserRequest{Id: "bob"})
		if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "only alice's record") {
			t.Fatalf("%s: reading bob's record: %v, want permission denied by the signed policy", step, err)
		}
	}
	readBob("signed v1")

	opened := bobOpened()
	for _, c := range []struct {
		name    string
		archive []byte
		logged  string // in OPA's error
	}{
		{"a file changed after signing", opaBundle(t, "v2", alicePolicy, release, withModule("authz.rego", opened["authz.rego"])), "digest mismatch"},
		{"a file added after signing", opaBundle(t, "v2", alicePolicy, release, withModule("backdoor.rego", "package palisade.authz\nallow if input.request.id == \"bob\"\n")), "not included in bundle signature"},
		{"a file removed after signing", opaBundle(t, "v2", opened, release, func(b *opabundle.Bundle) { b.Modules = b.Modules[:1] }), "not found in the target bundle"},
		{"unsigned", opaBundle(t, "v2", opened, nil, nil), "bundle missing .signatures.json file"},
		{"signed with another key", opaBundle(t, "v2", opened, other, nil), "failed to verify JWT signature"},
	} {
		mark := seen.mark()
		srv.publish(c.archive)
		seen.waitFor(t, mark, "unreadable", 1)
		if e.Revision() != good {
			t.Fatalf("%s: swapped in", c.name)
		}
		logs.WaitForLog(t, "policy bundle refused", "signed=true", c.logged)
		readBob(c.name)
	}
	log := strings.Join(logs.Lines(), "\n")
	if n := countLines(log, "level=ERROR") - countLines(log, "level=ERROR", "policy bundle refused"); n != 0 {
		t.Errorf("%d errors besides the refusals", n)
	}

	mark := seen.mark()
	v3 := map[string]string{"authz.rego": alicePolicy["authz.rego"] + "# v3\n", "authz_test.rego": alicePolicy["authz_test.rego"]}
	srv.publish(opaBundle(t, "v3", v3, release, nil))
	seen.waitFor(t, mark, "loaded", 1)
	if e.Revision() == good {
		t.Fatal("signed v3 not swapped in")
	}
	logs.WaitForLog(t, "level=INFO", "policy bundle fetched again", "after=unreadable")
	readBob("signed v3")

	for _, key := range []*bundleKey{release, other} {
		for _, pemText := range [][]byte{key.public, key.private} {
			for _, line := range strings.Split(string(pemText), "\n")[1:3] { // the key's first base64 lines
				if n := logs.Count(line); n != 0 {
					t.Fatalf("key material in %d log lines", n)
				}
			}
		}
	}
}

// TestSigningKeyRefused: a signing key that cannot be used is a
// configuration error, and the error does not show the key.
func TestSigningKeyRefused(t *testing.T) {
	t.Parallel()
	ec := newBundleKey(t, "k")
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaDER, err := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaDER})
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384DER, err := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	p384PEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p384DER})
	cert := certstest.NewCA(t).Cert.Raw

	for name, c := range map[string]struct {
		id, alg string
		pem     []byte
		want    string
	}{
		"private key":             {"k", "", ec.private, "a private key (PRIVATE KEY); give the public key"},
		"shared secret":           {"k", "HS256", ec.public, "cannot verify HS256"},
		"rsa for ES256":           {"k", "ES256", rsaPEM, "an RSA key cannot verify ES256"},
		"P-256 for ES384":         {"k", "ES384", ec.public, "cannot verify ES384 (want ES256)"},
		"unknown algorithm":       {"k", "RS999", rsaPEM, `unsupported algorithm "RS999"`},
		"empty key id":            {"", "", ec.public, "empty key id"},
		"not PEM":                 {"k", "", []byte("-----BEGIN nothing"), "no PEM block"},
		"a certificate":           {"k", "", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert}), "a CERTIFICATE block"},
		"two keys in one file":    {"k", "", append(append([]byte{}, ec.public...), rsaPEM...), "more than one PEM block"},
		"garbage in a PUBLIC KEY": {"k", "", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("junk")}), "asn1"},
	} {
		_, err := policy.NewBundleSource("https://127.0.0.1/b.tar.gz", &http.Client{}, policy.WithSigningKey(c.id, c.alg, c.pem))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", name, err, c.want)
			continue
		}
		for _, line := range strings.Split(string(c.pem), "\n")[1:] {
			if len(line) > 16 && strings.Contains(err.Error(), line) {
				t.Errorf("%s: the error shows the key: %v", name, err)
			}
		}
	}
	for name, alg := range map[string]string{"RS256 by default": "", "PS256": "PS256"} {
		if _, err := policy.NewBundleSource("https://127.0.0.1/b.tar.gz", &http.Client{}, policy.WithSigningKey("k", alg, rsaPEM)); err != nil {
			t.Errorf("RSA key, %s: %v", name, err)
		}
	}
	if _, err := policy.NewBundleSource("https://127.0.0.1/b.tar.gz", &http.Client{}, policy.WithSigningKey("k", "", p384PEM)); err != nil {
		t.Errorf("P-384 key, ES384 by default: %v", err)
	}
	if _, err := policy.NewBundleSource("https://127.0.0.1/b.tar.gz", &http.Client{},
		policy.WithSigningKey("k", "", ec.public), policy.WithSigningKey("k", "", p384PEM)); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("one key id twice: %v", err)
	}
}
