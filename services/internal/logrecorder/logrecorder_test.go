package logrecorder_test

import (
	"log/slog"
	"testing"

	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
)

func TestRecorderFlattensAndFilters(t *testing.T) {
	t.Parallel()
	rec := logrecorder.New(slog.LevelInfo)
	log := slog.New(rec).With("svc", "user").WithGroup("req").With("id", 7)
	log.Debug("dropped")
	log.Info("kept", "user_id", "alice", slog.Group("peer", "spiffe", "spiffe://x/y"))

	entries := rec.Entries()
	if len(entries) != 1 {
		t.Fatalf("%d entries, want 1: %v", len(entries), entries)
	}
	want := map[string]string{"svc": "user", "req.id": "7", "req.user_id": "alice", "req.peer.spiffe": "spiffe://x/y"}
	for k, v := range want {
		if got := entries[0].Attrs[k]; got != v {
			t.Errorf("%s = %q, want %q (all: %v)", k, got, v, entries[0].Attrs)
		}
	}
	if n := len(rec.Find("kept", map[string]string{"req.user_id": "alice"})); n != 1 {
		t.Errorf("Find matched %d", n)
	}
	if n := len(rec.Find("kept", map[string]string{"req.user_id": "bob"})); n != 0 {
		t.Errorf("Find matched %d with a wrong value", n)
	}
}
