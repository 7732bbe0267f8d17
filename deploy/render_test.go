// Package deploy_test checks the Kubernetes manifests under k8s/: each
// overlay is rendered with `kubectl kustomize`, every object is decoded
// strictly into its k8s.io/api type (an unknown or duplicated field is an
// error, as the API server's strict field validation makes it), and the
// objects are checked against each other and against the binaries they
// run (checks_test.go). It is a module of its own so that k8s.io/api stays
// out of the product's go.mod.
package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// overlays are the renderable entry points under k8s/.
var overlays = []string{"spire", "files"}

// pendingFlags are flags the manifests use that the binaries do not have
// yet, each being added on another branch (name → whether it takes a
// value). The manifests may use them although --help does not list them;
// once a binary lists one, the test fails until it is removed from here,
// so this list cannot outlive the flags it waits for.
var pendingFlags = map[string]bool{}

// kinds maps apiVersion/kind to the type an object is decoded into. A kind
// not listed fails the test: add its type here.
var kinds = map[string]func() any{
	"v1/Namespace":                       func() any { return &corev1.Namespace{} },
	"v1/ServiceAccount":                  func() any { return &corev1.ServiceAccount{} },
	"v1/ConfigMap":                       func() any { return &corev1.ConfigMap{} },
	"v1/Secret":                          func() any { return &corev1.Secret{} },
	"v1/Service":                         func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                 func() any { return &appsv1.Deployment{} },
	"policy/v1/PodDisruptionBudget":      func() any { return &policyv1.PodDisruptionBudget{} },
	"networking.k8s.io/v1/NetworkPolicy": func() any { return &networkingv1.NetworkPolicy{} },
}

// rendered is one overlay's objects, by kind.
type rendered struct {
	namespaces      map[string]*corev1.Namespace
	serviceAccounts map[string]*corev1.ServiceAccount // by namespace/name
	configMaps      map[string]*corev1.ConfigMap
	secrets         map[string]*corev1.Secret
	services        []*corev1.Service
	deployments     []*appsv1.Deployment
	pdbs            []*policyv1.PodDisruptionBudget
	netpols         []*networkingv1.NetworkPolicy
}

func key(namespace, name string) string { return namespace + "/" + name }

// decodeAll splits kubectl's output into documents and decodes each
// strictly. It returns every error it finds, not only the first.
func decodeAll(out []byte) (*rendered, []error) {
	r := &rendered{
		namespaces:      map[string]*corev1.Namespace{},
		serviceAccounts: map[string]*corev1.ServiceAccount{},
		configMaps:      map[string]*corev1.ConfigMap{},
		secrets:         map[string]*corev1.Secret{},
	}
	var errs []error
	reader := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(out)))
	seen := map[string]bool{}
	for i := 0; ; i++ {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, append(errs, fmt.Errorf("split the rendered YAML: %w", err))
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, meta, err := decodeStrict(doc)
		if err != nil {
			errs = append(errs, fmt.Errorf("object %d: %w", i, err))
			continue
		}
		id := fmt.Sprintf("%T %s", obj, key(meta.Namespace, meta.Name))
		if seen[id] {
			errs = append(errs, fmt.Errorf("%s rendered twice", id))
		}
		seen[id] = true
		switch o := obj.(type) {
		case *corev1.Namespace:
			r.namespaces[o.Name] = o
		case *corev1.ServiceAccount:
			r.serviceAccounts[key(o.Namespace, o.Name)] = o
		case *corev1.ConfigMap:
			r.configMaps[key(o.Namespace, o.Name)] = o
		case *corev1.Secret:
			r.secrets[key(o.Namespace, o.Name)] = o
		case *corev1.Service:
			r.services = append(r.services, o)
		case *appsv1.Deployment:
			r.deployments = append(r.deployments, o)
		case *policyv1.PodDisruptionBudget:
			r.pdbs = append(r.pdbs, o)
		case *networkingv1.NetworkPolicy:
			r.netpols = append(r.netpols, o)
		}
	}
	return r, errs
}

// decodeStrict decodes one YAML document into its k8s.io/api type,
// refusing unknown and duplicate fields. Field names match case-sensitively
// (sigs.k8s.io/json, the decoder of the API server), where encoding/json
// would take "ImagePullPolicy" for "imagePullPolicy".
func decodeStrict(doc []byte) (any, *metav1.ObjectMeta, error) {
	data, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, nil, err
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(data, &tm); err != nil {
		return nil, nil, err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, nil, fmt.Errorf("%s %s: no type for this kind in the test (add it to kinds)", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	strict, err := sigsjson.UnmarshalStrict(data, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	meta := objectMeta(obj)
	if len(strict) > 0 {
		return nil, nil, fmt.Errorf("%s %s: %w", tm.Kind, meta.Name, errors.Join(strict...))
	}
	return obj, meta, nil
}

func objectMeta(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *corev1.Namespace:
		return &o.ObjectMeta
	case *corev1.ServiceAccount:
		return &o.ObjectMeta
	case *corev1.ConfigMap:
		return &o.ObjectMeta
	case *corev1.Secret:
		return &o.ObjectMeta
	case *corev1.Service:
		return &o.ObjectMeta
	case *appsv1.Deployment:
		return &o.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return &o.ObjectMeta
	case *networkingv1.NetworkPolicy:
		return &o.ObjectMeta
	}
	panic(fmt.Sprintf("objectMeta: %T", obj))
}

// kubectl returns the kubectl to render with: $KUBECTL, else kubectl on
// PATH. Without one the test fails, saying what to install.
func kubectl(t *testing.T) string {
	t.Helper()
	if k := os.Getenv("KUBECTL"); k != "" {
		return k
	}
	k, err := exec.LookPath("kubectl")
	if err != nil {
		t.Fatalf("kubectl not found on PATH: the deploy test renders deploy/k8s with `kubectl kustomize`. "+
			"Install kubectl 1.27 or later (it embeds kustomize v5; Debian package kubectl from the Kubernetes "+
			"or Google Cloud apt repository), or set KUBECTL to its path (%v)", err)
	}
	return k
}

// render runs kubectl kustomize on dir.
func render(kubectl, dir string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(kubectl, "kustomize", dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kubectl kustomize %s: %w: %s", filepath.Base(dir), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// secretFiles are the files an operator puts beside the secret
// generators (k8s/secrets/README.md, k8s/files/kustomization.yaml). The
// test stages placeholders: only their names and keys matter here.
var secretFiles = map[string]string{
	"secrets/signing-keys.json":     `{"active": "placeholder", "keys": []}` + "\n",
	"secrets/usersvc-postgres.env":  "url=postgres://usersvc@postgres:5432/users?sslmode=verify-full\npassword=placeholder\n",
	"secrets/ordersvc-postgres.env": "url=postgres://ordersvc@postgres:5432/orders?sslmode=verify-full\npassword=placeholder\n",
	"files/certs/usersvc/tls.crt":   "placeholder\n",
	"files/certs/usersvc/tls.key":   "placeholder\n",
	"files/certs/usersvc/ca.crt":    "placeholder\n",
	"files/certs/ordersvc/tls.crt":  "placeholder\n",
	"files/certs/ordersvc/tls.key":  "placeholder\n",
	"files/certs/ordersvc/ca.crt":   "placeholder\n",
}

// stage copies k8s/ into a temporary directory with placeholder secret
// files. Whatever secret files the working tree holds (an operator's real
// ones) are left behind.
func stage(t *testing.T) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "k8s")
	err := filepath.WalkDir("k8s", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel("k8s", path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if isSecretPath(rel) {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatalf("stage the manifests: %v", err)
	}
	for rel, content := range secretFiles {
		p := filepath.Join(dst, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// isSecretPath reports whether rel (under k8s/) is where an operator's
// secret files go: everything in secrets/ and files/certs/ but the files
// kept in git.
func isSecretPath(rel string) bool {
	rel = filepath.ToSlash(rel)
	if !strings.HasPrefix(rel, "secrets/") && !strings.HasPrefix(rel, "files/certs/") {
		return false
	}
	switch filepath.Base(rel) {
	case "kustomization.yaml", "README.md", ".gitignore":
		return false
	}
	return true
}

// flagSet is a binary's flags: name → whether it takes a value.
type flagSet map[string]bool

var (
	binariesOnce sync.Once
	binaries     map[string]flagSet
	binariesErr  error
)

// helpFlag matches a flag's line in the --help output of Go's flag
// package: "  -name" for a boolean, "  -name type" for one with a value.
var helpFlag = regexp.MustCompile(`^  -([A-Za-z0-9][A-Za-z0-9._-]*)(?: ([^\s]+))?(?:\t|$)`)

// binaryFlags builds the service binaries from the repository (the module
// above this one) and reads their flags from --help.
func binaryFlags(t *testing.T) map[string]flagSet {
	t.Helper()
	binariesOnce.Do(func() {
		binaries, binariesErr = buildAndReadFlags()
	})
	if binariesErr != nil {
		t.Fatal(binariesErr)
	}
	return binaries
}

func buildAndReadFlags() (map[string]flagSet, error) {
	dir, err := os.MkdirTemp("", "palisade-deploy-bin")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	names := []string{"usersvc", "ordersvc"}
	args := []string{"build", "-o", dir + string(filepath.Separator)}
	for _, n := range names {
		args = append(args, "./cmd/"+n)
	}
	build := exec.Command("go", args...)
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build the service binaries: %w\n%s", err, out)
	}
	sets := map[string]flagSet{}
	for _, n := range names {
		var out bytes.Buffer
		help := exec.Command(filepath.Join(dir, n), "--help")
		help.Stdout, help.Stderr = &out, &out
		if err := help.Run(); err != nil {
			return nil, fmt.Errorf("%s --help: %w\n%s", n, err, out.String())
		}
		set := flagSet{}
		for line := range strings.Lines(out.String()) {
			if m := helpFlag.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
				set[m[1]] = m[2] != ""
			}
		}
		if len(set) < 10 {
			return nil, fmt.Errorf("%s --help: read only %d flags from:\n%s", n, len(set), out.String())
		}
		sets[n] = set
	}
	return sets, nil
}
