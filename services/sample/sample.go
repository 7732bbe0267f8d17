// Package sample runs the sample user and order services in this process,
// over mTLS on loopback, as the demo runs them: a fresh development CA, the
// default OPA policies, real signing keys, and a population of customers who
// log in for real tokens. `palisade load` drives it, and the fault tests
// stop and restart its user service under load.
package sample

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/palisade-rpc/palisade/certs"
	"github.com/palisade-rpc/palisade/policy"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/security/password"
	"github.com/palisade-rpc/palisade/security/token"
	"github.com/palisade-rpc/palisade/services/order"
	"github.com/palisade-rpc/palisade/services/user"
)

// FastPasswords are the argon2id parameters of the sample's users: cheap, so
// that logging in a thousand users takes a moment. Never use them for real
// passwords.
var FastPasswords = password.Params{Memory: 64, Iterations: 1, Parallelism: 1, SaltLength: 16, KeyLength: 32}

// ClientID is the SPIFFE ID of the client certificate System.Client holds.
const ClientID = "spiffe://" + certs.DefaultTrustDomain + "/client/load"

// Options configure Start.
type Options struct {
	// Dir receives the two SQLite databases. Required.
	Dir string
	// Users is how many customers to create (ids "load-0000", …), each
	// with the role customer and the same password.
	Users int
	// Logger receives both services' logs (default: discarded).
	Logger *slog.Logger
	// UserServerOptions and OrderServerOptions are added to each server's
	// options, for example rpc.WithShutdownGrace.
	UserServerOptions, OrderServerOptions []rpc.ServerOption
}

// System is the two services running. Close stops them.
type System struct {
	// CA issued every certificate of the system.
	CA *certs.CA
	// Client is a client certificate (ClientID) trusted by both services.
	Client mtls.Source
	// UserURL and OrderURL are the services' base URLs.
	UserURL, OrderURL string
	// UserStore and OrderStore are the services' databases.
	UserStore  *user.Store
	OrderStore *order.Store
	// UserIDs are the customers created by Start.
	UserIDs []string
	// UserCache is the order service's cache of users.
	UserCache *order.UserCache

	opts     Options
	password string
	ctx      context.Context
	cancel   context.CancelFunc
	keys     *token.KeySet
	// userAuthz and orderAuthz decide with each service's policy layer.
	userAuthz, orderAuthz *policy.Engine
	userSrc               mtls.Source
	userAddr              string

	mu    sync.Mutex
	users *serving // nil while the user service is stopped
	order *serving
}

// serving is a server running in a goroutine until stop.
type serving struct {
	stop context.CancelFunc
	done chan error
}

func serve(ctx context.Context, srv *rpc.Server, ln net.Listener) *serving {
	ctx, stop := context.WithCancel(ctx)
	s := &serving{stop: stop, done: make(chan error, 1)}
	go func() { s.done <- srv.Serve(ctx, ln) }()
	return s
}

func (s *serving) shutdown() error {
	s.stop()
	return <-s.done
}

// Start creates the CA, the stores and the users, and serves both services
// on 127.0.0.1 on free ports until Close.
func Start(ctx context.Context, opts Options) (_ *System, err error) {
	if opts.Dir == "" {
		return nil, errors.New("sample: Options.Dir is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	ca, err := certs.NewCA(certs.DefaultTrustDomain, 24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	issue := func(path string, usage certs.Usage) (mtls.Source, error) {
		l := certs.Leaf{SPIFFEID: "spiffe://" + certs.DefaultTrustDomain + path, Usage: usage}
		if usage == certs.UsageWorkload {
			l.DNSNames, l.IPAddresses = []string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		issued, err := ca.Issue(l)
		if err != nil {
			return nil, fmt.Errorf("sample: %w", err)
		}
		cert := tls.Certificate{Certificate: [][]byte{issued.Cert.Raw}, PrivateKey: issued.Key, Leaf: issued.Cert}
		return mtls.NewStaticSource(cert, pool), nil
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	sys := &System{CA: ca, opts: opts, ctx: runCtx, cancel: cancel, password: rand.Text()}
	defer func() {
		if err != nil {
			_ = sys.Close()
		}
	}()
	if sys.Client, err = issue("/client/load", certs.UsageClient); err != nil {
		return nil, err
	}
	if sys.userSrc, err = issue("/svc/user", certs.UsageWorkload); err != nil {
		return nil, err
	}
	orderSrc, err := issue("/svc/order", certs.UsageWorkload)
	if err != nil {
		return nil, err
	}
	if sys.keys, err = token.NewKeySet(token.AlgEdDSA); err != nil {
		return nil, fmt.Errorf("sample: %w", err)
	}
	if sys.UserStore, err = user.OpenStore(ctx, filepath.Join(opts.Dir, "users.db")); err != nil {
		return nil, err
	}
	if sys.OrderStore, err = order.OpenStore(ctx, filepath.Join(opts.Dir, "orders.db")); err != nil {
		return nil, err
	}
	if err := sys.createUsers(ctx, opts.Users); err != nil {
		return nil, err
	}
	// One engine per service, each with its own policy layer; a restarted
	// user service keeps its engine, so the layer's tests run once.
	if sys.userAuthz, err = engine(runCtx, user.Policy(), "services/user/policy", opts.Logger); err != nil {
		return nil, err
	}
	if sys.orderAuthz, err = engine(runCtx, order.Policy(), "services/order/policy", opts.Logger); err != nil {
		return nil, err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("sample: listen: %w", err)
	}
	sys.userAddr = ln.Addr().String()
	sys.UserURL = "https://" + sys.userAddr
	if err := sys.serveUsers(ln); err != nil {
		return nil, err
	}

	orderSrv, err := order.NewServer(order.Config{
		Source: orderSrc, Store: sys.OrderStore, Authorizer: sys.orderAuthz, UserURL: sys.UserURL,
		Logger: opts.Logger, ServerOptions: opts.OrderServerOptions,
	})
	if err != nil {
		return nil, err
	}
	if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("sample: listen: %w", err)
	}
	sys.OrderURL = "https://" + ln.Addr().String()
	sys.UserCache = orderSrv.UserCache
	go runLoops(runCtx, opts.Logger, "order", orderSrv.Run)
	sys.mu.Lock()
	sys.order = serve(runCtx, orderSrv.Server, ln)
	sys.mu.Unlock()
	return sys, nil
}

// engine is the policy engine of a service, with the layer it embeds.
func engine(ctx context.Context, layer fs.FS, origin string, logger *slog.Logger) (*policy.Engine, error) {
	b, err := policy.LoadFS(layer, origin)
	if err != nil {
		return nil, err
	}
	return policy.NewEngine(ctx, b, policy.WithLogger(logger))
}

func (s *System) createUsers(ctx context.Context, n int) error {
	hash, err := password.Hash(s.password, FastPasswords)
	if err != nil {
		return fmt.Errorf("sample: %w", err)
	}
	for i := range n {
		id := fmt.Sprintf("load-%04d", i)
		u := &userv1.User{Id: id, DisplayName: "Load " + id, Email: id + "@example.com", Roles: []string{"customer"}, Active: true}
		if _, err := s.UserStore.Create(ctx, u); err != nil {
			return err
		}
		if err := s.UserStore.SetPasswordHash(ctx, id, hash); err != nil {
			return err
		}
		s.UserIDs = append(s.UserIDs, id)
	}
	return nil
}

// serveUsers builds a user server (a new one each time: a server serves
// once) with the system's signing keys, so tokens outlive a restart.
func (s *System) serveUsers(ln net.Listener) error {
	srv, err := user.NewServer(user.Config{
		Source: s.userSrc, Store: s.UserStore, Authorizer: s.userAuthz, Keys: s.keys,
		PasswordParams: &FastPasswords, Logger: s.opts.Logger, ServerOptions: s.opts.UserServerOptions,
	})
	if err != nil {
		_ = ln.Close()
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users = serve(s.ctx, srv.Server, ln)
	go runLoops(s.ctx, s.opts.Logger, "user", srv.Run)
	return nil
}

// runLoops runs a service's background loops until ctx is done, and logs
// a failure.
func runLoops(ctx context.Context, logger *slog.Logger, service string, run func(context.Context) error) {
	if err := run(ctx); err != nil {
		logger.Error("a background loop failed", "service", service, "error", err.Error())
	}
}

// StopUsers stops the user service as a SIGTERM would: it drains for its
// shutdown grace (rpc.WithShutdownGrace in UserServerOptions; a short one
// makes it a kill) and closes its port. The error is the drain's: a grace
// period that ran out is reported.
func (s *System) StopUsers() error {
	s.mu.Lock()
	u := s.users
	s.users = nil
	s.mu.Unlock()
	if u == nil {
		return errors.New("sample: the user service is not running")
	}
	return u.shutdown()
}

// StartUsers serves a new user service on the address of the stopped one,
// with the same keys and store.
func (s *System) StartUsers() error {
	s.mu.Lock()
	running := s.users != nil
	s.mu.Unlock()
	if running {
		return errors.New("sample: the user service is already running")
	}
	ln, err := net.Listen("tcp", s.userAddr)
	if err != nil {
		return fmt.Errorf("sample: listen again on %s: %w", s.userAddr, err)
	}
	return s.serveUsers(ln)
}

// Credential is a user and the access token they logged in for.
type Credential struct {
	UserID, Token string
}

// Login logs every user of UserIDs in at the user service (AuthService.Login
// with System.Client), concurrency at a time. The tokens are bound to
// System.Client's certificate.
func (s *System) Login(ctx context.Context, concurrency int) ([]Credential, error) {
	auth, err := rpc.NewClient(userv1connect.NewAuthServiceClient, s.UserURL, s.Client)
	if err != nil {
		return nil, err
	}
	creds := make([]Credential, len(s.UserIDs))
	errs := make([]error, len(s.UserIDs))
	sem := make(chan struct{}, max(concurrency, 1))
	var wg sync.WaitGroup
	for i, id := range s.UserIDs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			res, err := auth.Login(ctx, &userv1.LoginRequest{Username: id, Password: s.password})
			if err != nil {
				errs[i] = fmt.Errorf("sample: login %s: %w", id, err)
				return
			}
			creds[i] = Credential{UserID: id, Token: res.GetAccessToken()}
		})
	}
	wg.Wait()
	return creds, errors.Join(errs...)
}

// Close stops both services and closes the stores.
func (s *System) Close() error {
	s.mu.Lock()
	o, u := s.order, s.users
	s.order, s.users = nil, nil
	s.mu.Unlock()
	var errs []error
	if o != nil {
		errs = append(errs, o.shutdown())
	}
	if u != nil {
		errs = append(errs, u.shutdown())
	}
	s.cancel()
	if s.OrderStore != nil {
		errs = append(errs, s.OrderStore.Close())
	}
	if s.UserStore != nil {
		errs = append(errs, s.UserStore.Close())
	}
	return errors.Join(errs...)
}
