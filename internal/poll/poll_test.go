package poll

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestEveryRunsUntilCanceled(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := Every(ctx, time.Millisecond, func() {
		if calls++; calls == 3 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) || calls != 3 {
		t.Fatalf("Every returned %v after %d calls, want context.Canceled after 3", err, calls)
	}
}
