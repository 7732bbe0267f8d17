package loadgen_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/loadgen"
)

func TestRunCountsCallsAndCodes(t *testing.T) {
	t.Parallel()
	var inFlight, peak atomic.Int64
	seen := make([]atomic.Bool, 1000)
	res, err := loadgen.Run(context.Background(), loadgen.Options{Calls: 1000, Concurrency: 8}, func(_ context.Context, w, i int) error {
		if w < 0 || w >= 8 {
			t.Errorf("worker %d", w)
		}
		if seen[i].Swap(true) {
			t.Errorf("call %d made twice", i)
		}
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		switch {
		case i%100 == 7:
			return connect.NewError(connect.CodeUnavailable, errors.New("down"))
		case i%250 == 3:
			return errors.New("plain")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls != 1000 || res.Errors["unavailable"] != 10 || res.Errors["unknown"] != 4 || res.ErrorCount() != 14 {
		t.Fatalf("calls %d errors %v", res.Calls, res.Errors)
	}
	if !strings.Contains(res.FirstErrors["unavailable"], "down") {
		t.Fatalf("first errors %v", res.FirstErrors)
	}
	if p := peak.Load(); p > 8 {
		t.Fatalf("%d calls at once with concurrency 8", p)
	}
	for i := range seen {
		if !seen[i].Load() {
			t.Fatalf("call %d never made", i)
		}
	}
	if !strings.Contains(res.String(), "calls 1000  errors 14") {
		t.Fatalf("summary %q", res.String())
	}
}

// TestRunForADuration: the duration puts no deadline on the calls (a
// server would answer them before it), and calls in flight at the end
// finish and count.
func TestRunForADuration(t *testing.T) {
	t.Parallel()
	var started, finished atomic.Int64
	res, err := loadgen.Run(context.Background(), loadgen.Options{Duration: 50 * time.Millisecond, Concurrency: 4}, func(ctx context.Context, _, _ int) error {
		started.Add(1)
		if _, ok := ctx.Deadline(); ok {
			return connect.NewError(connect.CodeInternal, errors.New("the call has a deadline"))
		}
		time.Sleep(20 * time.Millisecond)
		finished.Add(1)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls == 0 || res.ErrorCount() != 0 || int64(res.Calls) != started.Load() || finished.Load() != started.Load() {
		t.Fatalf("calls %d (started %d, finished %d) errors %v", res.Calls, started.Load(), finished.Load(), res.Errors)
	}
}

// TestRunStopsWhenCtxIsDone: calls cut short by the caller's ctx are not
// counted as errors.
func TestRunStopsWhenCtxIsDone(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	res, err := loadgen.Run(ctx, loadgen.Options{Calls: 1 << 30, Concurrency: 4}, func(ctx context.Context, _, _ int) error {
		select {
		case <-ctx.Done():
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		case <-time.After(time.Millisecond):
			return nil
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Calls == 0 || res.ErrorCount() != 0 {
		t.Fatalf("calls %d errors %v", res.Calls, res.Errors)
	}
}

func TestRunRefusesUnboundedRuns(t *testing.T) {
	t.Parallel()
	for _, o := range []loadgen.Options{{Concurrency: 1}, {Calls: 10}, {Calls: -1, Concurrency: 1}} {
		if _, err := loadgen.Run(context.Background(), o, func(context.Context, int, int) error { return nil }); err == nil {
			t.Errorf("%+v accepted", o)
		}
	}
}
