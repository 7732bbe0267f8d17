# The order service's layer of the authorization policy (order.v1.OrderService),
# on top of Palisade's base policy: the base decides health and reflection,
# and turns these allow rules and deny reasons into the decision. Every
# procedure acts for a user, who presents their own token: a delegated
# token is refused.
package palisade.authz

import data.palisade.lib
import data.palisade.order

# The procedures that act for a user, and so need a user token (a caller
# without one is answered 401).
user_procedures contains "/order.v1.OrderService/CreateOrder"

user_procedures contains "/order.v1.OrderService/ListOrders"

user_procedures contains "/order.v1.OrderService/GetOrder"

user_procedures contains "/order.v1.OrderService/ImportOrders"

user_procedures contains "/order.v1.OrderService/TrackOrders"

deny_reasons contains "delegated tokens are not accepted for this procedure" if {
	input.procedure in user_procedures
	lib.delegated
}

# CreateOrder: a customer orders for themselves (request field user_id), an
# admin for anyone.
allow if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	lib.direct
	order.customer
	lib.for_self("user_id")
}

allow if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	lib.direct
	order.admin
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	lib.direct
	not order.customer
	not order.admin
}

deny_reasons contains "customers may only create orders for themselves" if {
	input.procedure == "/order.v1.OrderService/CreateOrder"
	lib.direct
	order.customer
	not order.admin
	not lib.for_self("user_id")
}

# ListOrders: a user lists their own orders, an admin anyone's.
allow if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	lib.direct
	lib.for_self("user_id")
}

allow if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	lib.direct
	order.admin
}

deny_reasons contains "customers may only list their own orders" if {
	input.procedure == "/order.v1.OrderService/ListOrders"
	lib.direct
	not order.admin
	not lib.for_self("user_id")
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
#
# TrackOrders (bidi stream) is decided alike: when the stream opens,
# customers and admins may track; then, for every order id the client
# sends, the handler loads the order and asks a resource-level decision
# (order.resource_procedures are these two).
allow if {
	input.procedure in order.resource_procedures
	not order.resource_level
	lib.direct
	order.customer
}

allow if {
	input.procedure in order.resource_procedures
	not order.resource_level
	lib.direct
	order.admin
}

allow if {
	input.procedure in order.resource_procedures
	order.order_resource
	lib.direct
	order.owner
}

allow if {
	input.procedure in order.resource_procedures
	order.order_resource
	lib.direct
	order.admin
}

deny_reasons contains "customer or admin role required" if {
	input.procedure in order.resource_procedures
	not order.resource_level
	lib.direct
	not order.customer
	not order.admin
}

deny_reasons contains "the resource is not an order" if {
	input.procedure in order.resource_procedures
	order.resource_level
	not order.order_resource
}

deny_reasons contains "customers may only read their own orders" if {
	input.procedure == "/order.v1.OrderService/GetOrder"
	order.order_resource
	lib.direct
	not order.admin
	not order.owner
}

deny_reasons contains "customers may only track their own orders" if {
	input.procedure == "/order.v1.OrderService/TrackOrders"
	order.order_resource
	lib.direct
	not order.admin
	not order.owner
}

# ImportOrders (client stream) is decided when the stream opens (no
# input.request): customers and admins may import; and then for every
# message the client sends (input.request is that message): a customer
# imports orders for themselves only, an admin for anyone. The handler
# stores nothing unless every message was allowed.
allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	not order.message_level
	lib.direct
	order.customer
}

allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	lib.direct
	order.admin
}

allow if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	order.message_level
	lib.direct
	order.customer
	lib.for_self("user_id")
}

deny_reasons contains "customer or admin role required" if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	lib.direct
	not order.customer
	not order.admin
}

deny_reasons contains "customers may only import orders for themselves" if {
	input.procedure == "/order.v1.OrderService/ImportOrders"
	order.message_level
	lib.direct
	order.customer
	not order.admin
	not lib.for_self("user_id")
}

# The calls no request could change (see request_needed in the base):
# GetOrder and TrackOrders read the stored order (input.resource), never
# the request ...
request_free if input.procedure in order.resource_procedures

# ... a delegated token is refused and an admin allowed whatever the
# request ...
request_free if {
	input.procedure in user_procedures
	lib.delegated
}

request_free if {
	input.procedure in user_procedures
	lib.direct
	order.admin
}

# ... and CreateOrder and ImportOrders refuse a user who is neither
# customer nor admin, whatever the order.
request_free if {
	input.procedure in {"/order.v1.OrderService/CreateOrder", "/order.v1.OrderService/ImportOrders"}
	lib.direct
	not order.customer
	not order.admin
}
