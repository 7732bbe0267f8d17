package deploy_test

import (
	"bytes"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// checker checks one rendered overlay. Each check appends what it finds
// wrong to errs, so one run reports every problem.
type checker struct {
	r     *rendered
	flags map[string]flagSet // binary name → its flags
	errs  []error
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

// check runs every check on r and returns what it found.
func check(r *rendered, flags map[string]flagSet) []error {
	c := &checker{r: r, flags: flags}
	c.namespaces()
	for _, d := range r.deployments {
		c.deployment(d)
	}
	for _, s := range r.services {
		c.service(s)
	}
	c.disruptionBudgets()
	c.networkPolicies()
	c.policyConfigMap()
	c.dockerfile()
	if len(r.deployments) == 0 {
		c.errorf("no Deployment rendered")
	}
	return c.errs
}

// namespaces: every namespaced object is in a Namespace of the render, and
// that namespace enforces the restricted Pod Security Standard the pods
// are written to meet.
func (c *checker) namespaces() {
	var metas []*metav1.ObjectMeta
	for _, o := range c.r.serviceAccounts {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.configMaps {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.secrets {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.services {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.deployments {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.pdbs {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, o := range c.r.netpols {
		metas = append(metas, &o.ObjectMeta)
	}
	for _, m := range metas {
		if m.Namespace == "" {
			c.errorf("%s has no namespace (kubectl apply would put it in the current one)", m.Name)
		} else if _, ok := c.r.namespaces[m.Namespace]; !ok {
			c.errorf("%s is in namespace %q, which the render does not create", m.Name, m.Namespace)
		}
	}
	for name, ns := range c.r.namespaces {
		if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
			c.errorf("namespace %s does not enforce the restricted Pod Security Standard", name)
		}
	}
}

// deployment checks one Deployment and its pod template.
func (c *checker) deployment(d *appsv1.Deployment) {
	name := d.Name
	spec := &d.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || sel.Empty() {
		c.errorf("deployment %s: selector %v: %v", name, d.Spec.Selector, err)
	} else if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		c.errorf("deployment %s: its selector does not match its pod template's labels", name)
	}
	if spec.ServiceAccountName == "" {
		c.errorf("deployment %s: no serviceAccountName", name)
	} else if _, ok := c.r.serviceAccounts[key(d.Namespace, spec.ServiceAccountName)]; !ok {
		c.errorf("deployment %s: ServiceAccount %s is not in the render", name, spec.ServiceAccountName)
	}
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		c.errorf("deployment %s: shares a host namespace", name)
	}
	c.podSecurity(d)
	c.volumes(d)
	if len(spec.InitContainers) > 0 {
		c.errorf("deployment %s: init containers are not checked by this test; add checks for them", name)
	}
	for i := range spec.Containers {
		c.container(d, &spec.Containers[i])
	}
}

// podSecurity: non-root, no privilege escalation, no capabilities,
// read-only root filesystem, RuntimeDefault seccomp.
func (c *checker) podSecurity(d *appsv1.Deployment) {
	pod := d.Spec.Template.Spec.SecurityContext
	if pod == nil {
		pod = &corev1.PodSecurityContext{}
	}
	for _, ctr := range d.Spec.Template.Spec.Containers {
		where := fmt.Sprintf("deployment %s container %s", d.Name, ctr.Name)
		sc := ctr.SecurityContext
		if sc == nil {
			c.errorf("%s: no securityContext", where)
			continue
		}
		if !isTrue(sc.RunAsNonRoot) && !(sc.RunAsNonRoot == nil && isTrue(pod.RunAsNonRoot)) {
			c.errorf("%s: runAsNonRoot is not true", where)
		}
		uid := pod.RunAsUser
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if uid == nil || *uid == 0 {
			c.errorf("%s: no non-zero runAsUser (the image's user is then trusted to be non-root)", where)
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			c.errorf("%s: readOnlyRootFilesystem is not true", where)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			c.errorf("%s: allowPrivilegeEscalation is not false", where)
		}
		if isTrue(sc.Privileged) {
			c.errorf("%s: privileged", where)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			c.errorf("%s: capabilities do not drop ALL", where)
		} else if len(sc.Capabilities.Add) > 0 {
			c.errorf("%s: adds capabilities %v", where, sc.Capabilities.Add)
		}
		seccomp := pod.SeccompProfile
		if sc.SeccompProfile != nil {
			seccomp = sc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			c.errorf("%s: seccomp profile is not RuntimeDefault", where)
		}
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

// restrictedVolumes are the volume types the restricted Pod Security
// Standard allows.
var restrictedVolumes = []string{"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}

// volumes: every ConfigMap and Secret a volume names is in the render
// (with the keys it picks), every volume is mounted, and none is of a type
// the restricted standard refuses.
func (c *checker) volumes(d *appsv1.Deployment) {
	spec := &d.Spec.Template.Spec
	mounted := map[string]bool{}
	for _, ctr := range spec.Containers {
		for _, m := range ctr.VolumeMounts {
			mounted[m.Name] = true
		}
	}
	for _, v := range spec.Volumes {
		where := fmt.Sprintf("deployment %s volume %s", d.Name, v.Name)
		if !mounted[v.Name] {
			c.errorf("%s: not mounted by any container", where)
		}
		kind := volumeType(v.VolumeSource)
		if !slices.Contains(restrictedVolumes, kind) {
			c.errorf("%s: a %s volume, which the restricted Pod Security Standard refuses", where, kind)
		}
		switch {
		case v.ConfigMap != nil:
			c.configMapKeys(where, d.Namespace, v.ConfigMap.Name, isTrue(v.ConfigMap.Optional), itemKeys(v.ConfigMap.Items))
		case v.Secret != nil:
			c.secretKeys(where, d.Namespace, v.Secret.SecretName, isTrue(v.Secret.Optional), itemKeys(v.Secret.Items))
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.ConfigMap != nil {
					c.configMapKeys(where, d.Namespace, src.ConfigMap.Name, isTrue(src.ConfigMap.Optional), itemKeys(src.ConfigMap.Items))
				}
				if src.Secret != nil {
					c.secretKeys(where, d.Namespace, src.Secret.Name, isTrue(src.Secret.Optional), itemKeys(src.Secret.Items))
				}
			}
		case v.CSI != nil:
			if !isTrue(v.CSI.ReadOnly) {
				c.errorf("%s: CSI volume is not readOnly", where)
			}
		}
	}
}

func volumeType(src corev1.VolumeSource) string {
	switch {
	case src.ConfigMap != nil:
		return "configMap"
	case src.Secret != nil:
		return "secret"
	case src.Projected != nil:
		return "projected"
	case src.CSI != nil:
		return "csi"
	case src.EmptyDir != nil:
		return "emptyDir"
	case src.DownwardAPI != nil:
		return "downwardAPI"
	case src.Ephemeral != nil:
		return "ephemeral"
	case src.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case src.HostPath != nil:
		return "hostPath"
	}
	return "other"
}

func itemKeys(items []corev1.KeyToPath) []string {
	var keys []string
	for _, it := range items {
		keys = append(keys, it.Key)
	}
	return keys
}

func (c *checker) configMapKeys(where, namespace, name string, optional bool, keys []string) {
	cm, ok := c.r.configMaps[key(namespace, name)]
	if !ok {
		if !optional {
			c.errorf("%s: ConfigMap %s/%s is not in the render", where, namespace, name)
		}
		return
	}
	for _, k := range keys {
		_, inData := cm.Data[k]
		_, inBinary := cm.BinaryData[k]
		if !inData && !inBinary {
			c.errorf("%s: ConfigMap %s has no key %q", where, name, k)
		}
	}
}

func (c *checker) secretKeys(where, namespace, name string, optional bool, keys []string) {
	s, ok := c.r.secrets[key(namespace, name)]
	if !ok {
		if !optional {
			c.errorf("%s: Secret %s/%s is not in the render", where, namespace, name)
		}
		return
	}
	for _, k := range keys {
		_, inData := s.Data[k]
		_, inString := s.StringData[k]
		if !inData && !inString {
			c.errorf("%s: Secret %s has no key %q", where, name, k)
		}
	}
}

// container checks one container: image, resources, env, mounts, args
// against the binary's flags, probes and ports.
func (c *checker) container(d *appsv1.Deployment, ctr *corev1.Container) {
	where := fmt.Sprintf("deployment %s container %s", d.Name, ctr.Name)
	if ctr.Image == "" || strings.HasSuffix(ctr.Image, ":latest") || !strings.ContainsAny(ctr.Image, ":@") {
		c.errorf("%s: image %q is not pinned to a tag or digest", where, ctr.Image)
	}
	if ctr.ImagePullPolicy == "" {
		c.errorf("%s: no imagePullPolicy", where)
	}
	for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := ctr.Resources.Requests[res]; !ok {
			c.errorf("%s: no %s request", where, res)
		}
	}
	limit, hasLimit := ctr.Resources.Limits[corev1.ResourceMemory]
	if !hasLimit {
		c.errorf("%s: no memory limit", where)
	}
	if req, ok := ctr.Resources.Requests[corev1.ResourceMemory]; ok && hasLimit && req.Cmp(limit) > 0 {
		c.errorf("%s: memory request %s above the limit %s", where, req.String(), limit.String())
	}
	for _, e := range ctr.Env {
		if e.Name != "GOMEMLIMIT" {
			continue
		}
		soft, err := goMemLimit(e.Value)
		switch {
		case err != nil:
			c.errorf("%s: GOMEMLIMIT=%q: %v", where, e.Value, err)
		case !hasLimit || soft >= limit.Value():
			c.errorf("%s: GOMEMLIMIT=%s is not below the memory limit %s: the runtime would be killed before it collects harder", where, e.Value, limit.String())
		}
	}

	// Environment: every ConfigMap and Secret key named exists.
	envNames := map[string]bool{}
	for _, e := range ctr.Env {
		envNames[e.Name] = true
		if e.ValueFrom == nil {
			continue
		}
		if ref := e.ValueFrom.SecretKeyRef; ref != nil {
			c.secretKeys(where+" env "+e.Name, d.Namespace, ref.Name, isTrue(ref.Optional), []string{ref.Key})
		}
		if ref := e.ValueFrom.ConfigMapKeyRef; ref != nil {
			c.configMapKeys(where+" env "+e.Name, d.Namespace, ref.Name, isTrue(ref.Optional), []string{ref.Key})
		}
	}
	for _, ef := range ctr.EnvFrom {
		if ef.ConfigMapRef != nil {
			c.configMapKeys(where+" envFrom", d.Namespace, ef.ConfigMapRef.Name, isTrue(ef.ConfigMapRef.Optional), nil)
			if cm := c.r.configMaps[key(d.Namespace, ef.ConfigMapRef.Name)]; cm != nil {
				for k := range cm.Data {
					envNames[ef.Prefix+k] = true
				}
			}
		}
		if ef.SecretRef != nil {
			c.secretKeys(where+" envFrom", d.Namespace, ef.SecretRef.Name, isTrue(ef.SecretRef.Optional), nil)
			if s := c.r.secrets[key(d.Namespace, ef.SecretRef.Name)]; s != nil {
				for k := range s.Data {
					envNames[ef.Prefix+k] = true
				}
			}
		}
	}

	// Mounts: each names a volume of the pod; ConfigMaps and Secrets are
	// mounted whole (a subPath mount never sees an update, so a policy or
	// a certificate would never be reloaded).
	volumes := map[string]corev1.Volume{}
	for _, v := range d.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	for _, m := range ctr.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			c.errorf("%s: mounts volume %s, which the pod does not declare", where, m.Name)
			continue
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			c.errorf("%s: mounts %s with a subPath: its updates would never reach the service", where, m.Name)
		}
		if (v.ConfigMap != nil || v.Secret != nil || v.CSI != nil) && !m.ReadOnly {
			c.errorf("%s: mounts %s read-write", where, m.Name)
		}
	}

	// $(VAR) in command and args: Kubernetes leaves an undefined one as
	// is, so a misspelt name would reach the service literally.
	for _, a := range append(slices.Clone(ctr.Command), ctr.Args...) {
		for _, m := range envRef.FindAllStringSubmatch(a, -1) {
			if !envNames[m[1]] {
				c.errorf("%s: %q refers to $(%s), which the container's env does not define", where, a, m[1])
			}
		}
		if postgresPassword.MatchString(a) {
			c.errorf("%s: an argument holds a database password (%s…): keep it in PGPASSWORD from a Secret", where, a[:strings.Index(a, "://")+3])
		}
	}

	c.args(d, ctr, where)
	c.ports(d, ctr, where)
}

// goMemLimit parses GOMEMLIMIT as the Go runtime does: a byte count with
// an optional B, KiB, MiB, GiB or TiB suffix.
func goMemLimit(v string) (int64, error) {
	units := []struct {
		suffix string
		scale  int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}
	scale := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, scale = n, u.scale
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("not a positive byte count with a B, KiB, MiB, GiB or TiB suffix")
	}
	return n * scale, nil
}

var (
	envRef           = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)
	postgresPassword = regexp.MustCompile(`postgres(ql)?://[^/@:]*:[^@/]*@`)
)

// pathFlags are the flags whose value is a file or directory the service
// reads: it must be on a volume the container mounts (the root filesystem
// is the image's).
var pathFlags = []string{"keys", "policy-dir", "cert", "key", "ca", "crl"}

// args checks the container's arguments against the flags of the binary
// its command runs.
func (c *checker) args(d *appsv1.Deployment, ctr *corev1.Container, where string) {
	if len(ctr.Command) != 1 {
		c.errorf("%s: command %v: want the one binary to run", where, ctr.Command)
		return
	}
	bin := filepath.Base(ctr.Command[0])
	flags, ok := c.flags[bin]
	if !ok {
		c.errorf("%s: command %s is not a service binary this test knows (%v)", where, ctr.Command[0], mapKeys(c.flags))
		return
	}
	for _, a := range ctr.Args {
		name, value, hasValue, ok := splitFlag(a)
		if !ok {
			c.errorf("%s: argument %q is not --flag or --flag=value (the binaries take no other arguments)", where, a)
			continue
		}
		takesValue, known := flags[name]
		if pendingValue, pending := pendingFlags[name]; pending {
			if known {
				c.errorf("%s: %s --help now lists --%s: remove it from pendingFlags", where, bin, name)
			} else {
				takesValue, known = pendingValue, true
			}
		}
		if !known {
			c.errorf("%s: %s has no flag --%s", where, bin, name)
			continue
		}
		switch {
		case takesValue && !hasValue:
			c.errorf("%s: --%s takes a value: write --%s=VALUE", where, name, name)
		case !takesValue && hasValue && value != "true" && value != "false":
			c.errorf("%s: --%s is boolean, not %q", where, name, value)
		}
	}
	for _, name := range pathFlags {
		if p, ok := argValue(ctr, name); ok && p != "" && !onMount(ctr, p) {
			c.errorf("%s: --%s=%s is not on a volume the container mounts", where, name, p)
		}
	}
	if sock, ok := argValue(ctr, "spiffe-socket"); ok {
		p, found := strings.CutPrefix(sock, "unix://")
		if !found || !onMount(ctr, p) {
			c.errorf("%s: --spiffe-socket=%s is not a unix:// socket on a volume the container mounts", where, sock)
		}
	}
	if p, ok := argValue(ctr, "demo-passwords"); bin == "usersvc" && (!ok || p != "") {
		c.errorf("%s: usersvc needs --demo-passwords= (empty): with a file, every replica's start would set new demo passwords", where)
	}
	if _, ok := argValue(ctr, "policy-dir"); !ok {
		c.errorf("%s: no --policy-dir: the policy ConfigMap is not used", where)
	}
	if db, ok := argValue(ctr, "db"); !ok || !strings.Contains(db, "$(") {
		c.errorf("%s: --db=%q: want the PostgreSQL URL from a Secret, --db=$(VAR)", where, db)
	}
	c.upstreams(d, ctr, where)
	c.gracePeriod(d, ctr, where)
}

// splitFlag splits "--name=value" or "--name".
func splitFlag(a string) (name, value string, hasValue, ok bool) {
	rest, found := strings.CutPrefix(a, "--")
	if !found || rest == "" || strings.HasPrefix(rest, "-") {
		return "", "", false, false
	}
	name, value, hasValue = strings.Cut(rest, "=")
	return name, value, hasValue, name != ""
}

// argValue returns the value of the last --name=value of ctr's args (the
// one Go's flag package keeps).
func argValue(ctr *corev1.Container, name string) (string, bool) {
	value, found := "", false
	for _, a := range ctr.Args {
		if n, v, _, ok := splitFlag(a); ok && n == name {
			value, found = v, true
		}
	}
	return value, found
}

func onMount(ctr *corev1.Container, p string) bool {
	for _, m := range ctr.VolumeMounts {
		mp := strings.TrimRight(m.MountPath, "/")
		if p == mp || strings.HasPrefix(p, mp+"/") {
			return true
		}
	}
	return false
}

// upstreams: --user-service names Services of the render, on one of their
// ports, over https; with --user-service-dns-refresh, a headless Service
// (a ClusterIP resolves to one address, and would pin every connection to
// the replica kube-proxy chose).
func (c *checker) upstreams(d *appsv1.Deployment, ctr *corev1.Container, where string) {
	raw, ok := argValue(ctr, "user-service")
	if !ok {
		return
	}
	_, dnsRefresh := argValue(ctr, "user-service-dns-refresh")
	for _, u := range strings.Split(raw, ",") {
		svc, port, err := c.serviceOf(d.Namespace, u)
		if err != nil {
			c.errorf("%s: --user-service %s: %v", where, u, err)
			continue
		}
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == port }) {
			c.errorf("%s: --user-service %s: Service %s has no port %d", where, u, svc.Name, port)
		}
		if dnsRefresh && svc.Spec.ClusterIP != corev1.ClusterIPNone {
			c.errorf("%s: --user-service-dns-refresh with Service %s, which is not headless (clusterIP: None)", where, svc.Name)
		}
	}
}

// serviceOf resolves an https URL whose host is a Service name (name,
// name.namespace, or name.namespace.svc[.cluster.local]).
func (c *checker) serviceOf(namespace, raw string) (*corev1.Service, int32, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return nil, 0, err
	}
	if u.Scheme != "https" {
		return nil, 0, fmt.Errorf("scheme %q: the services speak TLS only", u.Scheme)
	}
	port, err := strconv.ParseInt(u.Port(), 10, 32)
	if err != nil {
		return nil, 0, fmt.Errorf("no port: %w", err)
	}
	labels := strings.Split(u.Hostname(), ".")
	name, ns := labels[0], namespace
	if len(labels) > 1 {
		ns = labels[1]
	}
	for _, s := range c.r.services {
		if s.Name == name && s.Namespace == ns {
			return s, int32(port), nil
		}
	}
	return nil, 0, fmt.Errorf("no Service %s/%s in the render", ns, name)
}

// gracePeriod: the pod's termination grace period covers the preStop
// sleep and the service's drain (--shutdown-grace), or the kubelet kills
// calls the drain would have let finish.
func (c *checker) gracePeriod(d *appsv1.Deployment, ctr *corev1.Container, where string) {
	grace := 10 * time.Second // --shutdown-grace's default
	if v, ok := argValue(ctr, "shutdown-grace"); ok {
		g, err := time.ParseDuration(v)
		if err != nil {
			c.errorf("%s: --shutdown-grace=%s: %v", where, v, err)
			return
		}
		grace = g
	}
	need := grace
	if ctr.Lifecycle != nil && ctr.Lifecycle.PreStop != nil && ctr.Lifecycle.PreStop.Sleep != nil {
		need += time.Duration(ctr.Lifecycle.PreStop.Sleep.Seconds) * time.Second
	}
	have := 30 * time.Second
	if p := d.Spec.Template.Spec.TerminationGracePeriodSeconds; p != nil {
		have = time.Duration(*p) * time.Second
	}
	if have <= need {
		c.errorf("%s: terminationGracePeriodSeconds %s does not exceed preStop + --shutdown-grace (%s)", where, have, need)
	}
}

// ports: probes and the Prometheus annotations point at declared ports;
// HTTP probes at the admin listener, never at the mTLS port.
func (c *checker) ports(d *appsv1.Deployment, ctr *corev1.Container, where string) {
	rpcPort := addrPort(c, ctr, "addr", where)
	adminPort := addrPort(c, ctr, "admin-addr", where)
	for _, p := range []int32{rpcPort, adminPort} {
		if p != 0 && findPort(ctr, intstr.FromInt32(p)) == nil {
			c.errorf("%s: listens on port %d, which it does not declare", where, p)
		}
	}
	probes := map[string]*corev1.Probe{"startup": ctr.StartupProbe, "readiness": ctr.ReadinessProbe, "liveness": ctr.LivenessProbe}
	for kind, p := range probes {
		if p == nil {
			c.errorf("%s: no %s probe", where, kind)
			continue
		}
		var target intstr.IntOrString
		switch {
		case p.HTTPGet != nil:
			target = p.HTTPGet.Port
			if !strings.HasPrefix(p.HTTPGet.Path, "/") {
				c.errorf("%s: %s probe path %q", where, kind, p.HTTPGet.Path)
			}
		case p.TCPSocket != nil:
			target = p.TCPSocket.Port
		case p.GRPC != nil:
			target = intstr.FromInt32(p.GRPC.Port)
		default:
			c.errorf("%s: %s probe has no handler this test knows", where, kind)
			continue
		}
		port := findPort(ctr, target)
		if port == nil {
			c.errorf("%s: %s probe port %s is not a port of the container", where, kind, target.String())
			continue
		}
		if port.ContainerPort == rpcPort && (p.HTTPGet != nil || p.GRPC != nil) {
			c.errorf("%s: %s probe speaks to the mTLS port %d, which refuses a client without a workload certificate", where, kind, rpcPort)
		}
	}
	ann := d.Spec.Template.Annotations
	if ann["prometheus.io/scrape"] == "true" {
		p, err := strconv.ParseInt(ann["prometheus.io/port"], 10, 32)
		switch {
		case err != nil:
			c.errorf("%s: prometheus.io/port %q: %v", where, ann["prometheus.io/port"], err)
		case findPort(ctr, intstr.FromInt32(int32(p))) == nil:
			c.errorf("%s: prometheus.io/port %d is not a port of the container", where, p)
		case int32(p) != adminPort:
			c.errorf("%s: prometheus.io/port %d is not the admin listener's (--admin-addr port %d), the one serving /metrics", where, p, adminPort)
		}
		if ann["prometheus.io/path"] != "/metrics" {
			c.errorf("%s: prometheus.io/path %q, not /metrics", where, ann["prometheus.io/path"])
		}
	}
}

// addrPort returns the port of a host:port flag, 0 when it is not set.
func addrPort(c *checker, ctr *corev1.Container, flag, where string) int32 {
	v, ok := argValue(ctr, flag)
	if !ok || v == "" {
		return 0
	}
	_, port, err := net.SplitHostPort(v)
	if err == nil {
		var p int64
		if p, err = strconv.ParseInt(port, 10, 32); err == nil {
			return int32(p)
		}
	}
	c.errorf("%s: --%s=%s: %v", where, flag, v, err)
	return 0
}

func findPort(ctr *corev1.Container, target intstr.IntOrString) *corev1.ContainerPort {
	for i, p := range ctr.Ports {
		if (target.Type == intstr.String && p.Name == target.StrVal) || (target.Type == intstr.Int && p.ContainerPort == target.IntVal) {
			return &ctr.Ports[i]
		}
	}
	return nil
}

// selected returns the Deployments of namespace whose pods sel selects.
func (c *checker) selected(namespace string, sel labels.Selector) []*appsv1.Deployment {
	var ds []*appsv1.Deployment
	for _, d := range c.r.deployments {
		if d.Namespace == namespace && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			ds = append(ds, d)
		}
	}
	return ds
}

// service: it selects the pods of a Deployment, and each of its target
// ports is a port of those pods.
func (c *checker) service(s *corev1.Service) {
	if len(s.Spec.Selector) == 0 {
		c.errorf("service %s: no selector", s.Name)
		return
	}
	ds := c.selected(s.Namespace, labels.SelectorFromSet(s.Spec.Selector))
	if len(ds) == 0 {
		c.errorf("service %s: selector %v selects no Deployment's pods", s.Name, s.Spec.Selector)
	}
	for _, sp := range s.Spec.Ports {
		target := sp.TargetPort
		if target.Type == intstr.Int && target.IntVal == 0 {
			target = intstr.FromInt32(sp.Port)
		}
		for _, d := range ds {
			if !slices.ContainsFunc(d.Spec.Template.Spec.Containers, func(ctr corev1.Container) bool { return findPort(&ctr, target) != nil }) {
				c.errorf("service %s: port %s targets %s, not a port of deployment %s", s.Name, sp.Name, target.String(), d.Name)
			}
		}
	}
}

// disruptionBudgets: each selects a Deployment and lets at least one of
// its pods be evicted (or a node drain would hang), and the order
// replicas have one.
func (c *checker) disruptionBudgets() {
	covered := map[string]bool{}
	for _, pdb := range c.r.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
		if err != nil || sel.Empty() {
			c.errorf("pdb %s: selector %v: %v", pdb.Name, pdb.Spec.Selector, err)
			continue
		}
		ds := c.selected(pdb.Namespace, sel)
		if len(ds) == 0 {
			c.errorf("pdb %s: selects no Deployment's pods", pdb.Name)
		}
		for _, d := range ds {
			covered[d.Name] = true
			replicas := int32(1)
			if d.Spec.Replicas != nil {
				replicas = *d.Spec.Replicas
			}
			switch {
			case pdb.Spec.MinAvailable != nil && pdb.Spec.MinAvailable.Type == intstr.Int && pdb.Spec.MinAvailable.IntVal >= replicas:
				c.errorf("pdb %s: minAvailable %d of %d replicas of %s: no pod could ever be evicted", pdb.Name, pdb.Spec.MinAvailable.IntVal, replicas, d.Name)
			case pdb.Spec.MaxUnavailable != nil && pdb.Spec.MaxUnavailable.Type == intstr.Int && pdb.Spec.MaxUnavailable.IntVal < 1:
				c.errorf("pdb %s: maxUnavailable %d: no pod could ever be evicted", pdb.Name, pdb.Spec.MaxUnavailable.IntVal)
			}
		}
	}
	for _, d := range c.r.deployments {
		if filepath.Base(d.Spec.Template.Spec.Containers[0].Command[0]) == "ordersvc" && !covered[d.Name] {
			c.errorf("deployment %s: the order replicas have no PodDisruptionBudget", d.Name)
		}
	}
}

// policyLayers are the sample services' policy layers, by binary.
var policyLayers = map[string]string{
	"usersvc":  filepath.Join("services", "user", "policy"),
	"ordersvc": filepath.Join("services", "order", "policy"),
}

// policyConfigMap: the policy ConfigMap that a service's --policy-dir reads
// holds the files of that service's policy layer (services/<name>/policy:
// its .rego files and data.json), unchanged, and has no name hash (an
// in-place update is what the services reload without a restart).
func (c *checker) policyConfigMap() {
	found := false
	for _, d := range c.r.deployments {
		for _, ctr := range d.Spec.Template.Spec.Containers {
			dir, ok := argValue(&ctr, "policy-dir")
			if !ok {
				continue
			}
			layer, ok := policyLayers[filepath.Base(ctr.Command[0])]
			if !ok {
				c.errorf("deployment %s: %s has a --policy-dir but no policy layer of ours", d.Name, ctr.Command[0])
				continue
			}
			want := map[string]string{}
			files, err := filepath.Glob(filepath.Join("..", layer, "*"))
			if err != nil || len(files) == 0 {
				c.errorf("%s: no files (%v)", layer, err)
				return
			}
			for _, f := range files {
				if !strings.HasSuffix(f, ".rego") && filepath.Base(f) != "data.json" {
					continue
				}
				data, err := os.ReadFile(f)
				if err != nil {
					c.errorf("%v", err)
					return
				}
				want[filepath.Base(f)] = string(data)
			}
			for _, m := range ctr.VolumeMounts {
				if strings.TrimRight(m.MountPath, "/") != strings.TrimRight(dir, "/") {
					continue
				}
				for _, v := range d.Spec.Template.Spec.Volumes {
					if v.Name != m.Name || v.ConfigMap == nil {
						continue
					}
					cm := c.r.configMaps[key(d.Namespace, v.ConfigMap.Name)]
					if cm == nil {
						continue // reported by volumes
					}
					found = true
					for name, content := range want {
						if cm.Data[name] != content {
							c.errorf("ConfigMap %s: %s differs from %s/%s (copy it again)", cm.Name, name, layer, name)
						}
					}
					for name := range cm.Data {
						if _, ok := want[name]; !ok {
							c.errorf("ConfigMap %s: %s is not in %s", cm.Name, name, layer)
						}
					}
				}
			}
		}
	}
	if !found {
		c.errorf("no container's --policy-dir is a mounted ConfigMap")
	}
}

// dockerfile: the image deploy/Dockerfile builds has the binaries where
// the containers' commands expect them, and runs as the pods' user.
func (c *checker) dockerfile() {
	data, err := os.ReadFile("Dockerfile")
	if err != nil {
		c.errorf("Dockerfile: %v", err)
		return
	}
	for _, d := range c.r.deployments {
		for _, ctr := range d.Spec.Template.Spec.Containers {
			if len(ctr.Command) == 0 {
				continue
			}
			bin := ctr.Command[0]
			if !bytes.Contains(data, []byte("./cmd/"+filepath.Base(bin))) || !bytes.Contains(data, []byte(filepath.Dir(bin)+"/")) {
				c.errorf("Dockerfile: does not put ./cmd/%s at %s", filepath.Base(bin), bin)
			}
			if sc := d.Spec.Template.Spec.SecurityContext; sc != nil && sc.RunAsUser != nil {
				user := fmt.Sprintf("\nUSER %d:%d\n", *sc.RunAsUser, *sc.RunAsUser)
				if !bytes.Contains(data, []byte(user)) {
					c.errorf("Dockerfile: no %q, the user deployment %s runs as", strings.TrimSpace(user), d.Name)
				}
			}
		}
	}
}

func mapKeys[V any](m map[string]V) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// networkPolicies: every Palisade pod is isolated both ways; between the
// Deployments, exactly the calls the services make are allowed (ordersvc
// to usersvc's --user-service port) and nothing else; each scraped pod
// lets something reach its metrics port; named ports exist.
func (c *checker) networkPolicies() {
	for _, np := range c.r.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil {
			c.errorf("networkpolicy %s: %v", np.Name, err)
			continue
		}
		ds := c.selected(np.Namespace, sel)
		if len(ds) == 0 {
			c.errorf("networkpolicy %s: selects no Deployment's pods", np.Name)
		}
		for _, rule := range np.Spec.Ingress {
			for _, p := range rule.Ports {
				if p.Port != nil && p.Port.Type == intstr.String {
					for _, d := range ds {
						if podPort(d, *p.Port) == nil {
							c.errorf("networkpolicy %s: ingress port %s is not a port of deployment %s", np.Name, p.Port.String(), d.Name)
						}
					}
				}
			}
		}
	}
	for _, d := range c.r.deployments {
		in, out := false, false
		for _, np := range c.policiesFor(d) {
			in = in || hasType(np, networkingv1.PolicyTypeIngress)
			out = out || hasType(np, networkingv1.PolicyTypeEgress)
		}
		if !in || !out {
			c.errorf("deployment %s: not isolated by network policies (ingress %v, egress %v)", d.Name, in, out)
		}
	}
	// The calls the services make to each other.
	calls := map[[2]string]int32{} // {from, to} deployment names → port
	for _, d := range c.r.deployments {
		for _, ctr := range d.Spec.Template.Spec.Containers {
			raw, ok := argValue(&ctr, "user-service")
			if !ok {
				continue
			}
			for _, u := range strings.Split(raw, ",") {
				svc, port, err := c.serviceOf(d.Namespace, u)
				if err != nil {
					continue // reported by upstreams
				}
				for _, sp := range svc.Spec.Ports {
					if sp.Port != port {
						continue
					}
					for _, to := range c.selected(svc.Namespace, labels.SelectorFromSet(svc.Spec.Selector)) {
						if p := podPort(to, sp.TargetPort); p != nil {
							calls[[2]string{d.Name, to.Name}] = p.ContainerPort
						}
					}
				}
			}
		}
	}
	for _, from := range c.r.deployments {
		for _, to := range c.r.deployments {
			for _, ctr := range to.Spec.Template.Spec.Containers {
				for _, p := range ctr.Ports {
					want, isCall := calls[[2]string{from.Name, to.Name}]
					allowed := c.allowed(from, to, p)
					switch {
					case isCall && want == p.ContainerPort && !allowed:
						c.errorf("network policies: %s cannot reach %s on port %d, which it calls", from.Name, to.Name, p.ContainerPort)
					case !(isCall && want == p.ContainerPort) && allowed:
						c.errorf("network policies: %s may reach %s on port %d (%s), which it never calls", from.Name, to.Name, p.ContainerPort, p.Name)
					}
				}
			}
		}
	}
	for _, d := range c.r.deployments {
		ann := d.Spec.Template.Annotations
		if ann["prometheus.io/scrape"] != "true" {
			continue
		}
		port, _ := strconv.ParseInt(ann["prometheus.io/port"], 10, 32)
		if !c.someIngressNames(d, int32(port)) {
			c.errorf("deployment %s: no network policy lets Prometheus reach its metrics port %d", d.Name, port)
		}
	}
}

func (c *checker) policiesFor(d *appsv1.Deployment) []*networkingv1.NetworkPolicy {
	var nps []*networkingv1.NetworkPolicy
	for _, np := range c.r.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err == nil && np.Namespace == d.Namespace && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
			nps = append(nps, np)
		}
	}
	return nps
}

func hasType(np *networkingv1.NetworkPolicy, t networkingv1.PolicyType) bool {
	if len(np.Spec.PolicyTypes) == 0 { // the API server's default
		return t == networkingv1.PolicyTypeIngress || len(np.Spec.Egress) > 0
	}
	return slices.Contains(np.Spec.PolicyTypes, t)
}

// podPort finds the container port of d that a Service or network policy
// port (a name or a number) means.
func podPort(d *appsv1.Deployment, target intstr.IntOrString) *corev1.ContainerPort {
	for i := range d.Spec.Template.Spec.Containers {
		if p := findPort(&d.Spec.Template.Spec.Containers[i], target); p != nil {
			return p
		}
	}
	return nil
}

// allowed reports whether a pod of from may open a TCP connection to port
// of a pod of to: from's egress and to's ingress must both allow it.
func (c *checker) allowed(from, to *appsv1.Deployment, port corev1.ContainerPort) bool {
	egress, ingress := false, false
	isolatedOut, isolatedIn := false, false
	for _, np := range c.policiesFor(from) {
		if !hasType(np, networkingv1.PolicyTypeEgress) {
			continue
		}
		isolatedOut = true
		for _, rule := range np.Spec.Egress {
			if c.peersMatch(np.Namespace, rule.To, to) && portsMatch(rule.Ports, port) {
				egress = true
			}
		}
	}
	for _, np := range c.policiesFor(to) {
		if !hasType(np, networkingv1.PolicyTypeIngress) {
			continue
		}
		isolatedIn = true
		for _, rule := range np.Spec.Ingress {
			if c.peersMatch(np.Namespace, rule.From, from) && portsMatch(rule.Ports, port) {
				ingress = true
			}
		}
	}
	return (egress || !isolatedOut) && (ingress || !isolatedIn)
}

// peersMatch reports whether the pods of d are among peers of a policy in
// namespace (no peers: everyone). An ipBlock never matches a pod here.
func (c *checker) peersMatch(namespace string, peers []networkingv1.NetworkPolicyPeer, d *appsv1.Deployment) bool {
	if len(peers) == 0 {
		return true
	}
	for _, p := range peers {
		if p.IPBlock != nil {
			continue
		}
		nsOK := d.Namespace == namespace
		if p.NamespaceSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
			nsOK = err == nil && sel.Matches(labels.Set(c.namespaceLabels(d.Namespace)))
		}
		podOK := true
		if p.PodSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.PodSelector)
			podOK = err == nil && sel.Matches(labels.Set(d.Spec.Template.Labels))
		}
		if nsOK && podOK {
			return true
		}
	}
	return false
}

func (c *checker) namespaceLabels(name string) map[string]string {
	l := map[string]string{"kubernetes.io/metadata.name": name}
	if ns := c.r.namespaces[name]; ns != nil {
		for k, v := range ns.Labels {
			l[k] = v
		}
	}
	return l
}

func portsMatch(ports []networkingv1.NetworkPolicyPort, port corev1.ContainerPort) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		proto := corev1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		if proto != corev1.ProtocolTCP {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.String && p.Port.StrVal == port.Name:
			return true
		case p.Port.Type == intstr.Int && p.Port.IntVal == port.ContainerPort:
			return true
		case p.Port.Type == intstr.Int && p.EndPort != nil && p.Port.IntVal <= port.ContainerPort && port.ContainerPort <= *p.EndPort:
			return true
		}
	}
	return false
}

// someIngressNames reports whether an ingress rule of d's policies names
// port (from some peer): the scrape port is open to someone.
func (c *checker) someIngressNames(d *appsv1.Deployment, port int32) bool {
	p := podPort(d, intstr.FromInt32(port))
	if p == nil {
		return false
	}
	for _, np := range c.policiesFor(d) {
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) > 0 && len(rule.Ports) > 0 && portsMatch(rule.Ports, *p) {
				return true
			}
		}
	}
	return false
}
