package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
	"github.com/palisade-rpc/palisade/rpc"
	"github.com/palisade-rpc/palisade/security/mtls"
	"github.com/palisade-rpc/palisade/services/user"
)

func tokenCmd(args []string) error {
	fs := newFlagSet("palisade token", `Print an access token for a user on stdout, for curl:

  TOKEN=$(bin/palisade token --user alice)
  curl ... -H "Authorization: Bearer $TOKEN" ...

It logs in at the user service (AuthService.Login) over mTLS with the client
certificate --cert (default the demo's cli.pem) and the user's password: for
the demo users alice, bob and admin, the random password usersvc wrote to
<home>/demo-passwords.json on its first start; for any other user, read
from stdin with --password-stdin. The user service must be running (make up).

It follows the environment make up does: --home defaults to $PALISADE_HOME
(else .palisade) and --addr to https://$USER_ADDR (else 127.0.0.1:8443).

The token is bound to the client certificate that logged in (RFC 8705): it is
refused when presented with any other certificate.`)
	home := fs.String("home", palisadeHome(), "demo state `directory`: the defaults of --ca, --cert, --key and --demo-passwords are under it")
	username := fs.String("user", "", "`username` to log in as (required)")
	ttl := fs.Duration("ttl", 0, "ask for a shorter `lifetime` than the issuer's default (15m)")
	addr := fs.String("addr", userServiceURL(), "base `URL` of the user service")
	ca := fs.String("ca", "", "CA bundle `file` (default <home>/certs/ca.pem)")
	cert := fs.String("cert", "", "client certificate `file` the token is bound to (default <home>/certs/cli.pem)")
	key := fs.String("key", "", "client key `file` (default <home>/certs/cli-key.pem)")
	passwords := fs.String("demo-passwords", "", "`file` of the demo users' passwords (default <home>/demo-passwords.json)")
	stdin := fs.Bool("password-stdin", false, "read the password from the first line of stdin")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *username == "" {
		return errors.New("--user is required")
	}
	for flagValue, def := range map[*string]string{
		ca: filepath.Join(*home, "certs", "ca.pem"), cert: filepath.Join(*home, "certs", "cli.pem"),
		key: filepath.Join(*home, "certs", "cli-key.pem"), passwords: filepath.Join(*home, "demo-passwords.json"),
	} {
		if *flagValue == "" {
			*flagValue = def
		}
	}
	var pw string
	if *stdin {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("read password from stdin: %w", err)
		}
		pw = strings.TrimRight(line, "\r\n")
	} else {
		demo, err := user.ReadDemoPasswords(*passwords)
		if err != nil {
			return fmt.Errorf("%w (start usersvc once, or use --password-stdin)", err)
		}
		var ok bool
		if pw, ok = demo[*username]; !ok {
			return fmt.Errorf("%s is not a demo user; use --password-stdin", *username)
		}
	}
	src, err := mtls.NewFileSource(*cert, *key, *ca)
	if err != nil {
		return err
	}
	client, err := rpc.NewClient(userv1connect.NewAuthServiceClient, *addr, src)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := client.Login(ctx, &userv1.LoginRequest{Username: *username, Password: pw, TtlSeconds: int64(ttl.Seconds())})
	if err != nil {
		return fmt.Errorf("login: %w", err)
	}
	fmt.Println(res.GetAccessToken())
	return nil
}

// userServiceURL is the user service's base URL as make up starts it:
// https://$USER_ADDR, or https://127.0.0.1:8443.
func userServiceURL() string {
	if a := os.Getenv("USER_ADDR"); a != "" {
		return "https://" + a
	}
	return "https://127.0.0.1:8443"
}
