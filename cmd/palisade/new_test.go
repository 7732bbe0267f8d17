package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/user"
)

// TestNewServiceAsAnAdopter does what a team adopting Palisade does, in a
// temporary directory outside the checkout: `palisade new service`, which
// writes and generates the module; its own tests; a build; `palisade certs
// issue` for the new workload; then the new service started beside the
// user service, and called over HTTP/JSON (as curl would) and over gRPC.
// The new service asks the user service for the owner's name on its
// caller's behalf (rpc.WithDelegation), and the user service's access log
// names the caller, the subject and the actor.
func TestNewServiceAsAnAdopter(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	before := gitStatus(t, root)
	tmp := t.TempDir()
	home := filepath.Join(tmp, "home")
	certsDir := filepath.Join(home, "certs")
	bin := filepath.Join(tmp, "bin")
	mod := filepath.Join(tmp, "inventory")

	// The development PKI, as `make up` makes it.
	run(t, "certs", "init", "--dir", certsDir)

	// palisade new service: the module, generated.
	run(t, "new", "service", "inventory", "--module", "example.com/inventory", "--dir", mod, "--palisade", root)
	main, err := os.ReadFile(filepath.Join(mod, "main.go"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(main, []byte("\n")); n > 20 {
		t.Errorf("the generated main.go has %d lines; at most 20", n)
	}
	// Its own tests (the policy layer's rego tests, on the base) pass, and
	// it builds.
	goCmd(t, mod, "vet", "./...")
	goCmd(t, mod, "test", "./...")
	goCmd(t, mod, "build", "-o", filepath.Join(bin, "inventory"), ".")
	goCmd(t, root, "build", "-o", filepath.Join(bin, "usersvc"), "./cmd/usersvc")

	// Its certificate from the development CA.
	run(t, "certs", "issue", "--dir", certsDir, "--id", "spiffe://palisade.local/svc/inventory",
		"--dns", "localhost", "--ip", "127.0.0.1", "--out", certsDir)

	// The user service, told to accept the new service: tokens for it, and
	// it among the delegates.
	userAddr, invAddr := freeAddr(t), freeAddr(t)
	data := filepath.Join(tmp, "user-policy-data.json")
	writeJSON(t, data, map[string]any{"palisade": map[string]any{"config": map[string]any{
		"delegates": []string{"spiffe://palisade.local/svc/order", "spiffe://palisade.local/svc/inventory"},
	}}})
	userLog := start(t, filepath.Join(bin, "usersvc"), "--addr", userAddr,
		"--ca", filepath.Join(certsDir, "ca.pem"), "--cert", filepath.Join(certsDir, "usersvc.pem"), "--key", filepath.Join(certsDir, "usersvc-key.pem"),
		"--db", filepath.Join(home, "users.db"), "--keys", filepath.Join(home, "signing-keys.json"),
		"--demo-passwords", filepath.Join(home, "demo-passwords.json"), "--policy-data", data,
		"--token-audiences", "spiffe://palisade.local/svc/user,spiffe://palisade.local/svc/order,spiffe://palisade.local/svc/inventory")
	invLog := start(t, filepath.Join(bin, "inventory"), "--addr", invAddr,
		"--ca", filepath.Join(certsDir, "ca.pem"), "--cert", filepath.Join(certsDir, "inventory.pem"), "--key", filepath.Join(certsDir, "inventory-key.pem"),
		"--token-issuer", "spiffe://palisade.local/svc/user", "--jwks-url", "https://"+userAddr+"/.well-known/jwks.json",
		"--user-service", "https://"+userAddr)

	// The demo's command-line client.
	cli, err := mtls.NewFileSource(filepath.Join(certsDir, "cli.pem"), filepath.Join(certsDir, "cli-key.pem"), filepath.Join(certsDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	client, err := rpc.NewHTTPClient(cli)
	if err != nil {
		t.Fatal(err)
	}
	waitHealthy(t, client, "https://"+userAddr, userLog)
	waitHealthy(t, client, "https://"+invAddr, invLog)

	alice := login(t, client, userAddr, filepath.Join(home, "demo-passwords.json"), "alice")
	url := "https://" + invAddr + "/inventory.v1.InventoryService/ListItems"

	// Allowed: alice's own items, with her name from the user service.
	status, body := postJSON(t, client, url, alice, `{"owner_id":"alice"}`)
	if status != 200 || !strings.Contains(body, `"ownerName":"Alice"`) {
		t.Errorf("alice's own items: %d %s; want 200 with ownerName Alice", status, body)
	}
	// Another user's items: 403, naming the decision id, which the
	// service's log has.
	status, body = postJSON(t, client, url, alice, `{"owner_id":"bob"}`)
	m := regexp.MustCompile(`permission denied \(decision ([^)\s]+)\)`).FindStringSubmatch(body)
	if status != 403 || m == nil {
		t.Errorf("bob's items as alice: %d %s; want 403 naming the decision", status, body)
	} else if !waitLog(invLog, m[1]) {
		t.Errorf("decision %s is not in the service's log", m[1])
	}
	// No token: 401.
	if status, body = postJSON(t, client, url, "", `{"owner_id":"alice"}`); status != 401 {
		t.Errorf("no token: %d %s; want 401", status, body)
	}
	// A forged token (alice's claims, signed with a key of the attacker's): 401.
	if status, body = postJSON(t, client, url, forge(t, alice), `{"owner_id":"alice"}`); status != 401 {
		t.Errorf("forged token: %d %s; want 401", status, body)
	}
	// An invalid request: 400, naming the field. (The policy decides
	// before the request is validated, so it is admin's, whom the policy
	// lets read anyone's items; alice's would be 403.)
	admin := login(t, client, userAddr, filepath.Join(home, "demo-passwords.json"), "admin")
	if status, body = postJSON(t, client, url, admin, `{"owner_id":"Bob!"}`); status != 400 || !strings.Contains(body, "owner_id") {
		t.Errorf("invalid owner_id: %d %s; want 400 naming owner_id", status, body)
	}

	// Over gRPC: allowed, then another user's items refused
	// (PERMISSION_DENIED, 7).
	if code, msg := callGRPC(t, client, url, alice, "alice"); code != "0" {
		t.Errorf("gRPC, alice's own items: grpc-status %s %q; want 0", code, msg)
	}
	if code, msg := callGRPC(t, client, url, alice, "bob"); code != "7" || !strings.Contains(msg, "decision") {
		t.Errorf("gRPC, bob's items as alice: grpc-status %s %q; want 7 naming the decision", code, msg)
	}

	// The user service saw the call made on alice's behalf: the caller is
	// the new service, the subject alice, the actor the new service.
	if !waitLogLine(userLog, func(l map[string]any) bool {
		return l["procedure"] == "/user.v1.UserService/GetUser" && l["peer"] == "spiffe://palisade.local/svc/inventory" &&
			l["subject"] == "alice" && l["act"] == "spiffe://palisade.local/svc/inventory" && l["code"] == "ok"
	}) {
		t.Errorf("the user service's log has no GetUser by the inventory service for alice with the inventory service as actor")
	}

	if after := gitStatus(t, root); after != before {
		t.Errorf("the checkout changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// run runs a palisade command in this process.
func run(t *testing.T, args ...string) {
	t.Helper()
	if err := dispatch(io.Discard, "palisade", commands(), args); err != nil {
		t.Fatalf("palisade %s: %v", strings.Join(args, " "), err)
	}
}

func goCmd(t *testing.T, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, out)
	}
}

// gitStatus is the checkout's `git status --porcelain`, or "" where git
// or the repository is missing.
func gitStatus(t *testing.T, root string) string {
	t.Helper()
	cmd := exec.Command("git", "status", "--porcelain", "--untracked-files=all")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return string(out)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// start starts a service binary, its log (stderr) into a file whose path
// it returns; the process is ended when the test is.
func start(t *testing.T, binary string, args ...string) string {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), filepath.Base(binary)+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = io.Discard, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", filepath.Base(binary), tail(string(b), 40))
		}
	})
	return logPath
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func waitHealthy(t *testing.T, client *http.Client, base, logPath string) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		status, body := postJSON(t, client, base+"/grpc.health.v1.Health/Check", "", `{}`)
		if status == 200 && strings.Contains(body, "SERVING_STATUS_SERVING") {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	b, _ := os.ReadFile(logPath)
	t.Fatalf("%s is not healthy after 90s; its log:\n%s", base, tail(string(b), 40))
}

func login(t *testing.T, client *http.Client, addr, passwords, name string) string {
	t.Helper()
	demo, err := user.ReadDemoPasswords(passwords)
	if err != nil {
		t.Fatal(err)
	}
	auth := userv1connect.NewAuthServiceClient(client, "https://"+addr)
	res, err := auth.Login(context.Background(), &userv1.LoginRequest{Username: name, Password: demo[name]})
	if err != nil {
		t.Fatalf("login %s: %v", name, err)
	}
	return res.GetAccessToken()
}

// postJSON makes a Connect unary call with a JSON body, as curl --json
// does, and returns the HTTP status and the body.
func postJSON(t *testing.T, client *http.Client, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// callGRPC calls ListItems over the gRPC protocol, with the request
// encoded by hand (field 1, owner_id), and returns grpc-status and
// grpc-message.
func callGRPC(t *testing.T, client *http.Client, url, token, owner string) (string, string) {
	t.Helper()
	msg := append([]byte{0x0a, byte(len(owner))}, owner...)
	frame := make([]byte, 5, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:], uint32(len(msg)))
	frame = append(frame, msg...)
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(frame))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("gRPC call: %v", err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	code, message := res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
	if code == "" { // a trailers-only answer
		code, message = res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
	}
	return code, message
}

// forge returns a token with the claims and header of tok, signed with a
// new key: what an attacker without the issuer's key can make.
func forge(t *testing.T, tok string) string {
	t.Helper()
	parsed, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	forged := jwt.NewWithClaims(jwt.SigningMethodES256, parsed.Claims)
	forged.Header = parsed.Header
	s, err := forged.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	if s == tok {
		t.Fatal("forged token equals the real one")
	}
	return s
}

func waitLog(path, needle string) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && bytes.Contains(b, []byte(needle)) {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// waitLogLine waits until a JSON line of the log at path satisfies ok.
func waitLogLine(path string, ok func(map[string]any) bool) bool {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if f, err := os.Open(path); err == nil {
			sc := bufio.NewScanner(f)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				var l map[string]any
				if json.Unmarshal(sc.Bytes(), &l) == nil && ok(l) {
					f.Close()
					return true
				}
			}
			f.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}
