//go:build !linux

package fanout

import "time"

// now returns the wall clock in nanoseconds: the clock every process of the
// machine shares, so that a change's commit time, read in the server
// process, and its receive time, read in this one, can be subtracted. A
// step of the wall clock during a run would skew the latencies of that run.
func now() int64 { return time.Now().UnixNano() }
