package kit

import (
	"context"
	"fmt"

	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/mtls/workloadapi"
)

// source builds the workload's certificate source: the Workload API with
// --spiffe-socket, the files otherwise (watched every
// --cert-reload-interval, with the --crl).
func (r *runner) source(ctx context.Context) error {
	f := r.f
	if f.spiffeSocket != "" {
		r.log.Info("waiting for this workload's SVID from the Workload API", "socket", f.spiffeSocket)
		src, err := workloadapi.NewSource(ctx, f.spiffeSocket, workloadapi.WithLogger(r.log))
		if err != nil {
			return fmt.Errorf("--spiffe-socket: %w", err)
		}
		// Closed after the drain: the server keeps completing handshakes
		// with the last SVID until then.
		r.closeSource = src.Close
		r.svc.Source, r.svc.ID = src, src.ID()
		return nil
	}
	opts := []mtls.FileSourceOption{mtls.WithLogger(r.log)}
	if f.crl != "" {
		opts = append(opts, mtls.WithCRL(f.crl))
	}
	src, err := mtls.NewFileSource(f.cert, f.key, f.ca, opts...)
	if err != nil {
		return fmt.Errorf("%w (run `palisade certs init` to create a development PKI, or see --cert, --key, --ca and --spiffe-socket)", err)
	}
	id, err := mtls.IdentityOf(src)
	if err != nil {
		return err
	}
	r.svc.Source, r.svc.ID = src, id
	if f.certReload > 0 {
		r.svc.Go("certificate reload", func(ctx context.Context) error { return src.Watch(ctx, f.certReload) })
	}
	return nil
}
