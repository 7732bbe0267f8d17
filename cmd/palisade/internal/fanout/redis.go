package fanout

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/palisade-rpc/palisade/cmd/palisade/internal/child"
	"github.com/palisade-rpc/palisade/internal/pemfile"
	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// redisChannel is the pub/sub channel the changes go through.
const redisChannel = "user-changes"

// refused is the outcome of a preflight probe that wants any failure.
const refused = "refused"

// The ACL users: each may run what its role needs and nothing else, on the
// one channel; the default user is off, so every connection logs in.
var redisUsers = []struct{ name, rules string }{
	{"publisher", "resetchannels &" + redisChannel + " -@all +hello +auth +ping +publish"},
	{"subscriber", "resetchannels &" + redisChannel + " -@all +hello +auth +ping +subscribe +unsubscribe"},
	{"monitor", "resetchannels -@all +hello +auth +ping +info"},
}

// redisFeed is the Redis side: a redis-server of its own; the publisher
// (presenting the user service's certificate, ACL user "publisher"); a
// client per subscriber group (the group's certificate, ACL user
// "subscriber"), on which every SUBSCRIBE takes a connection of its own;
// and a monitor that reads INFO.
type redisFeed struct {
	cmd     *exec.Cmd
	done    chan error
	output  *child.Tail
	dir     string
	addr    string
	fx      *fixture
	version string
	// pass holds the ACL users' passwords, random for the run.
	pass map[string]string
	pub  *redis.Client
	mon  *redis.Client
	subs []*redis.Client
}

// startRedis starts program (redis-server) on a free port of 127.0.0.1,
// TLS only with client certificates required, the ACL users, and nothing
// saved, in a new temporary directory; and makes groups subscriber clients.
func startRedis(ctx context.Context, program string, fx *fixture, groups int) (*redisFeed, error) {
	dir, err := os.MkdirTemp("", "palisade-fanout-redis-")
	if err != nil {
		return nil, fmt.Errorf("fanout: redis: %w", err)
	}
	r := &redisFeed{dir: dir, fx: fx, pass: map[string]string{}}
	if err := r.writeFiles(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	// The port is free when looked at, and may be taken before Redis binds
	// it: try another then.
	for attempt := 0; ; attempt++ {
		err = r.start(ctx, program)
		if err == nil || attempt == 2 || !strings.Contains(err.Error(), "in use") {
			break
		}
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	r.pub = redis.NewClient(r.options("publisher", fx.server, 1))
	for g := range groups {
		r.subs = append(r.subs, redis.NewClient(r.options("subscriber", fx.watchers[g], 1)))
	}
	info, err := r.mon.Info(ctx, "server").Result()
	if err == nil {
		r.version = infoField(info, "redis_version")
	}
	if err != nil {
		_ = r.close()
		return nil, fmt.Errorf("fanout: redis: %w", err)
	}
	return r, nil
}

// writeFiles writes the CA, Redis's certificate and key, and the
// configuration with the ACL users' (new) passwords into r.dir, private.
func (r *redisFeed) writeFiles() error {
	signer, ok := r.fx.redis.PrivateKey.(crypto.Signer)
	if !ok {
		return errors.New("fanout: redis: the server key is not a crypto.Signer")
	}
	key, err := pemfile.EncodeKey(signer)
	if err != nil {
		return fmt.Errorf("fanout: redis: %w", err)
	}
	files := map[string][]byte{
		"ca.crt":    pemfile.EncodeCertificates(r.fx.ca.Cert),
		"redis.crt": pemfile.EncodeCertificates(r.fx.redis.Leaf),
		"redis.key": key,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(r.dir, name), b, 0o600); err != nil {
			return fmt.Errorf("fanout: redis: %w", err)
		}
	}
	for _, u := range redisUsers {
		var b [16]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		r.pass[u.name] = hex.EncodeToString(b[:])
	}
	return nil
}

// config returns redis.conf for port.
func (r *redisFeed) config(port int) string {
	path := func(name string) string { return strconv.Quote(filepath.Join(r.dir, name)) }
	var b strings.Builder
	fmt.Fprintf(&b, "bind 127.0.0.1\nport 0\ntls-port %d\n", port)
	fmt.Fprintf(&b, "tls-cert-file %s\ntls-key-file %s\ntls-ca-cert-file %s\n", path("redis.crt"), path("redis.key"), path("ca.crt"))
	b.WriteString("tls-auth-clients yes\ntls-protocols \"TLSv1.3\"\n")
	fmt.Fprintf(&b, "dir %s\nsave \"\"\nappendonly no\ndaemonize no\nloglevel warning\nlogfile \"\"\n", path(""))
	b.WriteString("user default off\n")
	for _, u := range redisUsers {
		fmt.Fprintf(&b, "user %s on >%s %s\n", u.name, r.pass[u.name], u.rules)
	}
	return b.String()
}

// start runs program on a free port with r's configuration, and waits
// until it answers the monitor.
func (r *redisFeed) start(ctx context.Context, program string) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("fanout: redis: find a free port: %w", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	_ = ln.Close()
	conf := filepath.Join(r.dir, "redis.conf")
	if err := os.WriteFile(conf, []byte(r.config(port)), 0o600); err != nil {
		return fmt.Errorf("fanout: redis: %w", err)
	}
	r.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	r.output = &child.Tail{}
	r.cmd = exec.Command(program, conf)
	r.cmd.Stdout, r.cmd.Stderr = r.output, r.output
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("fanout: start %s: %w", program, err)
	}
	r.done = make(chan error, 1)
	go func() { r.done <- r.cmd.Wait() }()
	r.mon = redis.NewClient(r.options("monitor", r.fx.server, 1))
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := r.mon.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		select {
		case werr := <-r.done:
			_ = r.mon.Close()
			return fmt.Errorf("fanout: %s exited (%v): %s", program, werr, r.output.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = r.mon.Close()
			_ = r.stop()
			return fmt.Errorf("fanout: %s did not answer within 10s (%v): %s", program, err, r.output.String())
		}
	}
}

// options returns the options of a client logging in as user and
// presenting cert: TLS 1.3, Redis verified by the CA, RESP2, no client
// name or library identity (they need commands the users may not run), 4
// KiB buffers (the subscribers are many and receive small messages).
func (r *redisFeed) options(user string, cert tls.Certificate, pool int) *redis.Options {
	return &redis.Options{
		Addr:     r.addr,
		Username: user,
		Password: r.pass[user],
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			RootCAs:      r.fx.pool,
			ServerName:   "127.0.0.1",
			Certificates: []tls.Certificate{cert},
		},
		Protocol:                 2,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		DialTimeout:              10 * time.Second,
		PoolSize:                 pool,
		MaxRetries:               -1,
		ReadBufferSize:           4 << 10,
		WriteBufferSize:          4 << 10,
	}
}

func (r *redisFeed) base() int64 { return 0 }

// subscribe subscribes s on its group's client and returns once Redis has
// confirmed the subscription.
func (r *redisFeed) subscribe(ctx context.Context, s *subscriber) error {
	return r.watch(ctx, r.subs[s.id%len(r.subs)], s)
}

func (r *redisFeed) watch(ctx context.Context, c *redis.Client, s *subscriber) error {
	ps := c.Subscribe(ctx)
	err := ps.Subscribe(ctx, redisChannel)
	if err == nil {
		var msg any
		if msg, err = ps.Receive(ctx); err == nil {
			if sub, ok := msg.(*redis.Subscription); !ok || sub.Kind != "subscribe" {
				err = fmt.Errorf("got %v, want the subscription's confirmation", msg)
			}
		}
	}
	if err != nil {
		_ = ps.Close()
		return err
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := ps.ReceiveMessage(rctx)
			if err != nil {
				if rctx.Err() == nil {
					s.fail(err)
				}
				return
			}
			var c userv1.UserChange
			if err := proto.Unmarshal([]byte(m.Payload), &c); err != nil {
				s.fail(fmt.Errorf("undecodable change: %w", err))
				continue
			}
			if err := s.receive(c.GetSequence(), now()); err != nil {
				s.fail(err)
			}
		}
	}()
	s.stop = func() {
		cancel()
		_ = ps.Close() // closes the connection: ReceiveMessage returns
		<-done
	}
	return nil
}

// commit publishes change k: the UserChange Palisade's feed would send,
// marshaled; its time is when it is handed to PUBLISH.
func (r *redisFeed) commit(ctx context.Context, k int) (int64, int64, error) {
	seq := int64(k) + 1
	b, err := proto.Marshal(&userv1.UserChange{Sequence: seq, UserId: "alice", Kind: userv1.UserChangeKind_USER_CHANGE_KIND_UPDATED, Time: timestamppb.Now()})
	if err != nil {
		return 0, 0, fmt.Errorf("fanout: redis: %w", err)
	}
	at := now()
	if err := r.pub.Publish(ctx, redisChannel, b).Err(); err != nil {
		return 0, 0, fmt.Errorf("fanout: redis: publish: %w", err)
	}
	return seq, at, nil
}

// sample reads INFO: used_memory, used_memory_rss, CPU time, connected
// clients. gc is ignored: Redis frees as it goes.
func (r *redisFeed) sample(ctx context.Context, _ bool) (sample, error) {
	info, err := r.mon.Info(ctx, "memory", "cpu", "clients").Result()
	if err != nil {
		return sample{}, fmt.Errorf("fanout: redis: info: %w", err)
	}
	var s sample
	num := func(field string) float64 {
		v, perr := strconv.ParseFloat(infoField(info, field), 64)
		if perr != nil && err == nil {
			err = fmt.Errorf("fanout: redis: info: %s: %w", field, perr)
		}
		return v
	}
	s.Live = uint64(num("used_memory"))
	s.RSS = uint64(num("used_memory_rss"))
	s.CPU = time.Duration((num("used_cpu_sys") + num("used_cpu_user")) * float64(time.Second))
	s.CPUKnown = true
	s.Conns = int64(num("connected_clients"))
	return s, err
}

// infoField returns field's value in an INFO reply ("" if absent).
func infoField(info, field string) string {
	for line := range strings.Lines(info) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// preflight checks Redis's security: the subscriber subscribes with its
// certificate and password; without a certificate, with a wrong password,
// or as the default user, a client is refused; the subscriber may not
// publish, nor the publisher subscribe.
func (r *redisFeed) preflight(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var seen []string
	s := newSubscriber(-1, 0, 0)
	if err := r.watch(ctx, r.subs[0], s); err != nil {
		return "", fmt.Errorf("fanout: preflight: redis: the subscriber: %w", err)
	}
	s.stop()
	seen = append(seen, "subscriber (certificate, password) → subscribes")
	refusal := func(name string, opts *redis.Options, call func(*redis.Client) error, want string) error {
		c := redis.NewClient(opts)
		defer c.Close()
		err := call(c)
		switch {
		case err == nil:
			return fmt.Errorf("fanout: preflight: redis: %s: succeeded, want it refused", name)
		case want == refused:
			// The TLS handshake fails, which the client sees as an alert
			// or a reset connection, depending on timing.
		case !strings.Contains(err.Error(), want):
			return fmt.Errorf("fanout: preflight: redis: %s: got %v, want an error with %q", name, err, want)
		}
		seen = append(seen, name+" → "+want)
		return nil
	}
	ping := func(c *redis.Client) error { return c.Ping(ctx).Err() }
	noCert := r.options("subscriber", r.fx.watchers[0], 1)
	noCert.TLSConfig.Certificates = nil
	wrong := r.options("subscriber", r.fx.watchers[0], 1)
	wrong.Password = "not-" + wrong.Password
	anonymous := r.options("subscriber", r.fx.watchers[0], 1)
	anonymous.Username, anonymous.Password = "", ""
	subscribe := func(c *redis.Client) error {
		ps := c.Subscribe(ctx, redisChannel)
		defer ps.Close()
		_, err := ps.Receive(ctx)
		return err
	}
	publish := func(c *redis.Client) error { return c.Publish(ctx, redisChannel, "x").Err() }
	for _, err := range []error{
		refusal("no client certificate", noCert, ping, refused),
		refusal("wrong password", wrong, ping, "WRONGPASS"),
		refusal("default user", anonymous, ping, "NOAUTH"),
		refusal("subscriber publishes", r.options("subscriber", r.fx.watchers[0], 1), publish, "NOPERM"),
		refusal("publisher subscribes", r.options("publisher", r.fx.server, 1), subscribe, "NOPERM"),
	} {
		if err != nil {
			return "", err
		}
	}
	return "redis: " + strings.Join(seen, "; "), nil
}

// close closes the clients, stops redis-server (SIGTERM, then SIGKILL
// after 10s) and removes its directory.
func (r *redisFeed) close() error {
	var errs []error
	for _, c := range append([]*redis.Client{r.pub, r.mon}, r.subs...) {
		if c != nil {
			_ = c.Close()
		}
	}
	errs = append(errs, r.stop())
	errs = append(errs, os.RemoveAll(r.dir))
	return errors.Join(errs...)
}

func (r *redisFeed) stop() error {
	if r.cmd == nil || r.cmd.Process == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
		return nil // its exit status after SIGTERM says nothing
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
		return errors.New("fanout: redis-server did not exit within 10s of SIGTERM; killed")
	}
}
