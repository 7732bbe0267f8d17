//go:build !(linux || darwin || freebsd || netbsd || openbsd)

package fanout

import "time"

// processCPU reports the process's CPU time as unknown: getrusage is not
// available on this system, and the report leaves the column empty.
func processCPU() (time.Duration, bool) { return 0, false }
