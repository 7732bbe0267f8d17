//go:build linux

package fanout

import "golang.org/x/sys/unix"

// now returns the time of CLOCK_MONOTONIC in nanoseconds: one clock for
// every process of the machine, so that a change's commit time, read in the
// server process, and its receive time, read in this one, can be
// subtracted. (Go's monotonic readings count from each process's start.)
func now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("fanout: clock_gettime(CLOCK_MONOTONIC): " + err.Error()) // cannot fail on Linux
	}
	return ts.Nano()
}
