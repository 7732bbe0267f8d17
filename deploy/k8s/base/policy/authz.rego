# Package palisade.authz is Palisade's default authorization policy: it
# covers the framework's health and reflection services and the sample
# user.v1 and order.v1 services. Palisade evaluates data.palisade.authz.decision
# on every call, with the input document described in DESIGN.md ("Policy
# input"); configuration is read from data.palisade.config (config.rego).
#
# Anything no allow rule below allows is denied. The reasons of a denial are
# shown to the denied caller, so they only ever name the caller's own
# procedure, workload and token, and never what the rules compare against.
package palisade.authz

import data.palisade.config

# decision is the document Palisade asks for. It is always an object
# {"allow": <bool>, "reasons": [<string>, ...], "request_needed": <bool>},
# whatever the input: allow and request_needed are boolean rules with a
# default, and reasons is a chain of else branches ending in a constant, so
# none can be undefined or have two values.
decision := object.union(
	{"allow": allow, "reasons": reasons, "request_needed": request_needed},
	need_user_field,
)

# need_user_field marks a denial that a user token would have changed: the
# procedure acts for a user and the caller presented none. Palisade then
# answers unauthenticated (401) instead of permission_denied (403).
need_user_field := {"need_user": true} if {
	not allow
	need_user
} else := {}

need_user if {
	input.procedure in user_procedures
	not token
}

default allow := false

# reasons is [] when the call is allowed, and otherwise says why not: the
# sorted deny_reasons, or a generic reason when no rule below has one.
reasons := [] if {
	allow
} else := sort(deny_reasons) if {
	count(deny_reasons) > 0
} else := [sprintf("no rule allows %s", [input.procedure])] if {
	is_string(input.procedure)
} else := ["no rule allows this request"]

# request_needed says whether input.request could change this decision.
# Palisade asks for the decision of a unary call twice at most: first as
# soon as the call's headers are in, without input.request; where that
# answer says request_needed: false it is final — a denial is sent before a
# byte of the request body is read, an allow is the call's decision — and
# otherwise the call is decided again once its request is read. (Streams
# are decided when they open, without a request, and per message with it;
# for them the field changes nothing.)
#
# So it may be false only when no request could change allow, reasons or
# need_user. It is true unless a request_free rule below holds, and those
# name the procedures they cover: a rule added that reads input.request
# must not fall under one of them (the tests in authz_test.rego try every
# procedure, principal and a range of requests).
default request_needed := true

request_needed := false if request_free

# The procedures none of whose rules read input.request. (ExchangeToken
# deliberately reads nothing of its request.)
request_free if input.procedure in {
	"/grpc.health.v1.Health/Check",
	"/grpc.health.v1.Health/Watch",
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
	"/user.v1.AuthService/Login",
	"/user.v1.AuthService/ExchangeToken",
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
	"/user.v1.UserService/WatchUserChanges",
	"/order.v1.OrderService/GetOrder",
	"/order.v1.OrderService/TrackOrders",
}

# A call no rule allows or refuses with a reason of its own (an unknown
# procedure) is refused whatever its request says. This only ever settles
# a denial: a rule that needs the request to allow a call must come with a
# reason for refusing it without.
request_free if {
	not allow
	count(deny_reasons) == 0
}

# The others (GetUser, CreateOrder, ListOrders, ImportOrders) read the
# request through for_self and message_level, but not for every caller.
# They act for a user: without a token they are refused (401), and a token
# whose sub or act claim is malformed is refused, whatever the request ...
request_free if {
	input.procedure in user_procedures
	not token
}

request_free if {
	input.procedure in user_procedures
	token
	not direct
	not delegated
}

# ... as is a delegated token where only direct ones are accepted ...
request_free if {
	input.procedure in direct_only
	delegated
}

# ... and their admin rules read no request.
request_free if {
	input.procedure in user_procedures
	direct
	admin
}

# CreateOrder and ImportOrders refuse a user who is neither customer nor
# admin, whatever the order.
request_free if {
	input.procedure in {"/order.v1.OrderService/CreateOrder", "/order.v1.OrderService/ImportOrders"}
	direct
	not customer
	not admin
}

# GetUser through a delegate reads the request only when the order service
# reads, for a user who is not an admin, the user it acts for: a delegation
# that is not valid is refused, an admin's allowed, and another delegate's
# for a non-admin refused, whatever the id.
request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	delegated
	not valid_delegation
}

request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	admin
}

request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	actor != config.order_service
}

# ---------------------------------------------------------------------------
# The caller
# ---------------------------------------------------------------------------

# workload is the calling workload's SPIFFE ID, from its client certificate.
workload := input.peer.spiffe_id if is_string(input.peer.spiffe_id)

in_trust_domain if startswith(workload, sprintf("spiffe://%s/", [config.trust_domain]))

# token is the claims of the verified token the caller presented; undefined
# when the caller presented none.
token := input.token if is_object(input.token)

# user is the user the token speaks for.
user := token.sub if {
	is_string(token.sub)
	token.sub != ""
}

# A direct token is one a user presents themselves: it has no act claim, or
# a null one.
direct if {
	user
	not has_act
}

has_act if token.act != null

# A delegated token was issued by ExchangeToken to a workload that acts for
# the user: act.sub names that workload, the actor.
delegated if actor

actor := token.act.sub if {
	user
	is_string(token.act.sub)
	token.act.sub != ""
}

presented_by_actor if actor == workload

# A delegated token is honoured only when the workload presenting it is the
# actor it names, and that workload is (still) a delegate.
valid_delegation if {
	presented_by_actor
	actor in config.delegates
}

admin if "admin" in token.roles

customer if "customer" in token.roles

# for_self(field) holds when the request field (by its proto name) names the
# token's user.
for_self(field) if user == input.request[field]

# ---------------------------------------------------------------------------
# Allow rules. Each starts with an equality on input.service or
# input.procedure against a constant, so OPA's rule index only evaluates the
# rules of the procedure called.
# ---------------------------------------------------------------------------

# Health and reflection: any workload of the trust domain, no token needed.
allow if {
	input.service == "grpc.health.v1.Health"
	in_trust_domain
}

allow if {
	input.service == "grpc.reflection.v1.ServerReflection"
	in_trust_domain
}

allow if {
	input.service == "grpc.reflection.v1alpha.ServerReflection"
	in_trust_domain
}

# Login: any workload of the trust domain; the password is the proof.
allow if {
	input.procedure == "/user.v1.AuthService/Login"
	in_trust_domain
}

# ExchangeToken: only delegates, no token needed. The subject token travels
# in the request body and is verified by the handler; this rule deliberately
# reads nothing from input.request.
allow if {
	input.procedure == "/user.v1.AuthService/ExchangeToken"
	workload in config.delegates
}

# GetUser: a user reads their own record ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	direct
	for_self("id")
}

# ... an admin reads any, with a direct token ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	direct
	admin
}

# ... or through a delegate acting for them ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	admin
}

# ... and the order service reads a user only while acting for that user.
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	actor == config.order_service
	for_self("id")
}

# ListUsers, CreateUser, UpdateUser: admins, with a direct token.
allow if {
	input.procedure == "/user.v1.UserService/ListUsers"
	direct
	admin
}

allow if {
	input.procedure == "/user.v1.UserService/CreateUser"
	direct
	admin
}

allow if {
	input.procedure == "/user.v1.UserService/UpdateUser"
	direct
	admin
}

# WatchUserChanges: the change feed is for the workloads that cache users
# (config.watchers), subscribing as themselves. A token is refused even
# from a watcher: the feed is not for users, and a stream held open with a
# user's token would end when the token expires.
allow if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	workload in config.watchers
	not token
}

# CreateOrder: a customer orders for themselves (request field user_id), an
# admin for anyone.
allow if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	direct
	customer
	for_self("user_id")
}

allow if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	direct
	admin
}

# ListOrders: a user lists their own orders, an admin anyone's.
allow if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	direct
	for_self("user_id")
}

allow if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	direct
	admin
}

# GetOrder is decided twice. Which order an id names is only known once the
# handler has loaded it, so:
#
#   1. the call-level decision (no input.resource), taken by the interceptor
#      before the handler runs, lets customers and admins ask for an order;
#   2. the handler then loads the order and asks a resource-level decision
#      (authz.AuthorizeResource) with input.resource = {"kind": "order",
#      "id": ..., "owner": <user id>}, allowed for the order's owner and for
#      admins.
allow if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	not resource_level
	direct
	customer
}

allow if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	not resource_level
	direct
	admin
}

allow if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	order_resource
	direct
	input.resource.owner == user
}

allow if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	order_resource
	direct
	admin
}

# ImportOrders (client stream) is decided when the stream opens (no
# input.request): customers and admins may import; and then for every
# message the client sends (input.request is that message): a customer
# imports orders for themselves only, an admin for anyone. The handler
# stores nothing unless every message was allowed.
allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	not message_level
	direct
	customer
}

allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	not message_level
	direct
	admin
}

allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	message_level
	direct
	customer
	for_self("user_id")
}

allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	message_level
	direct
	admin
}

# TrackOrders (bidi stream) is decided like GetOrder: when the stream opens,
# customers and admins may track; then, for every order id the client
# sends, the handler loads the order and asks a resource-level decision,
# allowed for the order's owner and for admins.
allow if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	not resource_level
	direct
	customer
}

allow if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	not resource_level
	direct
	admin
}

allow if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	order_resource
	direct
	input.resource.owner == user
}

allow if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	order_resource
	direct
	admin
}

# message_level holds when a message of a stream is decided: input.request
# is present, whatever its value.
message_level if _ = input.request

# resource_level holds in a resource-level decision: input.resource is
# present, whatever its value, so a resource the handler failed to describe
# (null, wrong kind) is denied rather than taken for the call-level decision.
resource_level if _ = input.resource

order_resource if input.resource.kind == "order"

# ---------------------------------------------------------------------------
# Deny reasons, shown to the denied caller.
# ---------------------------------------------------------------------------

# The procedures that act for a user, and so need a user token.
user_procedures := {
	"/user.v1.UserService/GetUser",
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
	"/order.v1.OrderService/CreateOrder",
	"/order.v1.OrderService/ListOrders",
	"/order.v1.OrderService/GetOrder",
	"/order.v1.OrderService/ImportOrders",
	"/order.v1.OrderService/TrackOrders",
}

# Of those, the ones that accept only a token the user presents themselves.
direct_only := user_procedures - {"/user.v1.UserService/GetUser"}

admin_only := {
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
}

# The calls open to workloads of the trust domain without a token.
trust_domain_call if input.service == "grpc.health.v1.Health"

trust_domain_call if input.service == "grpc.reflection.v1.ServerReflection"

trust_domain_call if input.service == "grpc.reflection.v1alpha.ServerReflection"

trust_domain_call if input.procedure == "/user.v1.AuthService/Login"

deny_reasons contains "the caller presented no workload identity" if {
	trust_domain_call
	not workload
}

deny_reasons contains "the caller presented no workload identity" if {
	input.procedure == "/user.v1.AuthService/ExchangeToken"
	not workload
}

deny_reasons contains msg if {
	trust_domain_call
	not in_trust_domain
	msg := sprintf("workload %s is not in trust domain %s", [workload, config.trust_domain])
}

deny_reasons contains msg if {
	input.procedure == "/user.v1.AuthService/ExchangeToken"
	not workload in config.delegates
	msg := sprintf("workload %s may not exchange tokens", [workload])
}

deny_reasons contains "a user token is required" if {
	input.procedure in user_procedures
	not token
}

deny_reasons contains "the token's sub or act claim is malformed" if {
	input.procedure in user_procedures
	token
	not direct
	not delegated
}

deny_reasons contains "delegated tokens are not accepted for this procedure" if {
	input.procedure in direct_only
	delegated
}

deny_reasons contains "admin role required" if {
	input.procedure in admin_only
	direct
	not admin
}

deny_reasons contains "customers may only read their own user record" if {
	input.procedure == "/user.v1.UserService/GetUser"
	direct
	not admin
	not for_self("id")
}

deny_reasons contains "a delegated token must be presented by the workload named in its act claim" if {
	input.procedure == "/user.v1.UserService/GetUser"
	delegated
	not presented_by_actor
}

deny_reasons contains msg if {
	input.procedure == "/user.v1.UserService/GetUser"
	presented_by_actor
	not actor in config.delegates
	msg := sprintf("workload %s may not act for users", [actor])
}

deny_reasons contains "only the order service may read a user on the user's behalf" if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	not admin
	actor != config.order_service
}

deny_reasons contains "the order service may only read the user it acts for" if {
	input.procedure == "/user.v1.UserService/GetUser"
	valid_delegation
	not admin
	actor == config.order_service
	not for_self("id")
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	direct
	not customer
	not admin
}

deny_reasons contains "customers may only create orders for themselves" if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	direct
	customer
	not admin
	not for_self("user_id")
}

deny_reasons contains "customers may only list their own orders" if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	direct
	not admin
	not for_self("user_id")
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	not resource_level
	direct
	not customer
	not admin
}

deny_reasons contains "the resource is not an order" if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	resource_level
	not order_resource
}

deny_reasons contains "customers may only read their own orders" if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	order_resource
	direct
	not admin
	not input.resource.owner == user
}

deny_reasons contains "the caller presented no workload identity" if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	not workload
}

deny_reasons contains "a user token may not subscribe to user changes" if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	token
}

deny_reasons contains msg if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	not token
	not workload in config.watchers
	msg := sprintf("workload %s may not watch user changes", [workload])
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	direct
	not customer
	not admin
}

deny_reasons contains "customers may only import orders for themselves" if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	message_level
	direct
	customer
	not admin
	not for_self("user_id")
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	not resource_level
	direct
	not customer
	not admin
}

deny_reasons contains "the resource is not an order" if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	resource_level
	not order_resource
}

deny_reasons contains "customers may only track their own orders" if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	order_resource
	direct
	not admin
	not input.resource.owner == user
}
