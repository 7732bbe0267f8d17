package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/status"
)

// errWrongAnswer is a call that succeeded with an answer for another user.
var errWrongAnswer = errors.New("the answer is for another user")

// errNoStranger is a probe that has no client to call from.
var errNoStranger = errors.New("no client to probe with")

// codeOf names the outcome of a call: "ok", the Connect name of the error's
// code (gRPC status codes share the numbering), or "wrong_answer".
func codeOf(err error) string {
	if err == nil {
		return "ok"
	}
	if errors.Is(err, errWrongAnswer) {
		return "wrong_answer"
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Code().String()
	}
	if s, ok := status.FromError(err); ok {
		return connect.Code(s.Code()).String()
	}
	return connect.CodeUnknown.String()
}

// probe is one call the preflight makes and the outcome it wants.
type probe struct {
	name string
	call func(ctx context.Context) error
	// want is the code wanted, or "refused" for any failure.
	want string
}

const refused = "refused"

// preflight proves that t's security is what its configuration claims
// (configSpec) before it is measured, whatever server t really talks to: a
// valid call succeeds; where the server verifies tokens, a forged token and
// a token presented with another certificate than the one it is bound to
// are unauthenticated; where it runs the policy, a request for another
// user is denied (allowed by an allow-all authorizer); where it requires a
// client certificate, a client without one is refused. It returns one line
// describing what it saw, or an error naming the first probe that did not
// get its outcome.
func preflight(ctx context.Context, fx *fixture, t *target, protocol string) (string, error) {
	spec := t.spec()
	call := t.calls[protocol][0]
	auth := func(u int) string {
		if spec.tokens {
			return fx.auth[u]
		}
		return ""
	}
	other := "someone-else"
	if len(fx.ids) > 1 {
		other = fx.ids[1]
	}
	stranger := func(kind string) getUserFunc {
		if call := t.strangers[kind][protocol]; call != nil {
			return call
		}
		// A missing stranger fails the preflight rather than passing a
		// probe that wants a failure.
		return func(context.Context, string, string) (string, error) {
			return "", fmt.Errorf("%w: %s", errNoStranger, kind)
		}
	}
	probes := []probe{{name: "own id", want: "ok", call: func(ctx context.Context) error {
		got, err := call(ctx, fx.ids[0], auth(0))
		if err == nil && got != fx.ids[0] {
			err = errWrongAnswer
		}
		return err
	}}}
	if spec.verifies {
		probes = append(probes,
			probe{name: "forged token", want: connect.CodeUnauthenticated.String(), call: func(ctx context.Context) error {
				_, err := call(ctx, fx.ids[0], forge(fx.auth[0]))
				return err
			}},
			probe{name: "token from another certificate", want: connect.CodeUnauthenticated.String(), call: func(ctx context.Context) error {
				_, err := stranger(strangerOtherCert)(ctx, fx.ids[0], fx.auth[0])
				return err
			}})
	}
	switch spec.authz {
	case authzOPA:
		probes = append(probes, probe{name: "another user's id", want: connect.CodePermissionDenied.String(), call: func(ctx context.Context) error {
			_, err := call(ctx, other, fx.auth[0])
			return err
		}})
	case authzAllowAll:
		probes = append(probes, probe{name: "another user's id (allow-all)", want: "ok", call: func(ctx context.Context) error {
			_, err := call(ctx, other, fx.auth[0])
			return err
		}})
	}
	if spec.tls {
		want := refused
		if !spec.clientCert {
			want = "ok"
		}
		probes = append(probes, probe{name: "no client certificate", want: want, call: func(ctx context.Context) error {
			_, err := stranger(strangerNoCert)(ctx, fx.ids[0], auth(0))
			return err
		}})
	}

	seen := make([]string, 0, len(probes))
	for _, p := range probes {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := p.call(pctx)
		cancel()
		if errors.Is(err, errNoStranger) {
			return "", fmt.Errorf("bench: preflight %s: %s: %w", pair{t.config, protocol, t.client}, p.name, err)
		}
		got := codeOf(err)
		if (p.want == refused && err == nil) || (p.want != refused && got != p.want) {
			return "", fmt.Errorf("bench: preflight %s: %s: got %s, want %s (%v)", pair{t.config, protocol, t.client}, p.name, got, p.want, err)
		}
		if p.want == refused {
			got = refused + " (" + got + ")"
		}
		seen = append(seen, p.name+" → "+got)
	}
	return pair{t.config, protocol, t.client}.String() + ": " + strings.Join(seen, "; "), nil
}

// forge returns the Authorization value auth with its token's signature
// altered in the middle: a token whose signature does not verify.
func forge(auth string) string {
	i := strings.LastIndexByte(auth, '.') + (len(auth)-strings.LastIndexByte(auth, '.'))/2
	c := byte('A')
	if auth[i] == 'A' {
		c = 'B'
	}
	return auth[:i] + string(c) + auth[i+1:]
}
