package user_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/security"
	"github.com/palisade-rpc/palisade/security/spiffeid"
	"github.com/palisade-rpc/palisade/services/internal/logrecorder"
	"github.com/palisade-rpc/palisade/services/user"
)

const orderID = "spiffe://palisade.local/svc/order"

// newService returns a service over a seeded store, its log recorder, and a
// context carrying the principal of the order workload.
func newService(t *testing.T) (*user.Service, *user.Store, *logrecorder.Recorder, context.Context) {
	t.Helper()
	store, _ := openStore(t)
	if _, err := store.SeedDemoUsers(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec := logrecorder.New(slog.LevelDebug)
	id, err := spiffeid.Parse(orderID)
	if err != nil {
		t.Fatal(err)
	}
	ctx := security.NewContext(context.Background(), &security.Principal{Workload: security.Workload{ID: id}})
	return user.NewService(store, slog.New(rec)), store, rec, ctx
}

func wantCode(t *testing.T, err error, code connect.Code, msgPart string) {
	t.Helper()
	if code == 0 {
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return
	}
	if connect.CodeOf(err) != code {
		t.Fatalf("error %v, want code %v", err, code)
	}
	if !strings.Contains(err.Error(), msgPart) {
		t.Fatalf("error %q does not contain %q", err, msgPart)
	}
}

func TestGetUserLogsTheCaller(t *testing.T) {
	t.Parallel()
	svc, _, rec, ctx := newService(t)
	res, err := svc.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if res.GetUser().GetId() != "alice" || res.GetUser().GetEmail() != "alice@example.com" {
		t.Fatalf("got %v", res.GetUser())
	}
	reads := rec.Find("user read", map[string]string{"user_id": "alice", "caller": orderID})
	if len(reads) != 1 || reads[0].Level != slog.LevelInfo {
		t.Fatalf("user read records %v; all: %v", reads, rec.Entries())
	}
}

func TestGetUserErrors(t *testing.T) {
	t.Parallel()
	svc, _, rec, ctx := newService(t)
	cases := map[string]struct {
		id   string
		code connect.Code
		msg  string
	}{
		"empty id":    {id: "", code: connect.CodeInvalidArgument, msg: "id: required"},
		"unknown id":  {id: "zed", code: connect.CodeNotFound, msg: `user "zed" not found`},
		"odd id":      {id: "Robert'); DROP TABLE users;--", code: connect.CodeNotFound, msg: "not found"},
		"case counts": {id: "ALICE", code: connect.CodeNotFound, msg: `user "ALICE" not found`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := svc.GetUser(ctx, &userv1.GetUserRequest{Id: c.id})
			wantCode(t, err, c.code, c.msg)
		})
	}
	t.Cleanup(func() {
		if n := len(rec.Find("user read", nil)); n != 0 {
			t.Errorf("%d failed reads were logged as reads", n)
		}
	})
}

func TestListUsers(t *testing.T) {
	t.Parallel()
	svc, _, _, ctx := newService(t)
	cases := map[string]struct {
		req       *userv1.ListUsersRequest
		code      connect.Code
		msg       string
		wantUsers int
		wantNext  bool
	}{
		"default page":       {req: &userv1.ListUsersRequest{}, wantUsers: 3},
		"small page":         {req: &userv1.ListUsersRequest{PageSize: 2}, wantUsers: 2, wantNext: true},
		"huge page clamps":   {req: &userv1.ListUsersRequest{PageSize: 1 << 30}, wantUsers: 3},
		"negative page size": {req: &userv1.ListUsersRequest{PageSize: -1}, code: connect.CodeInvalidArgument, msg: "page_size"},
		"garbage token":      {req: &userv1.ListUsersRequest{PageToken: "%%%"}, code: connect.CodeInvalidArgument, msg: "page_token"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			res, err := svc.ListUsers(ctx, c.req)
			wantCode(t, err, c.code, c.msg)
			if err != nil {
				return
			}
			if len(res.GetUsers()) != c.wantUsers || (res.GetNextPageToken() != "") != c.wantNext {
				t.Fatalf("%d users, next %q", len(res.GetUsers()), res.GetNextPageToken())
			}
		})
	}
	t.Run("second page", func(t *testing.T) {
		t.Parallel()
		first, err := svc.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: 2})
		if err != nil {
			t.Fatal(err)
		}
		second, err := svc.ListUsers(ctx, &userv1.ListUsersRequest{PageSize: 2, PageToken: first.GetNextPageToken()})
		if err != nil {
			t.Fatal(err)
		}
		if len(second.GetUsers()) != 1 || second.GetUsers()[0].GetId() != "bob" || second.GetNextPageToken() != "" {
			t.Fatalf("second page %v", second)
		}
	})
}

func TestCreateUser(t *testing.T) {
	t.Parallel()
	svc, store, _, ctx := newService(t)
	valid := func(id string) *userv1.User {
		return &userv1.User{Id: id, DisplayName: "Carol", Email: id + "@example.com", Roles: []string{"customer"}, Active: true}
	}
	with := func(u *userv1.User, f func(*userv1.User)) *userv1.User { f(u); return u }
	cases := map[string]struct {
		user *userv1.User
		code connect.Code
		msg  string
	}{
		"valid":                 {user: valid("carol")},
		"dots dashes digits":    {user: valid("c4rol.x_y-z")},
		"no user":               {user: nil, code: connect.CodeInvalidArgument, msg: "user: required"},
		"no id":                 {user: valid(""), code: connect.CodeInvalidArgument, msg: "user.id: required"},
		"upper-case id":         {user: valid("Carol"), code: connect.CodeInvalidArgument, msg: "user.id: must match"},
		"id starts with a dash": {user: valid("-carol"), code: connect.CodeInvalidArgument, msg: "user.id"},
		"id too long":           {user: valid(strings.Repeat("a", 64)), code: connect.CodeInvalidArgument, msg: "user.id"},
		"id of 63":              {user: valid(strings.Repeat("b", 63))},
		"id with a slash":       {user: valid("a/b"), code: connect.CodeInvalidArgument, msg: "user.id"},
		"no display name":       {user: with(valid("dora"), func(u *userv1.User) { u.DisplayName = " " }), code: connect.CodeInvalidArgument, msg: "user.display_name: required"},
		"no email":              {user: with(valid("erin"), func(u *userv1.User) { u.Email = "" }), code: connect.CodeInvalidArgument, msg: "user.email: required"},
		"not an email":          {user: with(valid("finn"), func(u *userv1.User) { u.Email = "Finn <finn@example.com>" }), code: connect.CodeInvalidArgument, msg: "user.email"},
		"bad role":              {user: with(valid("gail"), func(u *userv1.User) { u.Roles = []string{"customer", ""} }), code: connect.CodeInvalidArgument, msg: "user.roles[1]"},
		"existing id":           {user: valid("alice"), code: connect.CodeAlreadyExists, msg: `user "alice" already exists`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			res, err := svc.CreateUser(ctx, &userv1.CreateUserRequest{User: c.user})
			wantCode(t, err, c.code, c.msg)
			if err != nil {
				if c.user.GetId() != "" && c.code != connect.CodeAlreadyExists {
					if _, gerr := store.Get(context.Background(), c.user.GetId()); gerr == nil {
						t.Fatal("a rejected user was stored")
					}
				}
				return
			}
			if res.GetUser().GetCreateTime() == nil || res.GetUser().GetId() != c.user.GetId() {
				t.Fatalf("created %v", res.GetUser())
			}
		})
	}
}

func TestUpdateUser(t *testing.T) {
	t.Parallel()
	mask := func(paths ...string) *fieldmaskpb.FieldMask { return &fieldmaskpb.FieldMask{Paths: paths} }
	cases := map[string]struct {
		req  *userv1.UpdateUserRequest
		code connect.Code
		msg  string
		want func(*userv1.User) bool
	}{
		"deactivate": {
			req:  &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}, UpdateMask: mask("active")},
			want: func(u *userv1.User) bool { return !u.GetActive() && u.GetDisplayName() == "Bob" },
		},
		"rename": {
			req:  &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob", DisplayName: "Robert"}, UpdateMask: mask("display_name")},
			want: func(u *userv1.User) bool { return u.GetActive() && u.GetDisplayName() == "Robert" },
		},
		"no user":        {req: &userv1.UpdateUserRequest{UpdateMask: mask("active")}, code: connect.CodeInvalidArgument, msg: "user: required"},
		"no id":          {req: &userv1.UpdateUserRequest{User: &userv1.User{}, UpdateMask: mask("active")}, code: connect.CodeInvalidArgument, msg: "user.id: required"},
		"no mask":        {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}}, code: connect.CodeInvalidArgument, msg: "update_mask"},
		"unknown field":  {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}, UpdateMask: mask("create_time")}, code: connect.CodeInvalidArgument, msg: `unknown field "create_time"`},
		"empty name":     {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}, UpdateMask: mask("display_name")}, code: connect.CodeInvalidArgument, msg: "user.display_name"},
		"bad email":      {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob", Email: "nope"}, UpdateMask: mask("email")}, code: connect.CodeInvalidArgument, msg: "user.email"},
		"missing user":   {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "zed"}, UpdateMask: mask("active")}, code: connect.CodeNotFound, msg: `user "zed" not found`},
		"clear roles ok": {req: &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}, UpdateMask: mask("roles")}, want: func(u *userv1.User) bool { return len(u.GetRoles()) == 0 }},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			svc, store, _, ctx := newService(t)
			res, err := svc.UpdateUser(ctx, c.req)
			wantCode(t, err, c.code, c.msg)
			bob, gerr := store.Get(context.Background(), "bob")
			if gerr != nil {
				t.Fatal(gerr)
			}
			if err != nil {
				if !bob.GetActive() || bob.GetDisplayName() != "Bob" || len(bob.GetRoles()) != 1 {
					t.Fatalf("a rejected update changed bob: %v", bob)
				}
				return
			}
			if !c.want(res.GetUser()) || !c.want(bob) {
				t.Fatalf("returned %v, stored %v", res.GetUser(), bob)
			}
		})
	}
}

// TestInternalErrorsDoNotLeak closes the store under the service: the
// client gets a fixed message, and the cause is logged.
func TestInternalErrorsDoNotLeak(t *testing.T) {
	t.Parallel()
	svc, store, rec, ctx := newService(t)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"GetUser": func() error { _, err := svc.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"}); return err },
		"ListUsers": func() error {
			_, err := svc.ListUsers(ctx, &userv1.ListUsersRequest{})
			return err
		},
		"CreateUser": func() error {
			_, err := svc.CreateUser(ctx, &userv1.CreateUserRequest{User: &userv1.User{Id: "x", DisplayName: "X", Email: "x@example.com"}})
			return err
		},
		"UpdateUser": func() error {
			_, err := svc.UpdateUser(ctx, &userv1.UpdateUserRequest{User: &userv1.User{Id: "bob"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"active"}}})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := call()
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeInternal || ce.Message() != "internal error" {
				t.Fatalf("got %v, want internal with the fixed message", err)
			}
			logged := rec.Find("user store failed", map[string]string{"method": name, "caller": orderID})
			if len(logged) == 0 || !strings.Contains(logged[0].Attrs["error"], "closed") {
				t.Fatalf("cause not logged: %v", rec.Entries())
			}
		})
	}
}

func TestCanceledCallIsNotAnInternalError(t *testing.T) {
	t.Parallel()
	svc, _, rec, ctx := newService(t)
	ctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err := svc.GetUser(ctx, &userv1.GetUserRequest{Id: "alice"})
	if code := connect.CodeOf(err); code != connect.CodeCanceled {
		t.Fatalf("code %v (%v), want canceled", code, err)
	}
	if n := len(rec.Find("user store failed", nil)); n != 0 {
		t.Fatalf("a canceled call was logged as a failure")
	}
}
