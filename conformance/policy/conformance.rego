# Package palisade.authz is the policy of the conformance server: it admits
# the Connect conformance runner to the suite's ConformanceService, and
# nothing else. The runner's client certificate is pinned by the server as
# one of two workloads, which decide what the calls must prove:
#
#   - protocol: the runner's default suite, which sends no tokens; the
#     workload alone is enough.
#   - users:    the token suite; every call needs a verified user token with
#     the role "conformance". Without a token the answer is unauthenticated
#     (need_user), with a token lacking the role permission_denied.
package palisade.authz

service := "connectrpc.conformance.v1.ConformanceService"

protocol_client := "spiffe://palisade.local/client/conformance"

users_client := "spiffe://palisade.local/client/conformance-users"

role := "conformance"

decision := object.union({"allow": allow, "reasons": reasons}, need_user_field)

default allow := false

allow if {
	input.service == service
	input.peer.spiffe_id == protocol_client
}

allow if {
	input.service == service
	input.peer.spiffe_id == users_client
	role in input.token.roles
}

need_user_field := {"need_user": true} if {
	not allow
	input.service == service
	input.peer.spiffe_id == users_client
	not input.token
} else := {}

reasons := [] if {
	allow
} else := ["a user token is required"] if {
	need_user_field.need_user
} else := [sprintf("user %s lacks the role %s", [input.token.sub, role])] if {
	input.service == service
	input.peer.spiffe_id == users_client
} else := ["only the conformance runner may call the conformance service"]
