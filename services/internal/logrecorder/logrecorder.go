// Package logrecorder provides a slog.Handler that keeps records in memory,
// for tests that assert what a service logged.
package logrecorder

import (
	"context"
	"log/slog"
	"slices"
	"sync"
)

// Entry is one recorded log record, with its attributes flattened: a key
// inside a group is "group.key", and values are rendered with
// slog.Value.String.
type Entry struct {
	Level   slog.Level
	Message string
	Attrs   map[string]string
}

// Recorder is a slog.Handler that records every record at or above its
// level. The zero value is not usable; call New. Handlers derived with
// WithAttrs and WithGroup record into the same Recorder.
type Recorder struct {
	shared *entries
	level  slog.Leveler
	attrs  []slog.Attr // already qualified with their groups
	group  string      // prefix for keys added later, "" or "a.b."
}

type entries struct {
	mu   sync.Mutex
	list []Entry
}

// New returns a Recorder keeping records at level and above.
func New(level slog.Leveler) *Recorder {
	return &Recorder{shared: &entries{}, level: level}
}

// Enabled implements slog.Handler.
func (r *Recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level.Level() }

// Handle implements slog.Handler.
func (r *Recorder) Handle(_ context.Context, rec slog.Record) error {
	e := Entry{Level: rec.Level, Message: rec.Message, Attrs: map[string]string{}}
	for _, a := range r.attrs {
		flatten(e.Attrs, "", a)
	}
	rec.Attrs(func(a slog.Attr) bool {
		flatten(e.Attrs, r.group, a)
		return true
	})
	r.shared.mu.Lock()
	r.shared.list = append(r.shared.list, e)
	r.shared.mu.Unlock()
	return nil
}

func flatten(into map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "."
		}
		for _, ga := range v.Group() {
			flatten(into, p, ga)
		}
		return
	}
	if a.Key == "" {
		return
	}
	into[prefix+a.Key] = v.String()
}

// WithAttrs implements slog.Handler.
func (r *Recorder) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := *r
	out.attrs = slices.Clone(r.attrs)
	for _, a := range attrs {
		if r.group != "" {
			a = slog.Attr{Key: r.group[:len(r.group)-1], Value: slog.GroupValue(a)}
		}
		out.attrs = append(out.attrs, a)
	}
	return &out
}

// WithGroup implements slog.Handler.
func (r *Recorder) WithGroup(name string) slog.Handler {
	if name == "" {
		return r
	}
	out := *r
	out.group = r.group + name + "."
	return &out
}

// Entries returns a copy of what was recorded so far, oldest first.
func (r *Recorder) Entries() []Entry {
	r.shared.mu.Lock()
	defer r.shared.mu.Unlock()
	return slices.Clone(r.shared.list)
}

// Find returns the entries with message msg whose attributes include every
// key/value pair of attrs.
func (r *Recorder) Find(msg string, attrs map[string]string) []Entry {
	var out []Entry
	for _, e := range r.Entries() {
		if e.Message != msg {
			continue
		}
		match := true
		for k, v := range attrs {
			if got, ok := e.Attrs[k]; !ok || got != v {
				match = false
				break
			}
		}
		if match {
			out = append(out, e)
		}
	}
	return out
}
