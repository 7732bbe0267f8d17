# Tests of the user service's layer (authz.rego, user.rego) on the base
# policy. The engine runs them before it loads the layer; run them with
# `bin/palisade policy test services/user/policy` or `go test
# ./services/user -run TestPolicy -v`.
#
# Most tests are matrices: one procedure and request, every principal below,
# and the exact decision each one must get, reasons included. The
# configuration is pinned (config below), so that a deployment's own data
# cannot fail them.
package palisade.user_test

import data.palisade.authz
import data.palisade.testing

# ---------------------------------------------------------------------------
# Workloads, tokens and principals
# ---------------------------------------------------------------------------

cli := "spiffe://palisade.local/client/cli"

order_svc := "spiffe://palisade.local/svc/order"

billing := "spiffe://palisade.local/svc/billing"

foreign := "spiffe://elsewhere.example/svc/order"

config := {"trust_domain": "palisade.local", "delegates": [order_svc], "watchers": [order_svc]}

peer(id) := {"spiffe_id": id, "cert_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}

# tok is a token's claims as the engine puts them in the input.
tok(sub, roles, act) := {
	"sub": sub,
	"roles": roles,
	"scope": "",
	"aud": ["spiffe://palisade.local/svc/user"],
	"iss": "spiffe://palisade.local/svc/user",
	"jti": concat("-", ["jti", sub]),
	"exp": 1790000000,
	"act": act,
	"bound": true,
}

alice := tok("alice", ["customer"], null)

bob := tok("bob", ["customer"], null)

admin := tok("admin", ["admin"], null)

carol := tok("carol", [], null) # a user without roles

# via(t, actor) is t as the token exchange issues it to actor.
via(t, actor) := object.union(t, {"act": {"sub": actor}})

# principals maps a name to the peer and token parts of the input; a
# principal without a token has no "token" key at all.
principals := {
	"alice": {"peer": peer(cli), "token": alice},
	"bob": {"peer": peer(cli), "token": bob},
	"admin": {"peer": peer(cli), "token": admin},
	"carol (no roles)": {"peer": peer(cli), "token": carol},
	"order for alice": {"peer": peer(order_svc), "token": via(alice, order_svc)},
	"order for bob": {"peer": peer(order_svc), "token": via(bob, order_svc)},
	"order for admin": {"peer": peer(order_svc), "token": via(admin, order_svc)},
	"order without token": {"peer": peer(order_svc)},
	"foreign workload": {"peer": peer(foreign)},
	"no token": {"peer": peer(cli)},
	"order's token for alice presented by cli": {"peer": peer(cli), "token": via(alice, order_svc)},
}

# call is the input of a call of procedure by principal who; extra adds
# "request" (absent when a stream opens) and "resource".
call(procedure, who, extra) := object.union_n([
	{
		"procedure": procedure,
		"service": split(trim_prefix(procedure, "/"), "/")[0],
		"method": split(trim_prefix(procedure, "/"), "/")[1],
		"stream_type": "unary",
		"http": {"method": "POST", "protocol": "connect"},
	},
	principals[who],
	extra,
])

allowed := {"allow": true, "reasons": []}

denied(reasons) := {"allow": false, "reasons": reasons}

# decide is the decision for an input under config, without request_needed.
decide(doc) := testing.decide(doc, config)

decide_with(doc, cfg) := testing.decide(doc, cfg)

# matrix is the cases of procedure called with extra by every principal named
# in wants, each with the decision it must get.
matrix(procedure, extra, wants) := {who: {"input": call(procedure, who, extra), "want": want} |
	some who, want in wants
}

# check holds when m names every principal and every decision is the one
# wanted (request_needed aside: the Go test checks it).
check(m) if {
	count(m) == count(principals)
	bad := {who: {"want": c.want, "got": got} |
		some who, c in m
		got := decide(c.input)
		got != c.want
	}
	print("unexpected decisions:", bad)
	count(bad) == 0
}

token_required := {"allow": false, "reasons": ["a user token is required"], "need_user": true}

delegated_refused := denied(["delegated tokens are not accepted for this procedure"])

acting_refused := denied(["a delegated token must be presented by the workload named in its act claim"])

# ---------------------------------------------------------------------------
# AuthService
# ---------------------------------------------------------------------------

trust_domain_wants := {
	"alice": allowed,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": allowed,
	"order for alice": allowed,
	"order for bob": allowed,
	"order for admin": allowed,
	"order without token": allowed,
	"foreign workload": denied(["workload spiffe://elsewhere.example/svc/order is not in trust domain palisade.local"]),
	"no token": allowed,
	"order's token for alice presented by cli": allowed,
}

login := matrix("/user.v1.AuthService/Login", {"request": {"username": "alice"}}, trust_domain_wants)

test_login if check(login)

test_login_without_workload_identity if {
	decide({"procedure": "/user.v1.AuthService/Login", "service": "user.v1.AuthService", "method": "Login"}) == denied(["the caller presented no workload identity"])
}

exchange_wants := {
	"alice": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"bob": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"admin": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"carol (no roles)": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"order for alice": allowed,
	"order for bob": allowed,
	"order for admin": allowed,
	"order without token": allowed,
	"foreign workload": denied(["workload spiffe://elsewhere.example/svc/order may not exchange tokens"]),
	"no token": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"order's token for alice presented by cli": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
}

exchange := matrix("/palisade.token.v1.TokenService/ExchangeToken", {"request": {"subject_token": "<jwt>"}}, exchange_wants)

test_exchange_token if check(exchange)

test_exchange_token_follows_the_delegates_list if {
	base := {"procedure": "/palisade.token.v1.TokenService/ExchangeToken", "peer": peer(billing)}
	decide(base) == denied(["workload spiffe://palisade.local/svc/billing may not exchange tokens"])
	decide_with(base, object.union(config, {"delegates": [order_svc, billing]})) == allowed
	decide({"procedure": "/palisade.token.v1.TokenService/ExchangeToken"}) == denied(["the caller presented no workload identity"])
}

# ---------------------------------------------------------------------------
# UserService
# ---------------------------------------------------------------------------

own_record := denied(["customers may only read their own user record"])

delegate_for_other := denied(["a delegate may only read the user it acts for"])

get_user_alice := matrix("/user.v1.UserService/GetUser", {"request": {"id": "alice"}}, {
	"alice": allowed,
	"bob": own_record,
	"admin": allowed,
	"carol (no roles)": own_record,
	"order for alice": allowed,
	"order for bob": delegate_for_other,
	"order for admin": allowed,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": acting_refused,
})

test_get_user_alice if check(get_user_alice)

get_user_bob := matrix("/user.v1.UserService/GetUser", {"request": {"id": "bob"}}, {
	"alice": own_record,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": own_record,
	"order for alice": delegate_for_other,
	"order for bob": allowed,
	"order for admin": allowed,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": acting_refused,
})

test_get_user_bob if check(get_user_bob)

# Without the id field (or without a request at all), only admins may read.
get_user_wants_without_id := {
	"alice": own_record,
	"bob": own_record,
	"admin": allowed,
	"carol (no roles)": own_record,
	"order for alice": delegate_for_other,
	"order for bob": delegate_for_other,
	"order for admin": allowed,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": acting_refused,
}

get_user_without_id := matrix("/user.v1.UserService/GetUser", {"request": {}}, get_user_wants_without_id)

test_get_user_without_id if check(get_user_without_id)

get_user_without_request := matrix("/user.v1.UserService/GetUser", {}, get_user_wants_without_id)

test_get_user_without_request if check(get_user_without_request)

get_user_id_of_wrong_type := matrix("/user.v1.UserService/GetUser", {"request": {"id": ["alice"]}}, get_user_wants_without_id)

test_get_user_id_of_wrong_type if check(get_user_id_of_wrong_type)

# A workload added to the delegates (data only) acts for users like the
# order service: it reads the user it acts for, an admin's any.
test_get_user_by_another_delegate if {
	cfg := object.union(config, {"delegates": [order_svc, billing]})
	base := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(billing), "request": {"id": "alice"}}
	decide_with(object.union(base, {"token": via(alice, billing)}), cfg) == allowed
	decide_with(object.union(base, {"token": via(bob, billing)}), cfg) == delegate_for_other
	decide_with(object.union(base, {"token": via(admin, billing)}), cfg) == allowed
}

test_get_user_by_an_actor_that_is_not_a_delegate if {
	base := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(billing), "request": {"id": "alice"}}
	decide(object.union(base, {"token": via(alice, billing)})) == denied(["workload spiffe://palisade.local/svc/billing may not act for users"])
	decide(object.union(base, {"token": via(admin, billing)})) == denied(["workload spiffe://palisade.local/svc/billing may not act for users"])
	order := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(order_svc), "request": {"id": "alice"}, "token": via(alice, order_svc)}
	decide_with(order, object.union(config, {"delegates": []})) == denied(["workload spiffe://palisade.local/svc/order may not act for users"])
}

test_delegated_token_presented_by_an_unnamed_workload if {
	decide({"procedure": "/user.v1.UserService/GetUser", "request": {"id": "alice"}, "token": via(admin, order_svc)}) == acting_refused
}

admin_only_wants := {
	"alice": denied(["admin role required"]),
	"bob": denied(["admin role required"]),
	"admin": allowed,
	"carol (no roles)": denied(["admin role required"]),
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
}

list_users := matrix("/user.v1.UserService/ListUsers", {"request": {"page_size": 10}}, admin_only_wants)

test_list_users if check(list_users)

create_user := matrix("/user.v1.UserService/CreateUser", {"request": {"user": {"id": "carol", "display_name": "Carol"}}}, admin_only_wants)

test_create_user if check(create_user)

update_user := matrix("/user.v1.UserService/UpdateUser", {"request": {"user": {"id": "alice", "roles": ["admin"]}}}, admin_only_wants)

test_update_user if check(update_user)

# A user may not make themselves an admin by naming themselves.
update_self := matrix("/user.v1.UserService/UpdateUser", {"request": {"id": "alice", "user": {"id": "alice"}}}, admin_only_wants)

test_update_self if check(update_self)

# Calls that carry a user token are decided on the token: the rules for
# them do not look at the workload's trust domain (the client certificate is
# vouched for by the CA, and a bound token by its cnf claim), only at whether
# a delegated token is presented by its actor.
test_direct_tokens_from_any_workload if {
	decide(call("/user.v1.UserService/GetUser", "foreign workload", {"token": alice, "request": {"id": "alice"}})) == allowed
	decide(call("/user.v1.UserService/ListUsers", "foreign workload", {"token": admin})) == allowed
	decide(call("/user.v1.UserService/GetUser", "foreign workload", {"token": via(alice, order_svc), "request": {"id": "alice"}})) == acting_refused
}

test_roles_must_be_a_list if {
	base := {"procedure": "/user.v1.UserService/ListUsers", "peer": peer(cli)}
	decide(object.union(base, {"token": {"sub": "mallory", "roles": "admin"}})) == denied(["admin role required"])
	decide(object.union(base, {"token": {"sub": "mallory", "roles": null}})) == denied(["admin role required"])
	decide(object.union(base, {"token": {"sub": "mallory"}})) == denied(["admin role required"])
	decide(object.union(base, {"token": {"sub": "mallory", "roles": ["Admin", "admin "]}})) == denied(["admin role required"])
}

test_malformed_tokens if {
	every t in [
		{},
		{"sub": "", "roles": ["admin"]},
		{"sub": "admin", "roles": ["admin"], "act": {"sub": 7}},
	] {
		every procedure in authz.user_procedures {
			decide({"procedure": procedure, "peer": peer(order_svc), "token": t, "request": {"id": "admin"}}) == denied(["the token's sub or act claim is malformed"])
		}
	}
}

# A null or empty subject must not match a null or empty id.
test_empty_subject_matches_nothing if {
	decide({"procedure": "/user.v1.UserService/GetUser", "token": {"sub": ""}, "request": {"id": ""}}) == denied(["the token's sub or act claim is malformed"])
	decide({"procedure": "/user.v1.UserService/GetUser", "token": {"sub": null}, "request": {"id": null}}) == denied(["the token's sub or act claim is malformed"])
}

# ---------------------------------------------------------------------------
# The change feed
# ---------------------------------------------------------------------------

no_user_token_on_the_feed := denied(["a user token may not subscribe to user changes"])

# WatchUserChanges is server-streaming: decided when the stream opens.
watch_user_changes := matrix("/user.v1.UserService/WatchUserChanges", {"stream_type": "server_stream"}, {
	"alice": no_user_token_on_the_feed,
	"bob": no_user_token_on_the_feed,
	"admin": no_user_token_on_the_feed,
	"carol (no roles)": no_user_token_on_the_feed,
	"order for alice": no_user_token_on_the_feed,
	"order for bob": no_user_token_on_the_feed,
	"order for admin": no_user_token_on_the_feed,
	"order without token": allowed,
	"foreign workload": denied(["workload spiffe://elsewhere.example/svc/order may not watch user changes"]),
	"no token": denied(["workload spiffe://palisade.local/client/cli may not watch user changes"]),
	"order's token for alice presented by cli": no_user_token_on_the_feed,
})

test_watch_user_changes if check(watch_user_changes)

test_watch_user_changes_follows_the_watchers_list if {
	base := {"procedure": "/user.v1.UserService/WatchUserChanges", "peer": peer(billing)}
	decide(base) == denied(["workload spiffe://palisade.local/svc/billing may not watch user changes"])
	decide_with(base, object.union(config, {"watchers": [order_svc, billing]})) == allowed
	decide_with(object.union(base, {"peer": peer(order_svc)}), object.union(config, {"watchers": []})) == denied(["workload spiffe://palisade.local/svc/order may not watch user changes"])
}

test_watch_user_changes_without_workload_identity if {
	decide({"procedure": "/user.v1.UserService/WatchUserChanges"}) == denied(["the caller presented no workload identity"])
}

# ---------------------------------------------------------------------------
# Every decision
# ---------------------------------------------------------------------------

all_cases := [c |
	some m in [
		login, exchange,
		get_user_alice, get_user_bob, get_user_without_id, get_user_without_request, get_user_id_of_wrong_type,
		list_users, create_user, update_user, update_self, watch_user_changes,
	]
	some c in m
]

# Whatever the input, decision is a document with reasons exactly when
# denied, and the reasons name no other user (nor an id from the request):
# they are shown to the denied caller.
test_decisions_are_documents_that_name_no_other_user if {
	count(all_cases) == 12 * count(principals)
	every c in all_cases {
		d := testing.decision(c.input, config)
		object.keys(d) - {"need_user"} == {"allow", "reasons", "request_needed"}
		object.get(d, "need_user", true) == true
		is_boolean(d.request_needed)
		reasons_iff_denied(d)
		every r in d.reasons {
			is_string(r)
			every name in ["alice", "bob", "carol"] {
				not contains(r, name)
			}
		}
	}
}

reasons_iff_denied(d) if {
	d.allow == true
	d.reasons == []
}

reasons_iff_denied(d) if {
	d.allow == false
	count(d.reasons) > 0
}

# ---------------------------------------------------------------------------
# request_needed: which unary calls are settled before their request is read
# ---------------------------------------------------------------------------

# Every procedure of the layer, and one it does not know.
procedures := {
	"/user.v1.AuthService/Login",
	"/palisade.token.v1.TokenService/ExchangeToken",
	"/user.v1.UserService/GetUser",
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
	"/user.v1.UserService/WatchUserChanges",
	"/x.v1.Y/Z",
}

# Requests an attacker might send: each user of the principals named in
# every field a rule reads, none, and a request that is not an object.
requests := [
	{},
	{"id": "alice", "user_id": "alice"},
	{"id": "bob", "user": {"id": "bob"}},
	{"id": "admin"},
	{"id": "carol"},
	{"id": ["alice"]},
	null,
]

# The first decision of a unary call: its headers are in, its request is not.
calls := {call(p, who, {}) | some p in procedures; some who, _ in principals}

# Too many evaluations to run each time the layer is loaded, these are
# rules, not tests: `go test ./services/user -run TestPolicyRequestNeeded`
# requires the first two to be empty.
settled_but_changed_by_a_request := testing.settled_but_changed(calls, requests, config)

waiting_for_a_request_that_changes_nothing := testing.waiting_for_nothing(calls, requests, config)

request_needed_counts := testing.request_needed_counts(calls, config)

early(procedure, who) := testing.decision(call(procedure, who, {}), config)

# The calls the server answers before reading a body: a caller without a
# token on a procedure that acts for a user (401), an unknown procedure, a
# workload the policy does not admit (403), and the allowed calls that
# depend on the caller alone.
test_what_is_settled_before_the_request if {
	early("/user.v1.UserService/GetUser", "no token") == {
		"allow": false, "reasons": ["a user token is required"], "need_user": true,
		"request_needed": false,
	}
	early("/x.v1.Y/Z", "alice") == {"allow": false, "reasons": ["no rule allows /x.v1.Y/Z"], "request_needed": false}
	early("/palisade.token.v1.TokenService/ExchangeToken", "alice").request_needed == false
	early("/user.v1.AuthService/Login", "no token") == {"allow": true, "reasons": [], "request_needed": false}
	early("/user.v1.UserService/GetUser", "admin") == {"allow": true, "reasons": [], "request_needed": false}
	early("/user.v1.UserService/GetUser", "order for admin") == {"allow": true, "reasons": [], "request_needed": false}
	early("/user.v1.UserService/GetUser", "order's token for alice presented by cli") == object.union(acting_refused, {"request_needed": false})
}

# A customer's own record depends on the id the request names: those calls
# wait for their request.
test_what_waits_for_the_request if {
	early("/user.v1.UserService/GetUser", "alice").request_needed == true
	early("/user.v1.UserService/GetUser", "alice").allow == false
	decide(call("/user.v1.UserService/GetUser", "alice", {"request": {"id": "alice"}})) == allowed
	early("/user.v1.UserService/GetUser", "order for alice").request_needed == true
}
