package rpc_test

import (
	"context"
	"crypto/tls"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/palisade-rpc/palisade/certs/certstest"
)

// TestTLSSurface is the handshake scan testssl.sh would do, from Go: it
// offers a Palisade server each protocol version from TLS 1.0 to 1.3 and,
// below 1.3, each cipher suite Go implements, secure or not, one per
// handshake, with a valid client certificate. Only TLS 1.3 may be
// negotiated, so no CBC, RC4, 3DES or static-RSA suite can ever be used; the
// refusals must come from the server (its protocol_version alert), not from
// the Go client declining to offer something.
func TestTLSSurface(t *testing.T) {
	t.Parallel()
	f := newFixture(t, allowAll(t))
	cert := certstest.TLSCertificate(f.client)
	aead13 := []uint16{tls.TLS_AES_128_GCM_SHA256, tls.TLS_AES_256_GCM_SHA384, tls.TLS_CHACHA20_POLY1305_SHA256}

	handshake := func(cfg *tls.Config) (tls.ConnectionState, error) {
		cfg.RootCAs, cfg.Certificates, cfg.ServerName = f.ca.Pool(), []tls.Certificate{cert}, "127.0.0.1"
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d := &tls.Dialer{NetDialer: &net.Dialer{}, Config: cfg}
		conn, err := d.DialContext(ctx, "tcp", f.srv.Addr)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState(), nil
	}

	offered, accepted := 0, 0
	suites := append(tls.CipherSuites(), tls.InsecureCipherSuites()...)
	for _, version := range []uint16{tls.VersionTLS10, tls.VersionTLS11, tls.VersionTLS12} {
		for _, s := range suites {
			if !slices.Contains(s.SupportedVersions, version) {
				continue
			}
			offered++
			name := tls.VersionName(version) + " " + s.Name
			cs, err := handshake(&tls.Config{MinVersion: version, MaxVersion: version, CipherSuites: []uint16{s.ID}})
			if err == nil {
				accepted++
				t.Errorf("%s: handshake succeeded (negotiated %s %s)", name, tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
				continue
			}
			if !strings.Contains(err.Error(), "remote error: tls: protocol version not supported") {
				t.Errorf("%s: %v; want the server's protocol_version alert", name, err)
			}
		}
	}

	// TLS 1.3, alone and as the best of all versions: Go offers every TLS
	// 1.3 suite (they are not configurable), all AEADs.
	for name, cfg := range map[string]*tls.Config{
		"TLS 1.3 only":           {MinVersion: tls.VersionTLS13},
		"TLS 1.0 to 1.3":         {MinVersion: tls.VersionTLS10},
		"TLS 1.2 suites and 1.3": {MinVersion: tls.VersionTLS12, CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA}},
	} {
		offered++
		cs, err := handshake(cfg)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		accepted++
		if cs.Version != tls.VersionTLS13 || !slices.Contains(aead13, cs.CipherSuite) {
			t.Errorf("%s: negotiated %s %s", name, tls.VersionName(cs.Version), tls.CipherSuiteName(cs.CipherSuite))
		}
	}
	t.Logf("%d handshakes offered, %d accepted (all TLS 1.3 with an AEAD suite)", offered, accepted)
	if offered < 40 {
		t.Fatalf("only %d handshakes offered; Go's suite lists shrank?", offered)
	}
}
