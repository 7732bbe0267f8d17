package mtls

import (
	"crypto/tls"
	"errors"

	"github.com/palisade-rpc/palisade/security/spiffeid"
)

// ClientConfigForID returns a TLS configuration for one connection to the
// server whose SPIFFE ID is id: as ClientConfig's, but the server is
// checked by its identity instead of a host name — its chain verified
// against the trust bundle src holds at the handshake, its leaf a workload
// certificate for serverAuth, not revoked when src is a RevocationChecker,
// and carrying exactly id. The certificate need not name any host or
// address: SPIRE's X509-SVIDs carry only the URI SAN.
//
// This is SPIFFE's model, and go-spiffe's tlsconfig.AuthorizeID: the
// identity is the SPIFFE ID, and a server that presents a valid
// certificate for id is that workload wherever it answers. A host name
// checked as well would add nothing: only a CA of the bundle can issue a
// certificate for id, and it could name any host in it too. ServerName is
// left empty; set it to send SNI (it is not checked).
// A zero id is refused.
func ClientConfigForID(src Source, id spiffeid.ID, nextProtos ...string) (*tls.Config, error) {
	if id.IsZero() {
		return nil, errors.New("mtls: client config needs the server's SPIFFE ID")
	}
	return clientConfig(src, "", AuthorizeID(id), nextProtos), nil
}
