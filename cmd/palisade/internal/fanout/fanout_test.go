package fanout

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// serverProcessEnv makes this test binary the server process of a run
// (what `palisade bench-fanout server-process` is to the command).
const serverProcessEnv = "PALISADE_FANOUT_TEST_SERVER_PROCESS"

func TestMain(m *testing.M) {
	if os.Getenv(serverProcessEnv) == "1" {
		if err := Serve(context.Background(), os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestRunTwoSubscribers runs the harness end to end at its smallest: both
// sides, 2 subscribers, one of them stopped and restarted while 3 changes
// are committed. It needs redis-server (`make deps` installs it). Palisade's
// restarted subscriber must get all 3 on resuming and no change twice;
// Redis pub/sub's must miss exactly those 3 and nothing else — the harness
// counts what each side loses, and these are the counts it must find.
func TestRunTwoSubscribers(t *testing.T) {
	t.Setenv(serverProcessEnv, "1")
	const changes, down = 12, 3
	o := Options{
		Sizes:         []int{2},
		Changes:       changes,
		Interval:      time.Millisecond,
		Connections:   2,
		Restart:       0.5,
		Down:          down,
		Settle:        time.Millisecond,
		Timeout:       60 * time.Second,
		ServerCommand: []string{os.Args[0]},
		Progress:      t.Output(),
	}
	rep, err := Run(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Rows) != 2 {
		t.Fatalf("%d rows, want 2 (palisade, redis)", len(rep.Rows))
	}
	for _, r := range rep.Rows {
		if r.Restarted != 1 {
			t.Errorf("%s: %d restarted, want 1", r.Side, r.Restarted)
		}
		if r.Duplicates != 0 || r.MissedLive != 0 {
			t.Errorf("%s: %d duplicates, %d missed while subscribed; want none", r.Side, r.Duplicates, r.MissedLive)
		}
		if r.Samples == 0 || r.P50 <= 0 || r.P99 < r.P50 || r.Max < r.P99 {
			t.Errorf("%s: latency over %d samples p50 %s p99 %s max %s: want positive and ordered", r.Side, r.Samples, r.P50, r.P99, r.Max)
		}
		if r.LivePerSub == 0 {
			t.Errorf("%s: no server memory measured per subscriber", r.Side)
		}
		var wantMissed, wantReplayed int64
		switch r.Side {
		case SidePalisade:
			wantReplayed = down
		case SideRedis:
			wantMissed = down
		}
		if r.Missed != wantMissed || r.Replayed != wantReplayed || r.Delivered != 2*changes-wantMissed {
			t.Errorf("%s: delivered %d, missed %d, replayed %d; want %d, %d, %d",
				r.Side, r.Delivered, r.Missed, r.Replayed, 2*changes-wantMissed, wantMissed, wantReplayed)
		}
		if int64(r.Samples) != r.Delivered-r.Replayed {
			t.Errorf("%s: %d latency samples, want %d (delivered less replayed)", r.Side, r.Samples, r.Delivered-r.Replayed)
		}
	}
	if len(rep.Preflight) != 2 {
		t.Errorf("preflight checked %q, want a line per side", rep.Preflight)
	}
}
