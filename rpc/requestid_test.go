package rpc

import (
	"strconv"
	"strings"
	"testing"
)

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

func TestGeneratedIDsAreValid(t *testing.T) {
	t.Parallel()
	g := newRequestIDs()
	for i := 0; i < 1000; i++ {
		if id := g.next(); !ValidRequestID(id) {
			t.Fatalf("generated id %q is not valid", id)
		}
	}
}
