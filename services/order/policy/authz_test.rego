# Tests of the order service's layer (authz.rego, order.rego) on the base
# policy. The engine runs them before it loads the layer; run them with
# `bin/palisade policy test services/order/policy` or `go test
# ./services/order -run TestPolicy -v`.
#
# Most tests are matrices: one procedure and request, every principal below,
# and the exact decision each one must get, reasons included. The
# configuration is pinned (config below), so that a deployment's own data
# cannot fail them.
package palisade.order_test

import data.palisade.authz
import data.palisade.testing

# ---------------------------------------------------------------------------
# Workloads, tokens and principals
# ---------------------------------------------------------------------------

cli := "spiffe://palisade.local/client/cli"

order_svc := "spiffe://palisade.local/svc/order"

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
# Streams: order import and order tracking
# ---------------------------------------------------------------------------

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

test_malformed_tokens if {
	every t in [
		{},
		{"sub": "", "roles": ["admin"]},
		{"sub": "admin", "roles": ["admin"], "act": {"sub": 7}},
	] {
		every procedure in authz.user_procedures {
			decide({"procedure": procedure, "peer": peer(order_svc), "token": t, "request": {"user_id": "admin"}}) == denied(["the token's sub or act claim is malformed"])
		}
	}
	decide({"procedure": "/order.v1.OrderService/ListOrders", "token": {"sub": ""}, "request": {"user_id": ""}}) == denied(["the token's sub or act claim is malformed"])
}

# ---------------------------------------------------------------------------
# Every decision
# ---------------------------------------------------------------------------

all_cases := [c |
	some m in [
		create_order_alice, create_order_bob, create_order_without_user_id, create_order_without_request,
		list_orders_alice, list_orders_carol, list_orders_without_user_id,
		get_order_call, get_order_alices, get_order_bobs, get_order_other_kind, get_order_null_resource,
		get_order_resource_without_owner,
		import_orders_open, import_orders_alice, import_orders_without_user_id, import_orders_null_request,
		track_orders_open, track_orders_alices, track_orders_without_owner, track_orders_other_kind,
		track_orders_null_resource,
	]
	some c in m
]

# Whatever the input, decision is a document with reasons exactly when
# denied, and the reasons name no other user and no order (nor an id from
# the request): they are shown to the denied caller.
test_decisions_are_documents_that_name_no_other_user if {
	count(all_cases) == 22 * count(principals)
	every c in all_cases {
		d := testing.decision(c.input, config)
		object.keys(d) - {"need_user"} == {"allow", "reasons", "request_needed"}
		object.get(d, "need_user", true) == true
		is_boolean(d.request_needed)
		reasons_iff_denied(d)
		every r in d.reasons {
			is_string(r)
			every name in ["alice", "bob", "carol", "ord_"] {
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
	{"id": "bob", "user_id": "bob"},
	{"id": "admin", "user_id": "admin"},
	{"id": "carol", "user_id": "carol"},
	{"id": ["alice"], "user_id": ""},
	null,
]

# The first decision of a unary call: its headers are in, its request is not.
calls := {call(p, who, {}) | some p in procedures; some who, _ in principals}

# Too many evaluations to run each time the layer is loaded, these are
# rules, not tests: `go test ./services/order -run TestPolicyRequestNeeded`
# requires the first two to be empty.
settled_but_changed_by_a_request := testing.settled_but_changed(calls, requests, config)

waiting_for_a_request_that_changes_nothing := testing.waiting_for_nothing(calls, requests, config)

request_needed_counts := testing.request_needed_counts(calls, config)

early(procedure, who) := testing.decision(call(procedure, who, {}), config)

test_what_is_settled_before_the_request if {
	early("/order.v1.OrderService/CreateOrder", "order without token") == {
		"allow": false, "reasons": ["a user token is required"], "need_user": true,
		"request_needed": false,
	}
	early("/order.v1.OrderService/ListOrders", "order for alice") == object.union(delegated_refused, {"request_needed": false})
	early("/order.v1.OrderService/CreateOrder", "carol (no roles)") == {"allow": false, "reasons": ["customer or admin role required"], "request_needed": false}
	early("/order.v1.OrderService/CreateOrder", "admin") == {"allow": true, "reasons": [], "request_needed": false}
	early("/order.v1.OrderService/GetOrder", "alice") == {"allow": true, "reasons": [], "request_needed": false}
}

# A customer's own order or list depends on the user the request names:
# those calls wait for their request.
test_what_waits_for_the_request if {
	every procedure in ["/order.v1.OrderService/CreateOrder", "/order.v1.OrderService/ListOrders"] {
		early(procedure, "alice").request_needed == true
		early(procedure, "alice").allow == false
		decide(call(procedure, "alice", {"request": {"user_id": "alice", "items": items}})) == allowed
	}
}
