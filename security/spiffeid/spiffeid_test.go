package spiffeid

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	t.Parallel()
	valid := map[string]struct{ td, path string }{
		"spiffe://palisade.local/svc/order":   {"palisade.local", "/svc/order"},
		"spiffe://palisade.local":             {"palisade.local", ""},
		"spiffe://example-1_x.org/a.b/C-d_e9": {"example-1_x.org", "/a.b/C-d_e9"},
	}
	for in, want := range valid {
		id, err := Parse(in)
		if err != nil {
			t.Errorf("Parse(%q): %v", in, err)
			continue
		}
		if id.TrustDomain() != want.td || id.Path() != want.path || id.String() != in {
			t.Errorf("Parse(%q) = %q %q %q", in, id.TrustDomain(), id.Path(), id.String())
		}
	}
	invalid := []string{
		"",
		"spiffe://",
		"spiffe:///svc",
		"SPIFFE://palisade.local/svc",
		"https://palisade.local/svc",
		"spiffe://Palisade.local/svc",
		"spiffe://palisade.local:443/svc",
		"spiffe://user@palisade.local/svc",
		"spiffe://palisade.local/svc/",
		"spiffe://palisade.local//svc",
		"spiffe://palisade.local/svc/../admin",
		"spiffe://palisade.local/./svc",
		"spiffe://palisade.local/svc?x=1",
		"spiffe://palisade.local/svc#frag",
		"spiffe://palisade.local/sv%63",
		"spiffe://palisade.local/svc order",
		"spiffe://palisade.local/" + strings.Repeat("a", maxLength),
	}
	for _, in := range invalid {
		if id, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %v, want error", in, id)
		}
	}
}

func TestFromCertificate(t *testing.T) {
	t.Parallel()
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := map[string]struct {
		uris    []*url.URL
		want    string
		wantErr bool
	}{
		"one":      {uris: []*url.URL{u("spiffe://palisade.local/svc/user")}, want: "spiffe://palisade.local/svc/user"},
		"none":     {wantErr: true},
		"two":      {uris: []*url.URL{u("spiffe://palisade.local/a"), u("spiffe://palisade.local/b")}, wantErr: true},
		"https":    {uris: []*url.URL{u("https://palisade.local/a")}, wantErr: true},
		"badspiff": {uris: []*url.URL{u("spiffe://palisade.local/a/../b")}, wantErr: true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			id, err := FromCertificate(&x509.Certificate{URIs: tc.uris})
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want error", id)
				}
				return
			}
			if err != nil || id.String() != tc.want {
				t.Fatalf("got %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}

func TestMemberOf(t *testing.T) {
	t.Parallel()
	id, err := FromParts("palisade.local", "/svc/order")
	if err != nil {
		t.Fatal(err)
	}
	if !id.MemberOf("palisade.local") || id.MemberOf("palisade.localx") || (ID{}).MemberOf("") {
		t.Fatal("MemberOf is wrong")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"spiffe://palisade.local/svc/order", "spiffe://a/b/../c", "spiffe://x:1/y", "spiffe://%41/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := Parse(s)
		if err != nil {
			return
		}
		// A parsed ID round-trips exactly and re-parses to itself.
		if id.String() != s {
			t.Fatalf("String() = %q, input %q", id.String(), s)
		}
		again, err := Parse(id.String())
		if err != nil || again != id {
			t.Fatalf("re-parse of %q: %v %v", s, again, err)
		}
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "spiffe" || u.Host != id.TrustDomain() || u.RawQuery != "" || u.Fragment != "" {
			t.Fatalf("url.Parse disagrees on %q: %v %v", s, u, err)
		}
	})
}
