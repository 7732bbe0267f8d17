package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/rpc/rpctest"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// TestCertsIssue mints a certificate for a new workload with `palisade
// certs issue`, serves with it on 127.0.0.1 and calls it with the demo's
// client certificate, the server checked by its SPIFFE ID: what an adopter
// does for a new service. Then the refusals: another trust domain, and
// files that exist without --force.
func TestCertsIssue(t *testing.T) {
	t.Parallel()
	pki := t.TempDir()
	if _, err := certs.InitDev(pki); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "inventory")
	const id = "spiffe://palisade.local/svc/inventory"
	args := []string{"--dir", pki, "--id", id, "--dns", "localhost", "--ip", "127.0.0.1", "--ip", "::1", "--out", out}
	if err := certsIssue(args); err != nil {
		t.Fatalf("certs issue: %v", err)
	}

	src, err := mtls.NewFileSource(filepath.Join(out, "inventory.pem"), filepath.Join(out, "inventory-key.pem"), filepath.Join(out, "ca.pem"))
	if err != nil {
		t.Fatalf("the issued files are not a workload's: %v", err)
	}
	health, err := authz.NewAllowList(map[string]authz.Rule{rpc.HealthCheckProcedure: {Workloads: []string{authz.AnyWorkload}}})
	if err != nil {
		t.Fatal(err)
	}
	srv := rpctest.Start(t, src, health, nil)
	cli, err := mtls.NewFileSource(filepath.Join(pki, "cli.pem"), filepath.Join(pki, "cli-key.pem"), filepath.Join(pki, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	for _, opts := range [][]rpc.ClientOption{{rpc.WithServerID(id)}, nil} {
		hc, err := rpc.NewHTTPClient(cli, opts...)
		if err != nil {
			t.Fatal(err)
		}
		client := connect.NewClient[healthpb.HealthCheckRequest, healthpb.HealthCheckResponse](hc, srv.URL+rpc.HealthCheckProcedure)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err = client.CallUnary(ctx, connect.NewRequest(&healthpb.HealthCheckRequest{}))
		cancel()
		hc.CloseIdleConnections()
		if err != nil {
			t.Fatalf("health check of the new workload (client options %d): %v", len(opts), err)
		}
	}

	before, _ := os.ReadFile(filepath.Join(out, "inventory.pem"))
	if err := certsIssue(args); !errors.Is(err, certs.ErrExist) {
		t.Errorf("issuing again without --force: %v, want ErrExist", err)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "inventory.pem")); string(after) != string(before) {
		t.Error("a refused issue changed the certificate")
	}
	if err := certsIssue(append(args, "--force")); err != nil {
		t.Errorf("with --force: %v", err)
	}
	err = certsIssue([]string{"--dir", pki, "--id", "spiffe://example.org/svc/inventory", "--out", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Errorf("an ID of another trust domain: %v, want a refusal naming the trust domain", err)
	}
	if err := certsIssue([]string{"--dir", pki, "--id", id, "--ip", "localhost", "--out", t.TempDir()}); err == nil {
		t.Error("--ip localhost accepted")
	}
}
