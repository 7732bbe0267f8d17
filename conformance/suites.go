package conformance

import (
	"bytes"
	"fmt"
	"regexp"
)

// tlsDirective matches the suite directives RequireClientCerts replaces: a
// top-level key (column 0) in either of the spellings protoyaml accepts.
var tlsDirective = regexp.MustCompile(`^(reliesOnTls|relies_on_tls|reliesOnTlsClientCerts|relies_on_tls_client_certs)\s*:(.*)$`)

// RequireClientCerts rewrites one of the suite's test-suite YAML files so
// that its cases run over TLS with client certificates, the only way
// Palisade serves: the runner expands a suite with client certificates only
// when the suite says it relies on them, and otherwise runs it over plaintext
// and over TLS without a client certificate — connections Palisade refuses at
// the handshake. The test cases are unchanged.
func RequireClientCerts(suite []byte) ([]byte, error) {
	var out bytes.Buffer
	out.WriteString("# Rewritten by Palisade's conformance-suites: run over TLS with client certificates only.\n")
	out.WriteString("reliesOnTls: true\nreliesOnTlsClientCerts: true\n")
	for i, line := range bytes.SplitAfter(suite, []byte("\n")) {
		m := tlsDirective.FindSubmatch(bytes.TrimRight(line, "\r\n"))
		if m == nil {
			out.Write(line)
			continue
		}
		if len(bytes.TrimSpace(m[2])) == 0 {
			return nil, fmt.Errorf("conformance: suite line %d: %s has no value on its line", i+1, m[1])
		}
	}
	return out.Bytes(), nil
}
