package deploy_test

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// inspect renders one overlay of a staged tree and checks it, returning
// every problem found (a render or decoding failure among them).
func inspect(t *testing.T, kubectl, tree, overlay string) []error {
	t.Helper()
	out, err := render(kubectl, filepath.Join(tree, overlay))
	if err != nil {
		return []error{err}
	}
	r, errs := decodeAll(out)
	if r == nil {
		return errs
	}
	return append(errs, check(r, binaryFlags(t))...)
}

// TestManifests renders every overlay and checks it.
func TestManifests(t *testing.T) {
	k := kubectl(t)
	tree := stage(t)
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			for _, err := range inspect(t, k, tree, o) {
				t.Error(err)
			}
		})
	}
	var pending []string
	for name := range pendingFlags {
		pending = append(pending, "--"+name)
	}
	sort.Strings(pending)
	t.Logf("flags assumed, not yet in the binaries: %s", strings.Join(pending, ", "))
}

// TestChecksCatchFaults breaks the manifests one way at a time and checks
// that the test says so: each fault is one a review could miss and a
// cluster would only show at deploy time, or never.
func TestChecksCatchFaults(t *testing.T) {
	k := kubectl(t)
	faults := []struct {
		name      string
		file      string // under k8s/
		old, new  string
		overlay   string
		wantError string
	}{
		{"misspelt field", "base/usersvc.yaml", "imagePullPolicy:", "imagePullPolcy:", "spire", `unknown field "spec.template.spec.containers[0].imagePullPolcy"`},
		{"field in the wrong case", "base/ordersvc.yaml", "readOnlyRootFilesystem:", "ReadOnlyRootFilesystem:", "spire", `unknown field "spec.template.spec.containers[0].securityContext.ReadOnlyRootFilesystem"`},
		{"duplicated field", "base/usersvc.yaml", "  replicas: 2\n", "  replicas: 2\n  replicas: 3\n", "spire", `mapping key "replicas" already defined`},
		{"unknown flag", "base/ordersvc.yaml", "--user-service-dns-refresh=30s", "--user-service-dns-refrsh=30s", "spire", "ordersvc has no flag --user-service-dns-refrsh"},
		{"flag without =", "base/ordersvc.yaml", "--shutdown-grace=10s", "--shutdown-grace", "files", "--shutdown-grace takes a value"},
		{"missing Secret", "base/usersvc.yaml", "name: usersvc-postgres\n              key: url", "name: usersvc-postgress\n              key: url", "spire", "Secret palisade/usersvc-postgress is not in the render"},
		{"missing Secret key", "base/ordersvc.yaml", "key: password", "key: passwd", "files", `has no key "passwd"`},
		{"Secret in another namespace", "spire/kustomization.yaml", "\nnamespace: palisade\n", "\n", "spire", "Secret palisade/usersvc-postgres is not in the render"},
		{"missing ServiceAccount", "base/ordersvc.yaml", "serviceAccountName: ordersvc", "serviceAccountName: orders", "spire", "ServiceAccount orders is not in the render"},
		{"probe on an undeclared port", "base/usersvc.yaml", "path: /healthz\n            port: admin\n          periodSeconds: 10", "path: /healthz\n            port: admn\n          periodSeconds: 10", "spire", "liveness probe port admn is not a port of the container"},
		{"HTTP probe on the mTLS port", "base/ordersvc.yaml", "path: /healthz\n            port: admin\n          periodSeconds: 5", "path: /healthz\n            port: rpc\n          periodSeconds: 5", "spire", "readiness probe speaks to the mTLS port 9443"},
		{"Service selecting nothing", "base/ordersvc.yaml", "spec:\n  selector:\n    app.kubernetes.io/name: ordersvc", "spec:\n  selector:\n    app.kubernetes.io/name: order", "spire", "service ordersvc: selector map[app.kubernetes.io/name:order] selects no Deployment's pods"},
		{"undefined $(VAR)", "base/usersvc.yaml", "--db=$(PALISADE_DB)", "--db=$(PALISADE_DSN)", "spire", "refers to $(PALISADE_DSN)"},
		{"password in the URL", "base/ordersvc.yaml", "--db=$(PALISADE_DB)", "--db=postgres://ordersvc:hunter2@postgres/orders", "spire", "an argument holds a database password"},
		{"policy not mounted where --policy-dir reads", "base/ordersvc.yaml", "mountPath: /etc/palisade/policy", "mountPath: /etc/palisade/policies", "spire", "--policy-dir=/etc/palisade/policy is not on a volume the container mounts"},
		{"policy drifted from the service's layer", "base/policy/user/user.rego", "package palisade.user\n", "package palisade.user\n\n# local edit\n", "spire", "user.rego differs from services/user/policy/user.rego"},
		{"policy of the other service", "base/usersvc.yaml", "name: palisade-policy-user", "name: palisade-policy-order", "spire", "authz.rego differs from services/user/policy/authz.rego"},
		{"upstream that is no Service", "base/ordersvc.yaml", "--user-service=https://usersvc:8443", "--user-service=https://users:8443", "spire", "no Service palisade/users in the render"},
		{"DNS refresh on a ClusterIP Service", "base/usersvc.yaml", "  clusterIP: None\n", "", "spire", "not headless"},
		{"writable root filesystem", "base/usersvc.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "spire", "readOnlyRootFilesystem is not true"},
		{"capabilities kept", "base/ordersvc.yaml", "drop:\n            - ALL", "drop:\n            - NET_RAW", "spire", "capabilities do not drop ALL"},
		{"no memory limit", "base/ordersvc.yaml", "          limits:\n            memory: 256Mi\n", "", "spire", "no memory limit"},
		{"GOMEMLIMIT above the memory limit", "base/ordersvc.yaml", "value: 224MiB", "value: 300MiB", "spire", "GOMEMLIMIT=300MiB is not below the memory limit 256Mi"},
		{"grace period shorter than the drain", "base/usersvc.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 12", "spire", "does not exceed preStop + --shutdown-grace"},
		{"user service unreachable", "base/networkpolicy.yaml", "    - port: 8443\n", "    - port: 8444\n", "spire", "ordersvc cannot reach usersvc on port 8443"},
		{"order replicas opened to each other", "base/networkpolicy.yaml",
			"  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchLabels:\n          palisade/client: \"true\"\n    ports:\n    - port: rpc\n      protocol: TCP\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: monitoring\n      podSelector:\n        matchLabels:\n          app.kubernetes.io/name: prometheus\n    ports:\n    - port: admin\n      protocol: TCP\n  egress:\n",
			"  ingress:\n  - from:\n    - namespaceSelector: {}\n      podSelector:\n        matchLabels:\n          palisade/client: \"true\"\n    - podSelector: {}\n    ports:\n    - port: rpc\n      protocol: TCP\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: monitoring\n      podSelector:\n        matchLabels:\n          app.kubernetes.io/name: prometheus\n    ports:\n    - port: admin\n      protocol: TCP\n  egress:\n  - to:\n    - podSelector: {}\n",
			"spire", "ordersvc may reach ordersvc on port 9443 (rpc), which it never calls"},
		{"no disruption budget for the order replicas", "base/ordersvc.yaml", "  minAvailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: ordersvc", "  minAvailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: usersvc", "spire", "the order replicas have no PodDisruptionBudget"},
		{"kind the test cannot check", "base/ordersvc.yaml", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgetX", "spire", "no type for this kind"},
		{"disruption budget that blocks every drain", "base/ordersvc.yaml", "minAvailable: 1", "minAvailable: 2", "spire", "no pod could ever be evicted"},
		{"SPIRE socket not mounted", "spire/kustomization.yaml", "mountPath: /run/spire/agent-sockets", "mountPath: /run/spire/sockets", "spire", "--spiffe-socket=unix:///run/spire/agent-sockets/spire-agent.sock is not a unix:// socket on a volume"},
		{"hostPath volume", "spire/kustomization.yaml", "csi:\n          driver: csi.spiffe.io\n          readOnly: true", "hostPath:\n          path: /run/spire/agent-sockets\n          type: Directory", "spire", "a hostPath volume"},
		{"certificate Secret missing", "files/kustomization.yaml", "secretName: ordersvc-tls", "secretName: ordersvc-cert", "files", "Secret palisade/ordersvc-cert is not in the render"},
	}
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			tree := stage(t)
			path := filepath.Join(tree, filepath.FromSlash(f.file))
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Count(string(data), f.old) != 1 {
				t.Fatalf("%s holds %q %d times, want once: update the fault to the manifests", f.file, f.old, strings.Count(string(data), f.old))
			}
			if err := os.WriteFile(path, []byte(strings.Replace(string(data), f.old, f.new, 1)), 0o644); err != nil {
				t.Fatal(err)
			}
			errs := inspect(t, k, tree, f.overlay)
			for _, err := range errs {
				if strings.Contains(err.Error(), f.wantError) {
					return
				}
			}
			t.Errorf("no error containing %q; got:\n%v", f.wantError, errors.Join(errs...))
		})
	}
}
