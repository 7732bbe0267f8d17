package order

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/token"
)

// refusingDirectory refuses the first `refusals` delegated tokens it sees
// as the user service refuses one bound to another certificate, and
// records the tokens it was sent.
type refusingDirectory struct {
	refusals  int
	sent      []string
	delegator *token.Delegator
}

func (d *refusingDirectory) GetUser(ctx context.Context, req *userv1.GetUserRequest) (*userv1.GetUserResponse, error) {
	tok, err := d.delegator.Token(ctx)
	if err != nil {
		return nil, err
	}
	d.sent = append(d.sent, tok)
	if len(d.sent) <= d.refusals {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("token bound to another client certificate"))
	}
	return &userv1.GetUserResponse{User: &userv1.User{Id: req.GetId(), Active: true}}, nil
}

func TestRedelegatingExchangesAgainWhenRefused(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		refusals  int
		token     string
		wantCode  connect.Code // 0: success
		wantCalls int
	}{
		{name: "accepted", refusals: 0, token: "alice-token", wantCalls: 1},
		{name: "refused once", refusals: 1, token: "alice-token", wantCalls: 2},
		{name: "refused twice", refusals: 2, token: "alice-token", wantCalls: 3},
		{name: "refused every time", refusals: 100, token: "alice-token", wantCode: connect.CodeUnauthenticated, wantCalls: 1 + maxRedelegations},
		// Without a user token nothing was delegated: the refusal is final.
		{name: "no user token", refusals: 100, wantCode: connect.CodeUnauthenticated, wantCalls: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			exchanges := 0
			d := token.NewDelegator(func(_ context.Context, subject string) (string, time.Time, error) {
				exchanges++
				return subject + "-delegated-" + string(rune('0'+exchanges)), time.Now().Add(5 * time.Minute), nil
			})
			dir := &refusingDirectory{refusals: tc.refusals, delegator: d}
			ctx := security.NewContext(context.Background(), &security.Principal{Token: security.NewSecret(tc.token)})
			_, err := redelegating{users: dir, delegator: d}.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
			if got := connect.CodeOf(err); (err == nil) != (tc.wantCode == 0) || (err != nil && got != tc.wantCode) {
				t.Fatalf("error %v, want code %v", err, tc.wantCode)
			}
			if len(dir.sent) != tc.wantCalls {
				t.Fatalf("%d calls %q, want %d", len(dir.sent), dir.sent, tc.wantCalls)
			}
			// Every retry sent a token exchanged anew, never the refused one.
			for i := 1; i < len(dir.sent); i++ {
				if tc.token != "" && dir.sent[i] == dir.sent[i-1] {
					t.Fatalf("retry %d sent the refused token again: %q", i, dir.sent)
				}
			}
		})
	}
}
