package password

import (
	"strings"
	"sync"
	"testing"
)

func TestCheckerCheck(t *testing.T) {
	t.Parallel()
	c, err := NewChecker(testParams)
	if err != nil {
		t.Fatalf("NewChecker: %v", err)
	}
	encoded := mustHash(t, "hunter2hunter2", testParams)
	cases := map[string]struct {
		password, encoded string
		want              bool
	}{
		"right password":      {"hunter2hunter2", encoded, true},
		"wrong password":      {"hunter3hunter3", encoded, false},
		"unknown user":        {"hunter2hunter2", "", false},
		"malformed hash":      {"hunter2hunter2", "$argon2id$v=19$m=64,t=0,p=1$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", false},
		"garbage hash":        {"hunter2hunter2", "\x00$$$", false},
		"empty password":      {"", encoded, false},
		"too long password":   {strings.Repeat("a", MaxPasswordLength+1), encoded, false},
		"reference vector":    {"correct horse battery staple", "$argon2id$v=19$m=64,t=1,p=1$cGFsaXNhZGVzYWx0MDAwMQ$aOoVeWE42LVTgGoaznuFD3tlTQBfNpDN/329t0Qcsro", true},
		"dummy password only": {"", "", false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			if got := c.Check(tc.password, tc.encoded); got != tc.want {
				t.Errorf("Check = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestCheckerZeroValue(t *testing.T) {
	t.Parallel()
	encoded := mustHash(t, "hunter2hunter2", testParams)
	var zero Checker
	var nilChecker *Checker
	for name, c := range map[string]*Checker{"zero": &zero, "nil": nilChecker} {
		if c.Check("hunter2hunter2", encoded) || c.Check("hunter2hunter2", "") {
			t.Errorf("%s Checker: Check = true, want false", name)
		}
		if p := c.Params(); p != (Params{}) {
			t.Errorf("%s Checker: Params() = %+v, want zero", name, p)
		}
	}
}

// kdfCall records the cost of one key derivation: the arguments that
// determine argon2id's CPU and memory work.
type kdfCall struct {
	iterations, memory, keyLen, saltLen uint32
	parallelism                         uint8
}

// TestCheckerSameWork checks that a login for an unknown user, for a known
// user with a wrong password, and for a known user with the right one each
// do the same work: exactly one argon2id derivation with the same cost
// parameters (a work ratio of exactly 1), rather than comparing wall-clock
// times, which would be flaky.
func TestCheckerSameWork(t *testing.T) {
	t.Parallel()
	p := Params{Memory: 128, Iterations: 2, Parallelism: 2, SaltLength: 16, KeyLength: 32}
	c, err := NewChecker(p)
	if err != nil {
		t.Fatalf("NewChecker: %v", err)
	}
	encoded := mustHash(t, "hunter2hunter2", p)
	stored, err := parse(encoded)
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if c.Params() != p {
		t.Fatalf("Params() = %+v, want %+v", c.Params(), p)
	}
	if c.dummy.params != stored.params || c.dummy.params != p {
		t.Fatalf("dummy params = %+v, real hash params = %+v, want both %+v", c.dummy.params, stored.params, p)
	}
	if len(c.dummy.salt) != len(stored.salt) || len(c.dummy.key) != len(stored.key) {
		t.Fatalf("dummy salt/key lengths %d/%d, real %d/%d", len(c.dummy.salt), len(c.dummy.key), len(stored.salt), len(stored.key))
	}

	var mu sync.Mutex
	var calls []kdfCall
	recording := *c
	derive := c.derive
	recording.derive = func(password, salt []byte, time, memory uint32, threads uint8, keyLen uint32) []byte {
		mu.Lock()
		calls = append(calls, kdfCall{time, memory, keyLen, uint32(len(salt)), threads})
		mu.Unlock()
		return derive(password, salt, time, memory, threads, keyLen)
	}
	want := kdfCall{p.Iterations, p.Memory, p.KeyLength, p.SaltLength, p.Parallelism}
	for name, tc := range map[string]struct{ password, encoded string }{
		"unknown user":                {"hunter2hunter2", ""},
		"known user, wrong password":  {"wrong-password", encoded},
		"known user, right password":  {"hunter2hunter2", encoded},
		"known user, malformed hash":  {"hunter2hunter2", encoded + ";junk"},
		"unknown user, long password": {strings.Repeat("x", MaxPasswordLength), ""},
	} {
		calls = nil
		recording.Check(tc.password, tc.encoded)
		if len(calls) != 1 || calls[0] != want {
			t.Errorf("%s: key derivations = %+v, want exactly one %+v", name, calls, want)
		}
	}
}
