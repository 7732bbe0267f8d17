package main

import (
	"fmt"
	"path/filepath"

	"github.com/palisade-rpc/palisade/security/token"
)

func keysFlag(fs interface {
	String(name, value, usage string) *string
}) *string {
	return fs.String("keys", filepath.Join(palisadeHome(), "keys", "signing-keys.json"), "signing key `file` of the user service")
}

func keysRotate(args []string) error {
	fs := newFlagSet("palisade keys rotate", `Add a new token signing key and make it the one new tokens are signed
with. The previous key stays published in the JWKS (tokens it signed keep
verifying until they expire); keys beyond --keep previous ones are retired:
removed from the file and from the JWKS, so tokens they signed stop
verifying. A running usersvc picks the change up within --key-reload-interval
(2s); verifiers refetch the JWKS when they meet the new key id.`)
	path := keysFlag(fs)
	alg := fs.String("alg", token.DefaultSigningAlg, "`algorithm` of the new key: EdDSA or ES256")
	keep := fs.Int("keep", 1, "previous keys to keep for `verification`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ks, err := token.LoadKeySet(*path)
	if err != nil {
		return fmt.Errorf("%w (usersvc creates the file on its first start)", err)
	}
	kid, retired, err := ks.Rotate(*alg, *keep)
	if err != nil {
		return err
	}
	if err := ks.Save(*path); err != nil {
		return err
	}
	fmt.Printf("new signing key %s (%s)\n", kid, *alg)
	for _, id := range retired {
		fmt.Printf("retired %s\n", id)
	}
	return nil
}

func keysList(args []string) error {
	fs := newFlagSet("palisade keys list", `List the token signing keys, newest first; "active" marks the one that signs.`)
	path := keysFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ks, err := token.LoadKeySet(*path)
	if err != nil {
		return err
	}
	for _, k := range ks.Keys {
		mark := ""
		if k.ID == ks.Active {
			mark = "  active"
		}
		fmt.Printf("%s  %-5s  %s%s\n", k.ID, k.Alg, k.Created.Format("2006-01-02T15:04:05Z"), mark)
	}
	return nil
}
