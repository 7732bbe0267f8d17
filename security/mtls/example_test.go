package mtls_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// A workload's identity from PEM files: its certificate and key, and the
// CA bundle it trusts. (The files here are written by the dev CA; `palisade
// certs issue` writes the same three for a new workload.)
func ExampleNewFileSource() {
	dir, err := os.MkdirTemp("", "mtls-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	if _, err := certs.InitDev(dir); err != nil {
		panic(err)
	}

	// With mtls.WithCRL(file), a revocation list is read and watched too.
	src, err := mtls.NewFileSource(filepath.Join(dir, "usersvc.pem"), filepath.Join(dir, "usersvc-key.pem"), filepath.Join(dir, "ca.pem"))
	if err != nil {
		panic(err)
	}
	id, err := mtls.IdentityOf(src)
	if err != nil {
		panic(err)
	}
	fmt.Println(id)

	// Re-read the files every 2 s until ctx ends, so a rotated certificate
	// is used for new connections without a restart; material that does
	// not validate is refused and the last good one keeps serving.
	ctx, stop := context.WithCancel(context.Background())
	watched := make(chan error, 1)
	go func() { watched <- src.Watch(ctx, 2*time.Second) }()
	stop()
	<-watched
	// Output:
	// spiffe://palisade.local/svc/user
}
