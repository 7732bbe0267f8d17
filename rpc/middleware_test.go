package rpc

import (
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
		if got, err := bearer([]string{in}); err != nil || got != want {
			t.Errorf("bearer(%q) = %q, %v", in, got, err)
		}
	}
	bad := [][]string{
		{"Bearer"}, {"Bearer "}, {"Basic YWxpY2U6cHc="}, {"Bearer a b"}, {"Bearer a+b/c="},
		{"Bearer a.b.c", "Bearer a.b.c"}, {"Bearer " + strings.Repeat("a", MaxAuthorizationBytes)},
		{"Bearer a.b.c\x00"}, {"Bearer\ta.b.c"},
	}
	for _, in := range bad {
		if got, err := bearer(in); err == nil {
			t.Errorf("bearer(%q) = %q, want error", in, got)
		}
	}
}

// FuzzBearer: whatever the header, bearer never panics, and what it accepts
// is a non-empty token of base64url characters and dots within the cap.
func FuzzBearer(f *testing.F) {
	for _, s := range []string{"Bearer a.b.c", "bearer x", "Basic x", "Bearer ", "Bearer a\x00", "Bearer  a.b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		tok, err := bearer([]string{header})
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
