# Tests of the default policy (authz.rego). Run them with
# `go test ./policy/ -run TestDefaultPolicies -v` (or `opa test -v policy/rego`,
# which also shows the unexpected decisions a failing test prints).
#
# Most tests are matrices: one procedure and request, every principal below,
# and the exact decision each one must get, reasons included.
package palisade.authz_test

import data.palisade.authz

# ---------------------------------------------------------------------------
# Workloads, tokens and principals
# ---------------------------------------------------------------------------

cli := "spiffe://palisade.local/client/cli"

other := "spiffe://palisade.local/client/other"

order_svc := "spiffe://palisade.local/svc/order"

billing := "spiffe://palisade.local/svc/billing"

foreign := "spiffe://elsewhere.example/svc/order"

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

# via(t, actor) is t as ExchangeToken issues it to actor.
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

# matrix is the cases of procedure called with extra by every principal named
# in wants, each with the decision it must get.
matrix(procedure, extra, wants) := {who: {"input": call(procedure, who, extra), "want": want} |
	some who, want in wants
}

# check holds when m names every principal and every decision is the one
# wanted (request_needed aside: the request_needed tests below check it).
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

# decide evaluates the decision for an input, without its request_needed.
decide(doc) := object.remove(d, {"request_needed"}) if d := authz.decision with input as doc

token_required := {"allow": false, "reasons": ["a user token is required"], "need_user": true}

delegated_refused := denied(["delegated tokens are not accepted for this procedure"])

acting_refused := denied(["a delegated token must be presented by the workload named in its act claim"])

# ---------------------------------------------------------------------------
# Health and reflection: workloads of the trust domain, no token needed
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

test_trust_domain_is_matched_up_to_the_path if {
	every id in [
		"spiffe://palisade.local.elsewhere.example/svc/order",
		"spiffe://palisade.localhost/svc/order",
		"spiffe://palisade.local",
		"https://palisade.local/svc/order",
	] {
		decide({"service": "grpc.health.v1.Health", "procedure": "/grpc.health.v1.Health/Check", "peer": peer(id)}) == denied([sprintf("workload %s is not in trust domain palisade.local", [id])])
	}
}

test_trust_domain_is_configuration if {
	base := {"service": "grpc.health.v1.Health", "procedure": "/grpc.health.v1.Health/Check"}
	decide(object.union(base, {"peer": peer("spiffe://example.org/ns/prod/sa/web")})) == allowed with data.palisade.config.trust_domain as "example.org"
	decide(object.union(base, {"peer": peer(cli)})) == denied(["workload spiffe://palisade.local/client/cli is not in trust domain example.org"]) with data.palisade.config.trust_domain as "example.org"
}

test_health_without_workload_identity if {
	base := {"service": "grpc.health.v1.Health", "procedure": "/grpc.health.v1.Health/Check"}
	decide(base) == denied(["the caller presented no workload identity"])
	decide(object.union(base, {"peer": {}})) == denied(["the caller presented no workload identity"])
	decide(object.union(base, {"peer": {"spiffe_id": 42}})) == denied(["the caller presented no workload identity"])
}

# ---------------------------------------------------------------------------
# AuthService
# ---------------------------------------------------------------------------

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

exchange := matrix("/user.v1.AuthService/ExchangeToken", {"request": {"subject_token": "<jwt>"}}, exchange_wants)

test_exchange_token if check(exchange)

# The request body holds the subject token, which only the handler can
# verify: no field of it may change the decision.
exchange_with_request_fields := matrix(
	"/user.v1.AuthService/ExchangeToken",
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

test_exchange_token_follows_the_delegates_list if {
	base := {"procedure": "/user.v1.AuthService/ExchangeToken", "peer": peer(billing)}
	decide(base) == denied(["workload spiffe://palisade.local/svc/billing may not exchange tokens"])
	decide(base) == allowed with data.palisade.config.delegates as {order_svc, billing}
	decide(object.union(base, {"peer": peer(order_svc)})) == denied(["workload spiffe://palisade.local/svc/order may not exchange tokens"]) with data.palisade.config.delegates as set()
}

test_exchange_token_without_workload_identity if {
	decide({"procedure": "/user.v1.AuthService/ExchangeToken"}) == denied(["the caller presented no workload identity"])
}

# ---------------------------------------------------------------------------
# UserService
# ---------------------------------------------------------------------------

own_record := denied(["customers may only read their own user record"])

order_acts_for_other := denied(["the order service may only read the user it acts for"])

get_user_alice := matrix("/user.v1.UserService/GetUser", {"request": {"id": "alice"}}, {
	"alice": allowed,
	"bob": own_record,
	"admin": allowed,
	"carol (no roles)": own_record,
	"order for alice": allowed,
	"order for bob": order_acts_for_other,
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
	"order for alice": order_acts_for_other,
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
	"order for alice": order_acts_for_other,
	"order for bob": order_acts_for_other,
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

test_get_user_by_a_delegate_other_than_the_order_service if {
	base := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(billing), "request": {"id": "alice"}}
	decide(object.union(base, {"token": via(alice, billing)})) == denied(["only the order service may read a user on the user's behalf"]) with data.palisade.config.delegates as {order_svc, billing}
	decide(object.union(base, {"token": via(admin, billing)})) == allowed with data.palisade.config.delegates as {order_svc, billing}
}

test_get_user_by_an_actor_that_is_not_a_delegate if {
	base := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(billing), "request": {"id": "alice"}}
	decide(object.union(base, {"token": via(alice, billing)})) == denied(["workload spiffe://palisade.local/svc/billing may not act for users"])
	decide(object.union(base, {"token": via(admin, billing)})) == denied(["workload spiffe://palisade.local/svc/billing may not act for users"])
	order := {"procedure": "/user.v1.UserService/GetUser", "peer": peer(order_svc), "request": {"id": "alice"}, "token": via(alice, order_svc)}
	decide(order) == denied(["workload spiffe://palisade.local/svc/order may not act for users"]) with data.palisade.config.delegates as set()
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
		{"roles": ["admin"]},
		{"sub": "", "roles": ["admin"]},
		{"sub": 42, "roles": ["admin"]},
		{"sub": null, "roles": ["admin"]},
		{"sub": "admin", "roles": ["admin"], "act": {}},
		{"sub": "admin", "roles": ["admin"], "act": {"sub": ""}},
		{"sub": "admin", "roles": ["admin"], "act": {"sub": 7}},
		{"sub": "admin", "roles": ["admin"], "act": "spiffe://palisade.local/svc/order"},
		{"sub": "admin", "roles": ["admin"], "act": false},
	] {
		every procedure in authz.user_procedures {
			decide({"procedure": procedure, "peer": peer(order_svc), "token": t, "request": {"id": "admin", "user_id": "admin"}}) == denied(["the token's sub or act claim is malformed"])
		}
	}
}

test_token_that_is_not_an_object_is_no_token if {
	every t in [null, "alice", ["alice"], true] {
		decide({"procedure": "/user.v1.UserService/GetUser", "peer": peer(cli), "token": t, "request": {"id": "alice"}}) == token_required
	}
}

# A null or empty subject must not match a null or empty id.
test_empty_subject_matches_nothing if {
	decide({"procedure": "/user.v1.UserService/GetUser", "token": {"sub": ""}, "request": {"id": ""}}) == denied(["the token's sub or act claim is malformed"])
	decide({"procedure": "/user.v1.UserService/GetUser", "token": {"sub": null}, "request": {"id": null}}) == denied(["the token's sub or act claim is malformed"])
	decide({"procedure": "/order.v1.OrderService/ListOrders", "token": {"sub": ""}, "request": {"user_id": ""}}) == denied(["the token's sub or act claim is malformed"])
}

# ---------------------------------------------------------------------------
# OrderService
# ---------------------------------------------------------------------------

order_for_self := denied(["customers may only create orders for themselves"])

role_required := denied(["customer or admin role required"])

items := [{"sku": "book-1", "quantity": 2}]

create_order_alice := matrix("/order.v1.OrderService/CreateOrder", {"request": {"user_id": "alice", "items": items}}, {
	"alice": allowed,
	"bob": order_for_self,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_create_order_for_alice if check(create_order_alice)

create_order_bob := matrix("/order.v1.OrderService/CreateOrder", {"request": {"user_id": "bob", "items": items}}, {
	"alice": order_for_self,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_create_order_for_bob if check(create_order_bob)

create_order_wants_without_user_id := {
	"alice": order_for_self,
	"bob": order_for_self,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
}

# The JSON name userId is not the proto field name: it names nobody.
create_order_without_user_id := matrix(
	"/order.v1.OrderService/CreateOrder",
	{"request": {"userId": "alice", "items": items}},
	create_order_wants_without_user_id,
)

test_create_order_without_user_id if check(create_order_without_user_id)

create_order_without_request := matrix("/order.v1.OrderService/CreateOrder", {}, create_order_wants_without_user_id)

test_create_order_without_request if check(create_order_without_request)

list_own := denied(["customers may only list their own orders"])

list_orders_alice := matrix("/order.v1.OrderService/ListOrders", {"request": {"user_id": "alice"}}, {
	"alice": allowed,
	"bob": list_own,
	"admin": allowed,
	"carol (no roles)": list_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_list_orders_of_alice if check(list_orders_alice)

list_orders_carol := matrix("/order.v1.OrderService/ListOrders", {"request": {"user_id": "carol", "page_size": 5}}, {
	"alice": list_own,
	"bob": list_own,
	"admin": allowed,
	"carol (no roles)": allowed,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_list_orders_of_carol if check(list_orders_carol)

list_orders_without_user_id := matrix("/order.v1.OrderService/ListOrders", {"request": {"page_size": 5}}, {
	"alice": list_own,
	"bob": list_own,
	"admin": allowed,
	"carol (no roles)": list_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_list_orders_without_user_id if check(list_orders_without_user_id)

# GetOrder, first decision: before the handler runs, without input.resource.
get_order_call := matrix("/order.v1.OrderService/GetOrder", {"request": {"id": "ord_1"}}, {
	"alice": allowed,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_get_order_call_level if check(get_order_call)

# GetOrder, second decision: the handler has loaded alice's order.
read_own := denied(["customers may only read their own orders"])

alices_order := {
	"request": {"id": "ord_1"},
	"resource": {"kind": "order", "id": "ord_1", "owner": "alice"},
}

get_order_alices := matrix("/order.v1.OrderService/GetOrder", alices_order, {
	"alice": allowed,
	"bob": read_own,
	"admin": allowed,
	"carol (no roles)": read_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_get_order_resource_level_alices_order if check(get_order_alices)

bobs_order := {
	"request": {"id": "ord_2"},
	"resource": {"kind": "order", "id": "ord_2", "owner": "bob"},
}

get_order_bobs := matrix("/order.v1.OrderService/GetOrder", bobs_order, {
	"alice": read_own,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": read_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_get_order_resource_level_bobs_order if check(get_order_bobs)

not_an_order := denied(["the resource is not an order"])

not_an_order_wants := {
	"alice": not_an_order,
	"bob": not_an_order,
	"admin": not_an_order,
	"carol (no roles)": not_an_order,
	"order for alice": denied(["delegated tokens are not accepted for this procedure", "the resource is not an order"]),
	"order for bob": denied(["delegated tokens are not accepted for this procedure", "the resource is not an order"]),
	"order for admin": denied(["delegated tokens are not accepted for this procedure", "the resource is not an order"]),
	"order without token": object.union(denied(["a user token is required", "the resource is not an order"]), {"need_user": true}),
	"foreign workload": object.union(denied(["a user token is required", "the resource is not an order"]), {"need_user": true}),
	"no token": object.union(denied(["a user token is required", "the resource is not an order"]), {"need_user": true}),
	"order's token for alice presented by cli": denied(["delegated tokens are not accepted for this procedure", "the resource is not an order"]),
}

a_user := {
	"request": {"id": "alice"},
	"resource": {"kind": "user", "id": "alice", "owner": "alice"},
}

get_order_other_kind := matrix("/order.v1.OrderService/GetOrder", a_user, not_an_order_wants)

test_get_order_resource_of_another_kind if check(get_order_other_kind)

# A resource the handler failed to describe is not taken for the call-level
# decision.
get_order_null_resource := matrix("/order.v1.OrderService/GetOrder", {"request": {"id": "ord_1"}, "resource": null}, not_an_order_wants)

test_get_order_null_resource if check(get_order_null_resource)

get_order_resource_without_owner := matrix("/order.v1.OrderService/GetOrder", {"resource": {"kind": "order", "id": "ord_3"}}, {
	"alice": read_own,
	"bob": read_own,
	"admin": allowed,
	"carol (no roles)": read_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_get_order_resource_without_owner if check(get_order_resource_without_owner)

# ---------------------------------------------------------------------------
# Anything else is denied, and the decision always has its shape
# ---------------------------------------------------------------------------

nobody := denied(["no rule allows /x.v1.Y/Z"])

unknown_procedure := matrix("/x.v1.Y/Z", {"request": {"id": "alice", "user_id": "alice"}}, {who: nobody | some who, _ in principals})

test_unknown_procedure if check(unknown_procedure)

# A procedure named like a known one, or a service without the procedure.
test_near_misses_are_denied if {
	decide({"procedure": "/user.v1.UserService/GetUser/", "peer": peer(cli), "token": admin}) == denied(["no rule allows /user.v1.UserService/GetUser/"])
	decide({"procedure": "/user.v1.userservice/getuser", "peer": peer(cli), "token": admin}) == denied(["no rule allows /user.v1.userservice/getuser"])
	decide({"service": "user.v1.UserService", "method": "GetUser", "peer": peer(cli), "token": admin}) == denied(["no rule allows this request"])
}

test_empty_input if {
	decide({}) == denied(["no rule allows this request"])
}

odd_inputs := [
	{},
	[],
	"/user.v1.UserService/GetUser",
	42,
	null,
	true,
	{"procedure": 42},
	{"procedure": null, "service": null, "peer": null, "token": null, "request": null, "resource": null},
	{"procedure": ["/user.v1.UserService/GetUser"], "token": admin},
	{"procedure": "/user.v1.UserService/GetUser", "peer": "spiffe://palisade.local/svc/order", "token": via(alice, order_svc), "request": "alice"},
	{"service": "grpc.health.v1.Health", "peer": [order_svc]},
	{"procedure": "/order.v1.OrderService/GetOrder", "token": alice, "resource": "order"},
	{"procedure": "/order.v1.OrderService/GetOrder", "token": alice, "resource": {"kind": "order", "owner": ["alice"]}},
]

test_odd_inputs_are_denied if {
	every doc in odd_inputs {
		d := decide(doc)
		d.allow == false
		count(d.reasons) > 0
	}
}

all_cases := [c |
	some m in [
		health_check, health_watch, reflection_v1, reflection_v1alpha,
		login, exchange, exchange_with_request_fields,
		get_user_alice, get_user_bob, get_user_without_id, get_user_without_request, get_user_id_of_wrong_type,
		list_users, create_user, update_user, update_self,
		create_order_alice, create_order_bob, create_order_without_user_id, create_order_without_request,
		list_orders_alice, list_orders_carol, list_orders_without_user_id,
		get_order_call, get_order_alices, get_order_bobs, get_order_other_kind, get_order_null_resource,
		get_order_resource_without_owner, unknown_procedure,
	]
	some c in m
]

# Whatever the input, decision is {"allow": <bool>, "reasons": [<string>...]}
# with reasons empty exactly when allowed.
test_decision_is_always_a_document if {
	inputs := array.concat([c.input | some c in all_cases], odd_inputs)
	count(inputs) > 300
	every doc in inputs {
		d := authz.decision with input as doc
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

reasons_iff_denied(d) if {
	d.allow == true
	d.reasons == []
}

reasons_iff_denied(d) if {
	d.allow == false
	count(d.reasons) > 0
}

# Reasons are shown to the denied caller: they may name the caller's own
# workload and procedure, but no other user (nor an id from the request).
test_reasons_name_no_other_user if {
	every c in all_cases {
		d := decide(c.input)
		every r in d.reasons {
			every name in ["alice", "bob", "carol", "ord_"] {
				not contains(r, name)
			}
		}
	}
}

# ---------------------------------------------------------------------------
# Streams: the user change feed, order import and order tracking
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
	decide(base) == allowed with data.palisade.config.watchers as {order_svc, billing}
	decide(object.union(base, {"peer": peer(order_svc)})) == denied(["workload spiffe://palisade.local/svc/order may not watch user changes"]) with data.palisade.config.watchers as set()
}

test_watch_user_changes_without_workload_identity if {
	decide({"procedure": "/user.v1.UserService/WatchUserChanges"}) == denied(["the caller presented no workload identity"])
}

# ImportOrders, first decision: the client stream opens, no message yet.
import_orders_open := matrix("/order.v1.OrderService/ImportOrders", {"stream_type": "client_stream"}, {
	"alice": allowed,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_import_orders_stream_opens if check(import_orders_open)

# ImportOrders, then every message: the order it carries.
import_for_self := denied(["customers may only import orders for themselves"])

import_orders_wants_for_alice := {
	"alice": allowed,
	"bob": import_for_self,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
}

import_orders_alice := matrix(
	"/order.v1.OrderService/ImportOrders",
	{"stream_type": "client_stream", "request": {"user_id": "alice", "items": items}},
	import_orders_wants_for_alice,
)

test_import_orders_message_for_alice if check(import_orders_alice)

import_orders_wants_without_user_id := object.union(import_orders_wants_for_alice, {"alice": import_for_self})

# A message without user_id (or a null or empty request) names nobody: only
# admins may send it.
import_orders_without_user_id := matrix(
	"/order.v1.OrderService/ImportOrders",
	{"stream_type": "client_stream", "request": {"items": items}},
	import_orders_wants_without_user_id,
)

test_import_orders_message_without_user_id if check(import_orders_without_user_id)

import_orders_null_request := matrix(
	"/order.v1.OrderService/ImportOrders",
	{"stream_type": "client_stream", "request": null},
	import_orders_wants_without_user_id,
)

test_import_orders_null_message if check(import_orders_null_request)

# TrackOrders, first decision: the bidi stream opens.
track_orders_open := matrix("/order.v1.OrderService/TrackOrders", {"stream_type": "bidi_stream"}, {
	"alice": allowed,
	"bob": allowed,
	"admin": allowed,
	"carol (no roles)": role_required,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_track_orders_stream_opens if check(track_orders_open)

# TrackOrders, then every order id sent: the handler has loaded the order.
track_own := denied(["customers may only track their own orders"])

track_orders_alices := matrix("/order.v1.OrderService/TrackOrders", object.union(alices_order, {"stream_type": "bidi_stream"}), {
	"alice": allowed,
	"bob": track_own,
	"admin": allowed,
	"carol (no roles)": track_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_track_orders_alices_order if check(track_orders_alices)

track_orders_without_owner := matrix("/order.v1.OrderService/TrackOrders", {"stream_type": "bidi_stream", "resource": {"kind": "order", "id": "ord_3"}}, {
	"alice": track_own,
	"bob": track_own,
	"admin": allowed,
	"carol (no roles)": track_own,
	"order for alice": delegated_refused,
	"order for bob": delegated_refused,
	"order for admin": delegated_refused,
	"order without token": token_required,
	"foreign workload": token_required,
	"no token": token_required,
	"order's token for alice presented by cli": delegated_refused,
})

test_track_orders_resource_without_owner if check(track_orders_without_owner)

# The reasons are GetOrder's, word for word, for the same faults.
track_orders_other_kind := matrix("/order.v1.OrderService/TrackOrders", a_user, not_an_order_wants)

test_track_orders_resource_of_another_kind if check(track_orders_other_kind)

track_orders_null_resource := matrix("/order.v1.OrderService/TrackOrders", {"resource": null}, not_an_order_wants)

test_track_orders_null_resource if check(track_orders_null_resource)

streaming_cases := [c |
	some m in [
		watch_user_changes,
		import_orders_open, import_orders_alice, import_orders_without_user_id, import_orders_null_request,
		track_orders_open, track_orders_alices, track_orders_without_owner, track_orders_other_kind,
		track_orders_null_resource,
	]
	some c in m
]

# The stream procedures' decisions have the shape of every other's, and
# their reasons name no user and no order either.
test_streaming_decisions_are_documents if {
	count(streaming_cases) == 10 * count(principals)
	every c in streaming_cases {
		d := authz.decision with input as c.input
		object.keys(d) - {"need_user"} == {"allow", "reasons", "request_needed"}
		object.get(d, "need_user", true) == true
		is_boolean(d.request_needed)
		is_boolean(d.allow)
		reasons_iff_denied(d)
		every r in d.reasons {
			is_string(r)
			every name in ["alice", "bob", "carol", "ord_"] {
				not contains(r, name)
			}
		}
	}
}

# ---------------------------------------------------------------------------
# request_needed: which unary calls are settled before their request is read
# ---------------------------------------------------------------------------

# Every procedure the policy knows, and one it does not.
procedures := {
	"/grpc.health.v1.Health/Check",
	"/grpc.health.v1.Health/Watch",
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
	"/user.v1.AuthService/Login",
	"/user.v1.AuthService/ExchangeToken",
	"/user.v1.UserService/GetUser",
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
	"/user.v1.UserService/WatchUserChanges",
	"/order.v1.OrderService/CreateOrder",
	"/order.v1.OrderService/ListOrders",
	"/order.v1.OrderService/GetOrder",
	"/order.v1.OrderService/ImportOrders",
	"/order.v1.OrderService/TrackOrders",
	"/x.v1.Y/Z",
}

# Requests an attacker might send: each user of the principals named in
# every field a rule reads, none, and a request that is not an object.
requests := [
	{},
	{"id": "alice", "user_id": "alice", "items": items},
	{"id": "bob", "user_id": "bob", "user": {"id": "bob"}},
	{"id": "admin", "user_id": "admin"},
	{"id": "carol", "user_id": "carol"},
	{"id": ["alice"], "user_id": ""},
	null,
]

# The first decision of a unary call: its headers are in, its request is not.
before_request(procedure, who) := call(procedure, who, {})

# A decision the policy calls final before the request is read must be
# the one every request gets: allow, reasons and need_user alike. That is
# what lets the server answer without reading the body; a request_free rule
# that claimed too much shows up here. Too many evaluations to run each
# time a policy is loaded, these two are rules, not tests: `go test
# ./policy -run TestDefaultPolicyRequestNeeded` requires both to be empty.
settled_but_changed_by_a_request contains {"procedure": procedure, "who": who, "request": r, "early": before, "got": got} if {
	some procedure in procedures
	some who, _ in principals
	d := authz.decision with input as before_request(procedure, who)
	d.request_needed == false
	before := object.remove(d, {"request_needed"})
	some r in requests
	got := decide(call(procedure, who, {"request": r}))
	got != before
}

# And the calls that wait for their request are those a request changes:
# none waits for a request it cannot use.
waiting_for_a_request_that_changes_nothing contains {"procedure": procedure, "who": who} if {
	some procedure in procedures
	some who, _ in principals
	d := authz.decision with input as before_request(procedure, who)
	d.request_needed == true
	count({decide(call(procedure, who, {"request": r})) | some r in requests}) == 1
}

# How many of the calls above are settled before their request, and how
# many wait for it.
request_needed_counts[needed] := count([1 |
	some procedure in procedures
	some who, _ in principals
	d := authz.decision with input as before_request(procedure, who)
	d.request_needed == needed
]) if some needed in {true, false}

early(procedure, who) := d if d := authz.decision with input as before_request(procedure, who)

# The calls the server answers before reading a body: a caller without a
# token on a procedure that acts for a user (401), an unknown procedure, a
# workload the policy does not admit (403), and the allowed calls that
# depend on the caller alone.
test_what_is_settled_before_the_request if {
	early("/user.v1.UserService/GetUser", "no token") == {
		"allow": false, "reasons": ["a user token is required"], "need_user": true,
		"request_needed": false,
	}
	early("/order.v1.OrderService/CreateOrder", "order without token").request_needed == false
	early("/x.v1.Y/Z", "alice") == {"allow": false, "reasons": ["no rule allows /x.v1.Y/Z"], "request_needed": false}
	early("/grpc.health.v1.Health/Check", "foreign workload") == {
		"allow": false,
		"reasons": ["workload spiffe://elsewhere.example/svc/order is not in trust domain palisade.local"],
		"request_needed": false,
	}
	early("/user.v1.AuthService/ExchangeToken", "alice").request_needed == false
	early("/user.v1.AuthService/Login", "no token") == {"allow": true, "reasons": [], "request_needed": false}
	early("/user.v1.UserService/GetUser", "admin") == {"allow": true, "reasons": [], "request_needed": false}
	early("/order.v1.OrderService/ListOrders", "order for alice").request_needed == false
	early("/order.v1.OrderService/CreateOrder", "carol (no roles)") == {"allow": false, "reasons": ["customer or admin role required"], "request_needed": false}
	early("/user.v1.UserService/GetUser", "order for admin") == {"allow": true, "reasons": [], "request_needed": false}
}

# A customer's own record, order or list depends on the id the request
# names: those calls wait for their request.
test_what_waits_for_the_request if {
	every procedure in ["/user.v1.UserService/GetUser", "/order.v1.OrderService/CreateOrder", "/order.v1.OrderService/ListOrders"] {
		early(procedure, "alice").request_needed == true
		early(procedure, "alice").allow == false
		decide(call(procedure, "alice", {"request": {"id": "alice", "user_id": "alice", "items": items}})) == allowed
	}
	early("/user.v1.UserService/GetUser", "order for alice").request_needed == true
}

test_malformed_tokens_are_settled_before_the_request if {
	every procedure in authz.user_procedures {
		d := authz.decision with input as {"procedure": procedure, "peer": peer(cli), "token": {"sub": "admin", "roles": ["admin"], "act": {"sub": 7}}}
		d == {"allow": false, "reasons": ["the token's sub or act claim is malformed"], "request_needed": false}
	}
}
