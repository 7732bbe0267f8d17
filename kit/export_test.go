package kit

import "io"

// WithLogOutput sends the service's log (and --help) to w instead of
// stderr, for the tests to read.
func WithLogOutput(w io.Writer) Option {
	return optionFunc(func(c *config) { c.logOutput = w })
}
