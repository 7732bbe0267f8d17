package main

import (
	"fmt"
	"path/filepath"

	"github.com/palisade-rpc/palisade/certs"
)

func certsInit(args []string) error {
	fs := newFlagSet("palisade certs init", `Create a development PKI: a CA (ca.pem, ca-key.pem) and, signed by it,
the certificates of the demo's workloads and clients:

  usersvc.pem   spiffe://<trust-domain>/svc/user      (serves and calls; SANs localhost, 127.0.0.1, ::1)
  ordersvc.pem  spiffe://<trust-domain>/svc/order     (serves and calls; SANs localhost, 127.0.0.1, ::1)
  cli.pem       spiffe://<trust-domain>/client/cli    (client only)
  other.pem     spiffe://<trust-domain>/client/other  (client only)

each with its key in <name>-key.pem (mode 0600). Keys are ECDSA P-256.
Existing files are never overwritten without --force.`)
	dir := fs.String("dir", filepath.Join(".palisade", "certs"), "`directory` to write into (created with mode 0700)")
	td := fs.String("trust-domain", certs.DefaultTrustDomain, "SPIFFE trust `domain`")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	written, err := certs.InitDev(*dir, certs.DevOptions{TrustDomain: *td, Force: *force})
	if err != nil {
		return err
	}
	for _, path := range written {
		fmt.Println("wrote", path)
	}
	return nil
}
