// Command conformance-suites writes the test-suite files `make conformance`
// runs, into a fresh directory, right before the run:
//
//	OUT/default/*.yaml  the suite's own test suites (its internal
//	                    testsuites/data at the pinned version, given as -src),
//	                    rewritten by conformance.RequireClientCerts to run
//	                    over TLS with client certificates
//	OUT/auth/auth.yaml  the token suite (conformance.AuthSuite), with tokens
//	                    minted now
//	OUT/auth/jwks.json  the keys that verify them, for conformance-server --jwks
//
// Usage:
//
//	conformance-suites -src DIR -out DIR [-ttl 15m]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/conformance"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-suites:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("conformance-suites", flag.ContinueOnError)
	src := fs.String("src", "", "`directory` of the conformance suite's test-suite YAML files")
	out := fs.String("out", "", "`directory` to write the suites into (created)")
	ttl := fs.Duration("ttl", 15*time.Minute, "lifetime of the token suite's valid tokens")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *src == "" || *out == "" || fs.NArg() > 0 {
		return errors.New("usage: conformance-suites -src DIR -out DIR [-ttl D]")
	}
	n, err := writeDefault(*src, filepath.Join(*out, "default"))
	if err != nil {
		return err
	}
	suite, jwks, err := conformance.AuthSuite(time.Now(), *ttl)
	if err != nil {
		return err
	}
	data, err := conformance.MarshalSuite(suite)
	if err != nil {
		return err
	}
	authDir := filepath.Join(*out, "auth")
	if err := os.MkdirAll(authDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", authDir, err)
	}
	if err := os.WriteFile(filepath.Join(authDir, "auth.yaml"), data, 0o600); err != nil {
		return fmt.Errorf("write token suite: %w", err)
	}
	if err := os.WriteFile(filepath.Join(authDir, "jwks.json"), jwks, 0o644); err != nil {
		return fmt.Errorf("write JWKS: %w", err)
	}
	fmt.Printf("conformance-suites: %d default suites rewritten for mTLS, token suite of %d cases, in %s\n", n, len(suite.GetTestCases()), *out)
	return nil
}

// writeDefault rewrites every *.yaml in src into dst and returns how many.
func writeDefault(src, dst string) (int, error) {
	files, err := filepath.Glob(filepath.Join(src, "*.yaml"))
	if err != nil {
		return 0, err
	}
	if len(files) == 0 {
		return 0, fmt.Errorf("no *.yaml suites in %s", src)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return 0, fmt.Errorf("create %s: %w", dst, err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return 0, fmt.Errorf("read suite: %w", err)
		}
		rewritten, err := conformance.RequireClientCerts(data)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", f, err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), rewritten, 0o644); err != nil {
			return 0, fmt.Errorf("write suite: %w", err)
		}
	}
	return len(files), nil
}
