package policy

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errTooLarge is the error (wrapped) of a bundle over maxPolicyBytes,
// packed or unpacked.
var errTooLarge = fmt.Errorf("policy: bundle larger than %d bytes", maxPolicyBytes)

// bundleTransport is the RoundTripper under OPA's downloader. It bounds
// what a bundle server can make the service wait for and hold in memory:
// an answer within fetchTimeout (plus the long-poll wait the request asks
// for), a body read within fetchTimeout, at most maxPolicyBytes, and at
// most maxPolicyBytes once gunzipped (OPA's reader only bounds each file,
// so a small archive of many files could unpack to gigabytes). It keeps the
// body of the last bundle it delivered, byte for byte, for persisting.
type bundleTransport struct {
	base http.RoundTripper

	// refetch drops the next request's If-None-Match, so that the server
	// sends the bundle again although it has not changed (to retry a
	// version the gate refused; OPA's Downloader.SetCache("") leaves the
	// header as it was).
	refetch atomic.Bool

	mu   sync.Mutex
	body []byte
}

func (t *bundleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	wait := preferWait(req.Header.Get("Prefer"))
	ctx, cancel := context.WithCancel(req.Context())
	req = req.Clone(ctx)
	// Snapshot bundles only: delta bundles are not supported (fromOPA).
	req.Header.Set("Prefer", strings.Replace(req.Header.Get("Prefer"), "modes=snapshot,delta", "modes=snapshot", 1))
	if t.refetch.Swap(false) {
		req.Header.Del("If-None-Match")
	}
	limit := fetchTimeout + wait
	timer := time.AfterFunc(limit, cancel)
	resp, err := t.base.RoundTrip(req)
	if !timer.Stop() {
		if resp != nil {
			resp.Body.Close()
		}
		cancel()
		return nil, fmt.Errorf("policy: bundle server did not answer within %s", limit)
	}
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body = cancelOnClose{resp.Body, cancel}
		return resp, nil
	}
	timer = time.AfterFunc(fetchTimeout, cancel)
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxPolicyBytes+1))
	resp.Body.Close()
	fired := !timer.Stop()
	cancel()
	switch {
	case fired:
		return nil, fmt.Errorf("policy: bundle not received within %s", fetchTimeout)
	case err != nil:
		return nil, fmt.Errorf("policy: bundle: %w", err)
	}
	if err := checkSize(body); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.body = body
	t.mu.Unlock()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// take returns the body of the bundle delivered since the last call, or nil.
func (t *bundleTransport) take() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.body
	t.body = nil
	return b
}

// checkSize refuses an archive over maxPolicyBytes, packed or unpacked.
// It unpacks into nothing: memory stays flat whatever the archive unpacks
// to.
func checkSize(archive []byte) error {
	if len(archive) > maxPolicyBytes {
		return errTooLarge
	}
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		return fmt.Errorf("policy: bundle: %w", err)
	}
	n, err := io.Copy(io.Discard, io.LimitReader(gz, maxPolicyBytes+1))
	if err != nil {
		return fmt.Errorf("policy: bundle: %w", err)
	}
	if n > maxPolicyBytes {
		return fmt.Errorf("%w unpacked", errTooLarge)
	}
	return nil
}

// preferWait returns the wait a "Prefer: ...;wait=<seconds>" header asks
// the server for (OPA's long polling), or 0.
func preferWait(prefer string) time.Duration {
	for _, field := range strings.Split(prefer, ";") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(field), "wait="); ok {
			if n, err := strconv.Atoi(v); err == nil && n > 0 {
				return time.Duration(n) * time.Second
			}
		}
	}
	return 0
}

// cancelOnClose releases a request's context when its body is closed.
type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error {
	err := c.ReadCloser.Close()
	c.cancel()
	return err
}
