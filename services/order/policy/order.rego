# Package palisade.order holds the helpers of the order service's rules
# (authz.rego).
package palisade.order

import data.palisade.lib

admin if lib.has_role("admin")

# The procedures decided again with the stored order (input.resource).
resource_procedures := {"/order.v1.OrderService/GetOrder", "/order.v1.OrderService/TrackOrders"}

customer if lib.has_role("customer")

# message_level holds when a message of a stream is decided: input.request
# is present, whatever its value.
message_level if _ = input.request

# resource_level holds in a resource-level decision: input.resource is
# present, whatever its value, so a resource the handler failed to describe
# (null, wrong kind) is denied rather than taken for the call-level decision.
resource_level if _ = input.resource

order_resource if input.resource.kind == "order"

# owner holds when the order of a resource-level decision is the token's
# user's.
owner if input.resource.owner == lib.user
