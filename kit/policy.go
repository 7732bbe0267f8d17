package kit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"strings"

	"github.com/palisade-rpc/palisade/policy"
	"github.com/palisade-rpc/palisade/rpc"
)

// maxDataBytes bounds the --policy-data file.
const maxDataBytes = 4 << 20

// policy builds the policy engine: the service's layer (WithPolicy, or
// --policy-dir or --policy-bundle instead) with --policy-data merged in.
// The first version must compile and pass its tests (and have some, unless
// --policy-allow-untested), or the service does not start; then, if any
// of its sources can change, it is watched every --policy-reload-interval.
func (r *runner) policy(ctx context.Context) (*policy.Engine, error) {
	f := r.f
	var load policy.Loader
	switch {
	case f.policyDir != "":
		load = policy.DirLoader(f.policyDir)
	case f.policyBundle != "":
		client, err := rpc.NewHTTPClient(r.svc.Source, r.svc.clientOptions...)
		if err != nil {
			return nil, err
		}
		r.httpClients = append(r.httpClients, client)
		load = policy.BundleLoader(f.policyBundle, client)
	case r.cfg.layer != nil:
		layer := r.cfg.layer
		load = func(context.Context) (*policy.Bundle, error) { return loadLayer(layer) }
	default:
		load = func(context.Context) (*policy.Bundle, error) { return policy.DefaultBundle() }
	}
	if f.policyData != "" {
		load = withData(load, f.policyData)
	}
	b, err := load(ctx)
	if err != nil {
		return nil, err
	}
	opts := []policy.EngineOption{policy.WithLogger(r.log)}
	if f.policyAllowUntested {
		opts = append(opts, policy.WithUntestedPolicies())
	}
	engine, err := policy.NewEngine(ctx, b, opts...)
	if errors.Is(err, policy.ErrUntested) {
		return nil, fmt.Errorf("%s: %w (add *_test.rego tests, or start with --policy-allow-untested)", b.Origin, err)
	}
	if err != nil {
		return nil, err
	}
	if f.policyDir != "" || f.policyBundle != "" || f.policyData != "" {
		r.svc.Go("policy reload", func(ctx context.Context) error { return engine.Watch(ctx, load, f.policyInterval) })
	}
	return engine, nil
}

// withData returns a loader that merges the data document in file into
// what load returns, reading the file on every load.
func withData(load policy.Loader, file string) policy.Loader {
	return func(ctx context.Context) (*policy.Bundle, error) {
		b, err := load(ctx)
		if err != nil {
			return nil, err
		}
		data, err := readData(file)
		if err != nil {
			return nil, err
		}
		merged := *b
		merged.Data = mergeData(b.Data, data)
		merged.Origin = b.Origin + " + " + file
		return &merged, nil
	}
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

// mergeData returns base with over laid on it: objects are merged key by
// key, and any other value of over replaces base's at the same path.
// Neither is changed.
func mergeData(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range over {
		if vm, ok := v.(map[string]any); ok {
			if bm, ok := out[k].(map[string]any); ok {
				out[k] = mergeData(bm, vm)
				continue
			}
		}
		out[k] = v
	}
	return out
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

// loadLayer reads a policy layer from fsys: its .rego files, and data.json
// at the root.
func loadLayer(fsys fs.FS) (*policy.Bundle, error) {
	b := &policy.Bundle{Modules: map[string]string{}, Origin: "embedded"}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if !strings.HasSuffix(p, ".rego") && p != "data.json" {
			return nil
		}
		data, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		if p == "data.json" {
			return json.Unmarshal(data, &b.Data)
		}
		b.Modules[p] = string(data)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policy layer: %w", err)
	}
	return b, nil
}
