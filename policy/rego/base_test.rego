# Tests of the base policy (base.rego, lib.rego). They run in the policy
# package's Go tests (`go test ./policy -run TestBasePolicy -v`), not when a
# layer is loaded: a layer's own tests are what gate it.
#
# The base knows no service but its own procedures, so the tests add a
# layer's contributions with `with`: a procedure that acts for a user, an
# allow rule. Configuration is pinned: config below.
package palisade.base_test

import data.palisade.authz
import data.palisade.lib
import data.palisade.testing

# ---------------------------------------------------------------------------
# Workloads, tokens and principals
# ---------------------------------------------------------------------------

cli := "spiffe://palisade.local/client/cli"

order_svc := "spiffe://palisade.local/svc/order"

billing := "spiffe://palisade.local/svc/billing"

foreign := "spiffe://elsewhere.example/svc/order"

config := {"trust_domain": "palisade.local", "delegates": [order_svc]}

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

admin := tok("admin", ["admin"], null)

# via(t, actor) is t as the token exchange issues it to actor.
via(t, actor) := object.union(t, {"act": {"sub": actor}})

# principals maps a name to the peer and token parts of the input; a
# principal without a token has no "token" key at all.
principals := {
	"alice": {"peer": peer(cli), "token": alice},
	"admin": {"peer": peer(cli), "token": admin},
	"order for alice": {"peer": peer(order_svc), "token": via(alice, order_svc)},
	"order without token": {"peer": peer(order_svc)},
	"foreign workload": {"peer": peer(foreign)},
	"no token": {"peer": peer(cli)},
	"order's token for alice presented by cli": {"peer": peer(cli), "token": via(alice, order_svc)},
	"no workload": {},
}

# for_user is the procedure the tests' layer says acts for a user.
for_user := "/test.v1.TestService/ForUser"

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

# decide is the decision for an input under config, with for_user among the
# user_procedures, without its request_needed.
decide(doc) := decide_with(doc, config)

decide_with(doc, cfg) := d if {
	d := testing.decide(doc, cfg) with authz.user_procedures as {for_user}
}

matrix(procedure, extra, wants) := {who: {"input": call(procedure, who, extra), "want": want} |
	some who, want in wants
}

# check holds when m names every principal and every decision is the one
# wanted (request_needed aside).
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

# ---------------------------------------------------------------------------
# Health and reflection: workloads of the trust domain, no token needed
# ---------------------------------------------------------------------------

trust_domain_wants := {
	"alice": allowed,
	"admin": allowed,
	"order for alice": allowed,
	"order without token": allowed,
	"foreign workload": denied(["workload spiffe://elsewhere.example/svc/order is not in trust domain palisade.local"]),
	"no token": allowed,
	"order's token for alice presented by cli": allowed,
	"no workload": denied(["the caller presented no workload identity"]),
}

health_check := matrix("/grpc.health.v1.Health/Check", {"request": {"service": ""}}, trust_domain_wants)

test_health_check if check(health_check)

# Watch is server-streaming: decided when the stream opens, without a request.
health_watch := matrix("/grpc.health.v1.Health/Watch", {"stream_type": "server_stream"}, trust_domain_wants)

test_health_watch if check(health_watch)

reflection_v1 := matrix(
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	{"stream_type": "bidi_stream"},
	trust_domain_wants,
)

test_reflection_v1 if check(reflection_v1)

reflection_v1alpha := matrix(
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
	{"stream_type": "bidi_stream"},
	trust_domain_wants,
)

test_reflection_v1alpha if check(reflection_v1alpha)

health := {"service": "grpc.health.v1.Health", "procedure": "/grpc.health.v1.Health/Check"}

test_trust_domain_is_matched_up_to_the_path if {
	every id in [
		"spiffe://palisade.local.elsewhere.example/svc/order",
		"spiffe://palisade.localhost/svc/order",
		"spiffe://palisade.local",
		"https://palisade.local/svc/order",
	] {
		decide(object.union(health, {"peer": peer(id)})) == denied([sprintf("workload %s is not in trust domain palisade.local", [id])])
	}
}

test_trust_domain_is_configuration if {
	other := object.union(config, {"trust_domain": "example.org"})
	decide_with(object.union(health, {"peer": peer("spiffe://example.org/ns/prod/sa/web")}), other) == allowed
	decide_with(object.union(health, {"peer": peer(cli)}), other) == denied(["workload spiffe://palisade.local/client/cli is not in trust domain example.org"])
}

# Without a configured trust domain (or with one that is not a string) no
# workload is in it.
test_no_trust_domain_admits_nobody if {
	every cfg in [{}, {"trust_domain": null}, {"trust_domain": ["palisade.local"]}] {
		decide_with(object.union(health, {"peer": peer(cli)}), cfg) == denied(["no trust domain is configured"])
	}
}

test_health_without_workload_identity if {
	decide(health) == denied(["the caller presented no workload identity"])
	decide(object.union(health, {"peer": {}})) == denied(["the caller presented no workload identity"])
	decide(object.union(health, {"peer": {"spiffe_id": 42}})) == denied(["the caller presented no workload identity"])
}

# ---------------------------------------------------------------------------
# The token exchange: the delegates, no token needed
# ---------------------------------------------------------------------------

exchange_procedure := "/palisade.token.v1.TokenService/ExchangeToken"

exchange_wants := {
	"alice": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"admin": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"order for alice": allowed,
	"order without token": allowed,
	"foreign workload": denied(["workload spiffe://elsewhere.example/svc/order may not exchange tokens"]),
	"no token": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"order's token for alice presented by cli": denied(["workload spiffe://palisade.local/client/cli may not exchange tokens"]),
	"no workload": denied(["the caller presented no workload identity"]),
}

exchange := matrix(exchange_procedure, {"request": {"subject_token": "<jwt>", "audience": "spiffe://palisade.local/svc/user"}}, exchange_wants)

test_exchange_token if check(exchange)

# The request body holds the subject token, which only the handler can
# verify: no field of it may change the decision.
exchange_with_request_fields := matrix(
	exchange_procedure,
	{"request": {
		"subject_token": "<jwt>",
		"actor": order_svc,
		"id": "alice",
		"user_id": "alice",
		"sub": "alice",
		"spiffe_id": order_svc,
		"roles": ["admin"],
	}},
	exchange_wants,
)

test_exchange_token_ignores_request_fields if check(exchange_with_request_fields)

# The delegation allow-list is data: a workload added to it may exchange,
# one removed from it may not.
test_exchange_token_follows_the_delegates_list if {
	base := {"procedure": exchange_procedure, "peer": peer(billing)}
	decide(base) == denied(["workload spiffe://palisade.local/svc/billing may not exchange tokens"])
	decide_with(base, object.union(config, {"delegates": [order_svc, billing]})) == allowed
	decide_with(base, object.union(config, {"delegates": {billing}})) == allowed
	order := {"procedure": exchange_procedure, "peer": peer(order_svc)}
	decide_with(order, object.union(config, {"delegates": []})) == denied(["workload spiffe://palisade.local/svc/order may not exchange tokens"])
	decide_with(order, {"trust_domain": "palisade.local"}) == denied(["workload spiffe://palisade.local/svc/order may not exchange tokens"])
}

# ---------------------------------------------------------------------------
# The layer's procedures that act for a user
# ---------------------------------------------------------------------------

token_required := {"allow": false, "reasons": ["a user token is required"], "need_user": true}

malformed := denied(["the token's sub or act claim is malformed"])

# With no allow rule of the layer, a user procedure is refused; without a
# token the denial asks for a user (need_user: 401).
for_user_wants := {
	"alice": denied(["no rule allows /test.v1.TestService/ForUser"]),
	"admin": denied(["no rule allows /test.v1.TestService/ForUser"]),
	"order for alice": denied(["no rule allows /test.v1.TestService/ForUser"]),
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": denied(["no rule allows /test.v1.TestService/ForUser"]),
	"no workload": token_required,
}

test_user_procedure_needs_a_user if check(matrix(for_user, {"request": {"id": "alice"}}, for_user_wants))

# need_user marks denials only: a layer that allows a call without a token
# gets no need_user.
test_need_user_only_on_denials if {
	d := testing.decide(call(for_user, "no token", {}), config) with authz.user_procedures as {for_user}
		with authz.allow as true
	d == allowed
}

# A procedure no layer lists acts for nobody: no need_user.
test_other_procedures_need_no_user if {
	decide(call("/test.v1.TestService/Other", "no token", {})) == denied(["no rule allows /test.v1.TestService/Other"])
}

malformed_tokens := [
	{},
	{"roles": ["admin"]},
	{"sub": "", "roles": ["admin"]},
	{"sub": 42, "roles": ["admin"]},
	{"sub": null, "roles": ["admin"]},
	{"sub": "admin", "roles": ["admin"], "act": {}},
	{"sub": "admin", "roles": ["admin"], "act": {"sub": ""}},
	{"sub": "admin", "roles": ["admin"], "act": {"sub": 7}},
	{"sub": "admin", "roles": ["admin"], "act": "spiffe://palisade.local/svc/order"},
	{"sub": "admin", "roles": ["admin"], "act": false},
]

test_malformed_tokens if {
	every t in malformed_tokens {
		decide({"procedure": for_user, "peer": peer(order_svc), "token": t, "request": {"id": "admin"}}) == malformed
	}
}

test_token_that_is_not_an_object_is_no_token if {
	every t in [null, "alice", ["alice"], true] {
		decide({"procedure": for_user, "peer": peer(cli), "token": t, "request": {"id": "alice"}}) == token_required
	}
}

# ---------------------------------------------------------------------------
# The library
# ---------------------------------------------------------------------------

in_input(doc) := names if {
	names := {name | some name, holds in helpers; holds} with input as doc with data.palisade.config as config
}

helpers[name] := true if {
	some name in ["direct", "delegated", "presented_by_actor", "valid_delegation", "admin", "for_self(id)"]
	helper(name)
}

helper("direct") if lib.direct

helper("delegated") if lib.delegated

helper("presented_by_actor") if lib.presented_by_actor

helper("valid_delegation") if lib.valid_delegation

helper("admin") if lib.has_role("admin")

helper("for_self(id)") if lib.for_self("id")

test_library if {
	in_input(call(for_user, "alice", {"request": {"id": "alice"}})) == {"direct", "for_self(id)"}
	in_input(call(for_user, "alice", {"request": {"id": "bob"}})) == {"direct"}
	in_input(call(for_user, "admin", {})) == {"direct", "admin"}
	in_input(call(for_user, "order for alice", {"request": {"id": "alice"}})) == {"delegated", "presented_by_actor", "valid_delegation", "for_self(id)"}
	in_input(call(for_user, "order's token for alice presented by cli", {})) == {"delegated"}
	in_input(call(for_user, "no token", {"request": {"id": "alice"}})) == set()
}

# A delegate removed from the list no longer acts for users.
test_delegation_follows_the_delegates_list if {
	doc := call(for_user, "order for alice", {})
	lib.valid_delegation with input as doc with data.palisade.config as config
	not lib.valid_delegation with input as doc with data.palisade.config as {"delegates": [billing]}
	not lib.valid_delegation with input as doc with data.palisade.config as {}
}

# A null or empty subject must not match a null or empty id.
test_empty_subject_matches_nothing if {
	not lib.for_self("id") with input as {"token": {"sub": ""}, "request": {"id": ""}}
	not lib.for_self("id") with input as {"token": {"sub": null}, "request": {"id": null}}
}

test_roles_must_be_a_list if {
	every roles in ["admin", null, ["Admin", "admin "], {"admin": true}] {
		not lib.has_role("admin") with input as {"token": {"sub": "mallory", "roles": roles}}
	}
	not lib.has_role("admin") with input as {"token": {"sub": "mallory"}}
}

# ---------------------------------------------------------------------------
# The decision document
# ---------------------------------------------------------------------------

all_cases := [c |
	some m in [
		health_check, health_watch, reflection_v1, reflection_v1alpha,
		exchange, exchange_with_request_fields,
		matrix(for_user, {"request": {"id": "alice"}}, for_user_wants),
	]
	some c in m
]

odd_inputs := [
	{},
	{"procedure": 42},
	{"procedure": null, "service": null},
	{"procedure": ["/grpc.health.v1.Health/Check"]},
	{"service": "grpc.health.v1.Health"},
	{"procedure": "/grpc.health.v1.Health/Check", "service": "grpc.health.v1.Health", "peer": "spiffe://palisade.local/client/cli"},
	{"procedure": for_user, "token": "alice"},
	{"procedure": exchange_procedure, "peer": {"spiffe_id": ["spiffe://palisade.local/svc/order"]}},
]

# Whatever the input, decision is {"allow": <bool>, "reasons": [<string>...],
# "request_needed": <bool>}, with "need_user": true on some denials, and
# reasons empty exactly when allowed.
test_decision_is_always_a_document if {
	inputs := array.concat([c.input | some c in all_cases], odd_inputs)
	count(inputs) > 50
	every doc in inputs {
		d := testing.decision(doc, config) with authz.user_procedures as {for_user}
		is_object(d)
		object.keys(d) - {"need_user"} == {"allow", "reasons", "request_needed"}
		object.get(d, "need_user", true) == true
		is_boolean(d.request_needed)
		is_boolean(d.allow)
		is_array(d.reasons)
		every r in d.reasons {
			is_string(r)
		}
		reasons_iff_denied(d)
	}
}

test_odd_inputs_are_denied if {
	every doc in odd_inputs {
		d := decide(doc)
		d.allow == false
		count(d.reasons) > 0
	}
	decide({}) == denied(["no rule allows this request"])
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
# request_needed
# ---------------------------------------------------------------------------

procedures := {
	"/grpc.health.v1.Health/Check",
	"/grpc.health.v1.Health/Watch",
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
	exchange_procedure,
	for_user,
	"/x.v1.Y/Z",
}

requests := [
	{},
	{"id": "alice", "user_id": "alice", "subject_token": "<jwt>"},
	{"id": "admin", "audience": order_svc},
	null,
]

calls := {call(p, who, {}) | some p in procedures; some who, _ in principals}

# The checks of the base's request_free claims, made by `go test ./policy
# -run TestBaseRequestNeeded` (too many evaluations for a rego test).
settled_but_changed_by_a_request := x if {
	x := testing.settled_but_changed(calls, requests, config) with authz.user_procedures as {for_user}
}

waiting_for_a_request_that_changes_nothing := x if {
	x := testing.waiting_for_nothing(calls, requests, config) with authz.user_procedures as {for_user}
}

request_needed_counts := x if {
	x := testing.request_needed_counts(calls, config) with authz.user_procedures as {for_user}
}

early(procedure, who) := d if {
	d := testing.decision(call(procedure, who, {}), config) with authz.user_procedures as {for_user}
}

# Everything the base decides is settled before the request.
test_what_is_settled_before_the_request if {
	early(for_user, "no token") == {
		"allow": false, "reasons": ["a user token is required"], "need_user": true,
		"request_needed": false,
	}
	early("/x.v1.Y/Z", "alice") == {"allow": false, "reasons": ["no rule allows /x.v1.Y/Z"], "request_needed": false}
	early("/grpc.health.v1.Health/Check", "foreign workload") == {
		"allow": false,
		"reasons": ["workload spiffe://elsewhere.example/svc/order is not in trust domain palisade.local"],
		"request_needed": false,
	}
	early(exchange_procedure, "alice").request_needed == false
	early(exchange_procedure, "order without token") == {"allow": true, "reasons": [], "request_needed": false}
	early(for_user, "alice").request_needed == false
}
