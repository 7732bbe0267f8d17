package header

import (
	"strconv"
	"strings"
	"testing"
)

func TestBearer(t *testing.T) {
	t.Parallel()
	ok := map[string]string{
		"Bearer abc.def.ghi": "abc.def.ghi",
		"bearer abc.def.ghi": "abc.def.ghi",
		"BEARER a-b_c.d.e":   "a-b_c.d.e",
	}
	for in, want := range ok {
		if got, err := Bearer([]string{in}); err != nil || got != want {
			t.Errorf("Bearer(%q) = %q, %v", in, got, err)
		}
	}
	bad := [][]string{
		{"Bearer"}, {"Bearer "}, {"Basic YWxpY2U6cHc="}, {"Bearer a b"}, {"Bearer a+b/c="},
		{"Bearer a.b.c", "Bearer a.b.c"}, {"Bearer " + strings.Repeat("a", MaxAuthorizationBytes)},
		{"Bearer a.b.c\x00"}, {"Bearer\ta.b.c"},
	}
	for _, in := range bad {
		if got, err := Bearer(in); err == nil {
			t.Errorf("Bearer(%q) = %q, want error", in, got)
		}
	}
}

// FuzzBearer: whatever the header, Bearer never panics, and what it accepts
// is a non-empty token of base64url characters and dots within the cap.
func FuzzBearer(f *testing.F) {
	for _, s := range []string{"Bearer a.b.c", "bearer x", "Basic x", "Bearer ", "Bearer a\x00", "Bearer  a.b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := Bearer([]string{header})
		if err != nil {
			return
		}
		if tok == "" || len(header) > MaxAuthorizationBytes {
			t.Fatalf("accepted %q from %q", tok, header)
		}
		for _, c := range tok {
			if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.", c) {
				t.Fatalf("token %q has %q", tok, c)
			}
		}
	})
}

// FuzzRequestID: an id the server accepts from a client is 1 to 64 bytes
// of [A-Za-z0-9._-], so it can be echoed in a header and logged as is;
// everything else is refused.
func FuzzRequestID(f *testing.F) {
	for _, seed := range []string{"", "a", "req-1.2_3", strings.Repeat("a", 64), strings.Repeat("a", 65), "a b", "a\nb", "ré", `"`, "a/b", "a=b", "\x00"} {
		f.Add(seed)
	}
	const allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
	f.Fuzz(func(t *testing.T, id string) {
		want := len(id) >= 1 && len(id) <= MaxRequestIDLen
		for _, r := range id {
			if !strings.ContainsRune(allowed, r) {
				want = false
			}
		}
		if got := ValidRequestID(id); got != want {
			t.Fatalf("ValidRequestID(%q) = %v, want %v", id, got, want)
		}
		if want && strconv.Quote(id) != `"`+id+`"` {
			t.Fatalf("accepted id %q needs escaping", id)
		}
	})
}
