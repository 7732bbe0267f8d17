package fanout

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
)

// palisadeFeed is Palisade's side: the server process, and a client per
// subscriber group, each with its own HTTP client (so its own HTTP/2
// connection: the server allows 250 streams on one) and its own
// certificate.
type palisadeFeed struct {
	proc    *serverProcess
	fx      *fixture
	baseURL string
	http    []*http.Client
	clients []userv1connect.UserServiceClient
	// latest is the newest sequence committed.
	latest int64
}

// startPalisade starts a server process for n subscribers. Every
// subscriber is the order service's workload, the watcher the default
// policy names, so the server's cap on one principal's open streams
// (rpc.WithMaxStreamsPerPrincipal, 32 by default: room for 16 replicas)
// is raised to n plus the restarted ones, whose old streams may still be
// open when they come back — as an operator running n replicas of the
// order service would raise it. Each stream is still authenticated and
// authorized when it opens.
func startPalisade(ctx context.Context, o Options, fx *fixture, n int) (*palisadeFeed, error) {
	msg, err := fx.serverMessage()
	if err != nil {
		return nil, err
	}
	spec := serverSpec{Fixture: msg, MaxStreams: n + len(pick(make([]*subscriber, n), o.Restart)), CPUProfile: o.ServerCPUProfile}
	proc, err := startServerProcess(ctx, o.ServerCommand, spec, o.Progress)
	if err != nil {
		return nil, err
	}
	f := &palisadeFeed{proc: proc, fx: fx, baseURL: "https://" + proc.hello.Addr, latest: proc.hello.Latest}
	for g := range min(o.Connections, n) {
		hc, c, err := f.client(fx.watchers[g])
		if err != nil {
			_ = f.close()
			return nil, err
		}
		f.http = append(f.http, hc)
		f.clients = append(f.clients, c)
	}
	return f, nil
}

// client returns a client of the server presenting cert, with its own
// HTTP client.
func (f *palisadeFeed) client(cert tls.Certificate) (*http.Client, userv1connect.UserServiceClient, error) {
	src := mtls.NewStaticSource(cert, f.fx.pool)
	hc, err := rpc.NewHTTPClient(src, rpc.WithServerID(serverID))
	if err != nil {
		return nil, nil, fmt.Errorf("fanout: %w", err)
	}
	c, err := rpc.NewClient(userv1connect.NewUserServiceClient, f.baseURL, src, rpc.WithHTTPClient(hc), rpc.WithServerID(serverID))
	if err != nil {
		return nil, nil, fmt.Errorf("fanout: %w", err)
	}
	return hc, c, nil
}

func (f *palisadeFeed) base() int64 { return f.proc.hello.Latest }

// subscribe opens a WatchUserChanges stream after s's last sequence, over
// its group's connection, and returns once the stream has caught up (its
// first heartbeat).
func (f *palisadeFeed) subscribe(ctx context.Context, s *subscriber) error {
	return watch(ctx, f.clients[s.id%len(f.clients)], s)
}

// watch subscribes s through c.
func watch(ctx context.Context, c userv1connect.UserServiceClient, s *subscriber) error {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stream, err := c.WatchUserChanges(sctx, &userv1.WatchUserChangesRequest{AfterSequence: s.last.Load()})
	if err != nil {
		cancel()
		return err
	}
	live := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer stream.Close()
		caughtUp := false
		for stream.Receive() {
			at := now()
			switch ev := stream.Msg().GetEvent().(type) {
			case *userv1.WatchUserChangesResponse_Change:
				if err := s.receive(ev.Change.GetSequence(), at); err != nil {
					s.fail(err)
				}
			case *userv1.WatchUserChangesResponse_Heartbeat:
				if !caughtUp {
					caughtUp = true
					live <- nil
				}
			case *userv1.WatchUserChangesResponse_Reset_:
				s.fail(fmt.Errorf("unexpected reset (oldest sequence %d)", ev.Reset_.GetOldestSequence()))
			}
		}
		err := stream.Err()
		if err == nil {
			err = errors.New("the server ended the stream")
		}
		if !caughtUp {
			live <- err
			return
		}
		if sctx.Err() == nil {
			s.fail(err)
		}
	}()
	select {
	case err = <-live:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		<-done
		return err
	}
	s.stop = func() { cancel(); <-done }
	return nil
}

func (f *palisadeFeed) commit(ctx context.Context, _ int) (int64, int64, error) {
	r, err := f.proc.call(serverRequest{Op: "commit"})
	f.latest = max(f.latest, r.Seq)
	return r.Seq, r.Commit, err
}

func (f *palisadeFeed) sample(_ context.Context, gc bool) (sample, error) {
	r, err := f.proc.call(serverRequest{Op: "sample", GC: gc})
	return r.sample, err
}

// preflight checks the server's security with three streams: the order
// service's (a watcher) gets a heartbeat; another workload of the trust
// domain is denied; a client without a certificate is refused.
func (f *palisadeFeed) preflight(ctx context.Context) (string, error) {
	// The probes subscribe after the newest change: they get a heartbeat
	// first, if anything.
	probe := func(c userv1connect.UserServiceClient) error {
		return watch(ctx, c, newSubscriber(-1, f.latest, 0))
	}
	var seen []string
	// A watcher.
	s := newSubscriber(-1, f.latest, 0)
	if err := watch(ctx, f.clients[0], s); err != nil {
		return "", fmt.Errorf("fanout: preflight: the order service's stream: %w", err)
	}
	s.stop()
	seen = append(seen, "order service (a watcher) → streams")
	// Not a watcher.
	hc, stranger, err := f.client(f.fx.stranger)
	if err != nil {
		return "", err
	}
	err = probe(stranger)
	hc.CloseIdleConnections()
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		return "", fmt.Errorf("fanout: preflight: a workload that is not a watcher: got %v, want permission_denied", err)
	}
	seen = append(seen, "another workload → permission_denied")
	// No certificate.
	bare := &http.Client{Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: f.fx.pool, ServerName: "127.0.0.1", NextProtos: []string{"h2"}},
		ForceAttemptHTTP2: true,
	}}
	err = probe(userv1connect.NewUserServiceClient(bare, f.baseURL))
	bare.CloseIdleConnections()
	if err == nil {
		return "", errors.New("fanout: preflight: a client without a certificate was served")
	}
	seen = append(seen, "no client certificate → refused")
	return "palisade: " + strings.Join(seen, "; "), nil
}

func (f *palisadeFeed) close() error {
	for _, hc := range f.http {
		hc.CloseIdleConnections()
	}
	return f.proc.close()
}
