package main

import (
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	"github.com/palisade-rpc/palisade/security/spiffeid"
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
	dir := fs.String("dir", filepath.Join(palisadeHome(), "certs"), "`directory` to write into (created with mode 0700)")
	td := fs.String("trust-domain", certs.DefaultTrustDomain, "SPIFFE trust `domain`")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	written, err := certs.InitDev(*dir, devOptions(*td, *force)...)
	if err != nil {
		return err
	}
	for _, path := range written {
		fmt.Println("wrote", path)
	}
	return nil
}

func certsIssue(args []string) error {
	fs := newFlagSet("palisade certs issue", `Issue a workload certificate with the development CA, for a new service:

  palisade certs issue --id spiffe://palisade.local/svc/inventory --dns localhost --ip 127.0.0.1 --out DIR

writes DIR/<name>.pem and DIR/<name>-key.pem (mode 0600), and DIR/ca.pem, the
CA certificate the service needs as its trust bundle (--ca). The certificate
is a leaf (CA:FALSE) with the serverAuth and clientAuth extended key usages:
the service serves with it and calls other services with it. Its SPIFFE ID
must be in the CA's trust domain. Existing files are never overwritten
without --force (a ca.pem equal to the CA's is left as it is).`)
	dir := fs.String("dir", filepath.Join(palisadeHome(), "certs"), "`directory` of the development PKI (the CA)")
	idFlag := fs.String("id", "", "SPIFFE `ID` of the workload, spiffe://<trust-domain>/<path> (required)")
	var dnsNames, ips listFlag
	fs.Var(&dnsNames, "dns", "DNS `name` the certificate is valid for (repeatable)")
	fs.Var(&ips, "ip", "IP `address` the certificate is valid for (repeatable)")
	out := fs.String("out", "", "`directory` to write into (required; created with mode 0700)")
	name := fs.String("name", "", "file `name` stem: <name>.pem, <name>-key.pem (default the last segment of the ID's path)")
	validity := fs.Duration("validity", 90*24*time.Hour, "`lifetime` of the certificate")
	force := fs.Bool("force", false, "overwrite existing files")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *idFlag == "" || *out == "" {
		return errors.New("--id and --out are required")
	}
	id, err := spiffeid.Parse(*idFlag)
	if err != nil {
		return fmt.Errorf("--id: %w", err)
	}
	if *name == "" {
		*name = path.Base(id.Path())
		if id.Path() == "" {
			return errors.New("--name is required for an ID without a path")
		}
	}
	leaf := certs.Leaf{SPIFFEID: id.String(), DNSNames: dnsNames, Usage: certs.UsageWorkload, Validity: *validity}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q is not an IP address", s)
		}
		leaf.IPAddresses = append(leaf.IPAddresses, ip)
	}
	var opts []certs.DevOption
	if *force {
		opts = append(opts, certs.WithOverwrite())
	}
	written, err := certs.IssueDev(*dir, *out, *name, leaf, opts...)
	if err != nil {
		return err
	}
	for _, p := range written {
		fmt.Println("wrote", p)
	}
	return nil
}

// listFlag is a flag that may be given several times.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func certsRotate(args []string) error {
	fs := newFlagSet("palisade certs rotate", `Re-issue one leaf of the development PKI with the dev CA: a new key and
serial number, the same SPIFFE ID, SANs and usage. The key and then the
certificate are replaced atomically; running services notice within
--cert-reload-interval and use the new certificate for new connections
(open ones keep working).`)
	dir := fs.String("dir", filepath.Join(palisadeHome(), "certs"), "`directory` of the development PKI")
	name := fs.String("name", "", "the leaf to re-issue: usersvc, ordersvc, cli or other")
	validity := fs.Duration("validity", 90*24*time.Hour, "`lifetime` of the new certificate")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *name == "" {
		return errors.New("--name is required (usersvc, ordersvc, cli or other)")
	}
	issued, err := certs.RotateDev(*dir, *name, *validity)
	if err != nil {
		return err
	}
	id, _ := spiffeid.FromCertificate(issued.Cert)
	fmt.Printf("rotated %s: %s serial %s, valid until %s\n", *name, id, issued.Cert.SerialNumber.Text(16),
		issued.Cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

func certsRevoke(args []string) error {
	fs := newFlagSet("palisade certs revoke", `Add a certificate's serial number to the dev CA's revocation list,
<dir>/crl.pem (created when missing; its number is incremented and its next
update set). Services started with --crl <dir>/crl.pem reload it within
--cert-reload-interval and refuse the certificate at the handshake.`)
	dir := fs.String("dir", filepath.Join(palisadeHome(), "certs"), "`directory` of the development PKI")
	certFile := fs.String("cert", "", "PEM `file` of the certificate to revoke (it must be issued by the dev CA)")
	serialHex := fs.String("serial", "", "serial number to revoke, in `hex` (colons allowed)")
	validity := fs.Duration("next-update", certs.DefaultCRLValidity, "`time` until the CRL's next update")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	serial, err := serialToRevoke(*dir, *certFile, *serialHex)
	if err != nil {
		return err
	}
	crl, err := certs.RevokeDev(*dir, []*big.Int{serial}, *validity)
	if err != nil {
		return err
	}
	fmt.Printf("revoked serial %s; %s number %s lists %d certificates, next update %s\n", serial.Text(16),
		filepath.Join(*dir, certs.DevCRLFile), crl.Number, len(crl.RevokedCertificateEntries), crl.NextUpdate.UTC().Format(time.RFC3339))
	return nil
}

// serialToRevoke reads the serial from exactly one of --cert and --serial.
func serialToRevoke(dir, certFile, serialHex string) (*big.Int, error) {
	switch {
	case (certFile == "") == (serialHex == ""):
		return nil, errors.New("give exactly one of --cert and --serial")
	case serialHex != "":
		s, ok := new(big.Int).SetString(strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(serialHex), "0x"), ":", ""), 16)
		if !ok || s.Sign() <= 0 {
			return nil, fmt.Errorf("--serial %q is not a positive hex number", serialHex)
		}
		return s, nil
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	parsed, err := pemfile.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("--cert %s: %w", certFile, err)
	}
	ca, err := certs.LoadDevCA(dir)
	if err != nil {
		return nil, err
	}
	if err := parsed[0].CheckSignatureFrom(ca.Cert); err != nil {
		return nil, fmt.Errorf("--cert %s was not issued by the CA in %s: %w", certFile, dir, err)
	}
	return parsed[0].SerialNumber, nil
}

// devOptions turns `palisade certs init`'s flags into InitDev's options.
func devOptions(trustDomain string, force bool) []certs.DevOption {
	opts := []certs.DevOption{certs.WithTrustDomain(trustDomain)}
	if force {
		opts = append(opts, certs.WithOverwrite())
	}
	return opts
}
