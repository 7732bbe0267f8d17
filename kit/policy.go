package kit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
)

// maxDataBytes bounds the --policy-data file.
const maxDataBytes = 4 << 20

// policy builds the policy engine: the framework's base with the service's
// layer (WithPolicy, or --policy-dir or --policy-bundle instead), its data
// overlaid with the service's trust domain and --policy-data. The first
// version must compile and pass its tests (and have some, unless
// --policy-allow-untested), or the service does not start; then, if the
// layer comes from --policy-dir or --policy-bundle, it is watched every
// --policy-reload-interval.
func (r *runner) policy(ctx context.Context) (*policy.Engine, error) {
	f := r.f
	opts := []policy.EngineOption{policy.WithLogger(r.log)}
	// The trust domain the base policy admits is the service's own (or
	// --trust-domain), unless --policy-data says otherwise.
	td := f.trustDomain
	if td == "" {
		td = r.svc.ID.TrustDomain()
	}
	opts = append(opts, policy.WithData(map[string]any{"palisade": map[string]any{"config": map[string]any{"trust_domain": td}}}))
	if f.policyData != "" {
		data, err := readData(f.policyData)
		if err != nil {
			return nil, err
		}
		opts = append(opts, policy.WithData(data))
	}
	if f.policyAllowUntested {
		opts = append(opts, policy.WithUntestedPolicies())
	}

	var load policy.Loader
	switch {
	case f.policyDir != "":
		load = policy.DirLoader(f.policyDir)
	case strings.HasPrefix(f.policyBundle, "https://"):
		return r.bundleServer(ctx, opts)
	case f.policyBundle != "":
		load = policy.BundleLoader(f.policyBundle)
	case r.cfg.layer != nil:
		layer := r.cfg.layer
		load = func(context.Context) (*policy.Bundle, error) {
			return policy.LoadFS(layer, "embedded "+r.cfg.name+" layer")
		}
	default:
		return nil, errors.New("no policy layer: the service embeds none (kit.WithPolicy), and neither --policy-dir nor --policy-bundle is given")
	}
	b, err := load(ctx)
	if err != nil {
		return nil, err
	}
	engine, err := policy.NewEngine(ctx, b, opts...)
	if errors.Is(err, policy.ErrUntested) {
		return nil, fmt.Errorf("%s: %w (add *_test.rego tests, or start with --policy-allow-untested)", b.Origin, err)
	}
	if err != nil {
		return nil, err
	}
	if f.policyDir != "" || f.policyBundle != "" {
		r.svc.Go("policy reload", func(ctx context.Context) error { return engine.Watch(ctx, load, f.policyInterval) })
	}
	return engine, nil
}

// bundleServer builds the policy engine from the bundle server at the
// https URL of --policy-bundle: OPA's downloader, over mTLS with this
// service's certificate, polled between --policy-reload-interval (at least
// a second) and twice that by a loop of the service.
func (r *runner) bundleServer(ctx context.Context, opts []policy.EngineOption) (*policy.Engine, error) {
	client, err := rpc.NewHTTPClient(r.svc.Source, r.svc.clientOptions...)
	if err != nil {
		return nil, err
	}
	r.httpClients = append(r.httpClients, client)
	delay := max(r.f.policyInterval, time.Second)
	bopts := []policy.BundleOption{policy.WithLogger(r.log), policy.WithPollingDelay(delay, 2*delay)}
	if r.f.bundlePersistDir != "" {
		bopts = append(bopts, policy.WithPersistDir(r.f.bundlePersistDir))
	}
	if r.f.bundleKey != "" {
		pem, err := os.ReadFile(r.f.bundleKey)
		if err != nil {
			return nil, fmt.Errorf("--policy-bundle-signing-key: %w", err)
		}
		bopts = append(bopts, policy.WithSigningKey(r.f.bundleKeyID, "", pem))
	}
	bundles, err := policy.NewBundleSource(r.f.policyBundle, client, bopts...)
	if err != nil {
		return nil, fmt.Errorf("--policy-bundle: %w", err)
	}
	engine, err := bundles.NewEngine(ctx, opts...)
	if errors.Is(err, policy.ErrUntested) {
		return nil, fmt.Errorf("%w (add *_test.rego tests, or start with --policy-allow-untested)", err)
	}
	if err != nil {
		return nil, err
	}
	r.svc.Go("policy bundle", bundles.Run)
	return engine, nil
}

// readData reads a JSON object from file.
func readData(file string) (map[string]any, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("--policy-data: %w", err)
	}
	defer f.Close()
	var data map[string]any
	dec := json.NewDecoder(&limitedReader{r: f, n: maxDataBytes})
	dec.UseNumber()
	if err := dec.Decode(&data); err != nil {
		return nil, fmt.Errorf("--policy-data %s: not a JSON object: %w", file, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("--policy-data %s: more than one JSON value", file)
	}
	if data == nil {
		return nil, fmt.Errorf("--policy-data %s: not a JSON object", file)
	}
	return data, nil
}

// limitedReader fails, rather than truncates, past n bytes.
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("larger than %d bytes", maxDataBytes)
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}
