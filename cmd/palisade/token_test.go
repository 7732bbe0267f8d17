package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/palisade-rpc/palisade/certs"
)

// TestTokenFollowsTheEnvironment: palisade token reads its state from
// $PALISADE_HOME and logs in at $USER_ADDR, as make up starts the services,
// and an explicit flag still wins. (Not parallel: it sets the environment.)
func TestTokenFollowsTheEnvironment(t *testing.T) {
	home := t.TempDir()
	t.Setenv("PALISADE_HOME", home)
	t.Setenv("USER_ADDR", "127.0.0.1:1") // nothing listens on port 1

	err := tokenCmd([]string{"--user", "alice"})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(home, "demo-passwords.json")) {
		t.Fatalf("without a passwords file: %v, want an error naming %s", err, filepath.Join(home, "demo-passwords.json"))
	}

	if _, err := certs.InitDev(filepath.Join(home, "certs")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "demo-passwords.json"), []byte(`{"alice":"not-the-password"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	err = tokenCmd([]string{"--user", "alice"})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("login: %v, want a failure to reach $USER_ADDR 127.0.0.1:1", err)
	}
	err = tokenCmd([]string{"--user", "alice", "--addr", "https://127.0.0.1:2"})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:2") {
		t.Fatalf("login with --addr: %v, want a failure to reach 127.0.0.1:2", err)
	}
}
