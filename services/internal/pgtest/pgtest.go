// Package pgtest runs a throwaway PostgreSQL server for tests: initdb in a
// fresh temporary directory, postgres on a free 127.0.0.1 port with its
// unix socket in that directory and fsync off, and a fresh database for
// each test. Close stops the server and removes the directory.
//
// Starting a server takes a second or two (initdb); creating a database a
// few tens of milliseconds. So a test package shares one server, started on
// first use, and gives each test its own database:
//
//	var pg pgtest.Shared
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pg.StopAfter(m)) }
//
//	func TestX(t *testing.T) {
//		url := pg.NewDatabase(t) // postgres://postgres@127.0.0.1:port/test_1?sslmode=disable
//		…
//	}
//
// initdb refuses to run as root, so when the tests run as root the server
// runs as the "postgres" user, which the postgresql package creates. When
// initdb is missing, or there is no such user, the test fails with a message
// saying what to install (scripts/install-deps.sh does it).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// installHint ends every error about a missing PostgreSQL.
const installHint = "install PostgreSQL 15 or later: run scripts/install-deps.sh (apt-get install postgresql)"

// dirPrefix starts the name of every server's temporary directory.
const dirPrefix = "palisade-pgtest-"

// startTimeout bounds how long Start waits for the server to accept
// connections (initdb excluded): generous, for a loaded machine.
const startTimeout = time.Minute

// Server is a running throwaway PostgreSQL server. Its methods are safe for
// concurrent use.
type Server struct {
	dir    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed when the postgres process has exited
	logf   string        // the server's log file

	mu    sync.Mutex // guards admin
	admin *pgx.Conn  // to the "postgres" database, for CREATE and DROP DATABASE

	databases atomic.Int64
	closeOnce sync.Once
	closeErr  error
}

// Start runs initdb in a new temporary directory and starts postgres on a
// free port of 127.0.0.1. The caller closes the server.
func Start(ctx context.Context) (*Server, error) {
	bin, err := findBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := credential()
	if err != nil {
		return nil, err
	}
	removeStaleDirs()
	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	// The test process's pid, so that a later run can remove the directory
	// if this one dies without closing the server.
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	initdb := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions")
	initdb.Dir = dir
	initdb.Env = environ()
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	if out, err := initdb.CombinedOutput(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	// A free port can be taken between our probe and postgres's bind (by
	// another package's tests): try a few.
	var lastErr error
	for range 5 {
		s, err := start(ctx, bin, dir, cred)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if !errors.Is(err, errAddrInUse) {
			break
		}
	}
	_ = os.RemoveAll(dir)
	return nil, lastErr
}

var errAddrInUse = errors.New("address in use")

// start starts postgres on the cluster initdb made in dir, on a free port.
func start(ctx context.Context, bin, dir string, cred *syscall.Credential) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	logf := filepath.Join(dir, "postgres-"+strconv.Itoa(port)+".log")
	log, err := os.OpenFile(logf, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	defer log.Close() // the child has its own descriptor
	cmd := exec.Command(filepath.Join(bin, "postgres"),
		"-D", filepath.Join(dir, "data"),
		"-p", strconv.Itoa(port),
		"-h", "127.0.0.1",
		"-k", dir, // the unix socket: in the test's directory, not /var/run
		"-F", // fsync off: the data dies with the test
		"-c", "synchronous_commit=off",
		"-c", "full_page_writes=off",
		"-c", "shared_buffers=32MB",
		"-c", "max_connections=200",
	)
	cmd.Dir = dir
	cmd.Env = environ()
	cmd.Stdout, cmd.Stderr = log, log
	// If the test binary dies without closing the server, the server stops
	// too: SIGQUIT is postgres's immediate shutdown.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pgtest: start postgres: %w", err)
	}
	s := &Server{dir: dir, port: port, cmd: cmd, exited: make(chan struct{}), logf: logf}
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			s.admin = conn
			return s, nil
		}
		select {
		case <-s.exited:
			tail := s.logTail()
			if strings.Contains(tail, "Address already in use") {
				return nil, fmt.Errorf("pgtest: port %d: %w", port, errAddrInUse)
			}
			return nil, fmt.Errorf("pgtest: postgres exited at start:\n%s", tail)
		case <-ctx.Done():
			s.stop()
			return nil, fmt.Errorf("pgtest: postgres did not accept connections within %v: %w\n%s", startTimeout, err, s.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// URL returns the URL of database db on the server, as the superuser
// "postgres" (trust authentication, no TLS: loopback only).
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.port, db)
}

// NewDatabase creates an empty database and returns its URL. The database
// is dropped when t ends, after the cleanups registered after this call
// (those that close the test's connections to it).
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := "test_" + strconv.FormatInt(s.databases.Add(1), 10)
	if err := s.exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		// FORCE ends the connections still open, such as a store the test
		// left open on purpose.
		if err := s.exec("DROP DATABASE " + name + " WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	return s.URL(name)
}

func (s *Server) exec(sql string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		return errors.New("the server is closed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, err := s.admin.Exec(ctx, sql)
	return err
}

// Close stops the server at once (immediate shutdown: nothing is kept) and
// removes its directory.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		if s.admin != nil {
			_ = s.admin.Close(context.Background())
			s.admin = nil
		}
		s.mu.Unlock()
		s.stop()
		if err := os.RemoveAll(s.dir); err != nil {
			s.closeErr = fmt.Errorf("pgtest: close: %w", err)
		}
	})
	return s.closeErr
}

// stop ends the postgres process and waits for it.
func (s *Server) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logf)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Shared is one server for a test package, started by the first
// NewDatabase and stopped by the Run of StopAfter. The zero value is ready
// to use.
type Shared struct {
	once sync.Once
	srv  *Server
	err  error
}

// NewDatabase starts the server if it is not running yet, and returns the
// URL of a new empty database (see Server.NewDatabase). A server that cannot
// start fails the test, saying what to install.
func (p *Shared) NewDatabase(t testing.TB) string {
	t.Helper()
	srv, err := p.server()
	if err != nil {
		t.Fatal(err)
	}
	return srv.NewDatabase(t)
}

func (p *Shared) server() (*Server, error) {
	p.once.Do(func() { p.srv, p.err = Start(context.Background()) })
	return p.srv, p.err
}

// TestingM is what StopAfter wraps: a *testing.M.
type TestingM interface{ Run() int }

// StopAfter returns m with a Run that runs the tests and then stops the
// server, if one was started: pass it to goleak.VerifyTestMain (which
// checks for leaked goroutines after Run) or call its Run in TestMain.
func (p *Shared) StopAfter(m TestingM) TestingM { return stopAfter{m, p} }

type stopAfter struct {
	m TestingM
	p *Shared
}

func (s stopAfter) Run() int {
	code := s.m.Run()
	if s.p.srv != nil {
		if err := s.p.srv.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = max(code, 1)
		}
	}
	return code
}

// findBinDir returns the directory of initdb and postgres: initdb's, found
// on PATH or in /usr/lib/postgresql/<version>/bin (the newest).
func findBinDir() (string, error) {
	return findBinDirIn(exec.LookPath, "/usr/lib/postgresql/*/bin/initdb")
}

func findBinDirIn(lookPath func(string) (string, error), pattern string) (string, error) {
	candidates, _ := filepath.Glob(pattern)
	slices.SortFunc(candidates, func(a, b string) int { return versionOf(b) - versionOf(a) })
	if p, err := lookPath("initdb"); err == nil {
		candidates = append([]string{p}, candidates...)
	}
	for _, p := range candidates {
		// /usr/local/bin/initdb may be a link into the real directory,
		// where postgres is.
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue
		}
		dir := filepath.Dir(real)
		if _, err := os.Stat(filepath.Join(dir, "postgres")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("pgtest: initdb and postgres not found on PATH or in /usr/lib/postgresql/*/bin: " + installHint)
}

func versionOf(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// credential returns the user to run initdb and postgres as: nil (this
// process's) unless it runs as root, which both refuse; then "postgres".
func credential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and initdb refuses root: no postgres user to run it as (%w): %s", err, installHint)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres user: uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: postgres user: gid %q: %w", u.Gid, err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// environ is this process's environment without the PG* variables, which
// would change what initdb and postgres do.
func environ() []string {
	return slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "PG") })
}

// freePort returns a port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// removeStaleDirs removes the directories of servers whose test process
// died without closing them (killed by a timeout, say): their server got
// SIGQUIT when it died, but nobody removed the files.
func removeStaleDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		if alive(filepath.Join(dir, "owner.pid")) || alive(filepath.Join(dir, "data", "postmaster.pid")) {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "owner.pid")); err != nil {
			continue // being created, or not ours
		}
		_ = os.RemoveAll(dir)
	}
}

// alive reports whether the process whose pid is on the first line of file
// is running; false when the file is missing or holds no pid.
func alive(file string) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return false
	}
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}
