package token

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/security"
)

func TestDelegatorCachesUntilMargin(t *testing.T) {
	t.Parallel()
	now := time.Now()
	calls := 0
	d := NewDelegator(func(_ context.Context, subject string) (string, time.Time, error) {
		calls++
		if subject == "bad" {
			return "", time.Time{}, errors.New("refused")
		}
		return "delegated-" + subject, now.Add(5 * time.Minute), nil
	}, WithMargin(30*time.Second), withClock(func() time.Time { return now }))
	call := func(tok string) context.Context {
		return security.NewContext(context.Background(), &security.Principal{Token: security.NewSecret(tok)})
	}

	if tok, err := d.Token(context.Background()); tok != "" || err != nil {
		t.Fatalf("no principal: %q %v", tok, err)
	}
	for i := 0; i < 3; i++ {
		if tok, err := d.Token(call("alice")); tok != "delegated-alice" || err != nil {
			t.Fatalf("call %d: %q %v", i, tok, err)
		}
	}
	if calls != 1 {
		t.Fatalf("%d exchanges for one user token, want 1", calls)
	}
	now = now.Add(4*time.Minute + 31*time.Second) // within the margin of expiry
	if _, err := d.Token(call("alice")); err != nil || calls != 2 {
		t.Fatalf("near expiry: %v, %d exchanges, want 2", err, calls)
	}
	if _, err := d.Token(call("bad")); err == nil {
		t.Fatal("exchange error not returned")
	}
}

func TestDelegatorForget(t *testing.T) {
	t.Parallel()
	calls := 0
	d := NewDelegator(func(_ context.Context, subject string) (string, time.Time, error) {
		calls++
		return "delegated-" + subject, time.Now().Add(5 * time.Minute), nil
	})
	call := func(tok string) context.Context {
		return security.NewContext(context.Background(), &security.Principal{Token: security.NewSecret(tok)})
	}
	for _, user := range []string{"alice", "bob"} {
		if _, err := d.Token(call(user)); err != nil {
			t.Fatal(err)
		}
	}
	d.Forget(call("alice"))
	d.Forget(context.Background()) // no principal: nothing to forget
	for _, user := range []string{"alice", "bob"} {
		if _, err := d.Token(call(user)); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 3 {
		t.Fatalf("%d exchanges, want 3: alice's forgotten token exchanged again, bob's still cached", calls)
	}
}
