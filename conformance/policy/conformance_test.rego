# Tests of conformance.rego; the engine runs them before it loads the policy.
package palisade.authz_test

import data.palisade.authz

unary := "/connectrpc.conformance.v1.ConformanceService/Unary"

call(peer, token) := {
	"procedure": unary,
	"service": "connectrpc.conformance.v1.ConformanceService",
	"method": "Unary",
	"stream_type": "unary",
	"peer": {"spiffe_id": peer, "cert_sha256": "00"},
	"token": token,
}

tokenless(peer) := object.remove(call(peer, {}), ["token"])

member := {"sub": "alice", "roles": ["conformance"]}

outsider := {"sub": "mallory", "roles": ["customer"]}

test_protocol_client_needs_no_token if {
	authz.decision == {"allow": true, "reasons": []} with input as tokenless(authz.protocol_client)
	authz.decision == {"allow": true, "reasons": []} with input as call(authz.protocol_client, outsider)
}

test_users_client_with_the_role if {
	authz.decision == {"allow": true, "reasons": []} with input as call(authz.users_client, member)
}

test_users_client_without_a_token_needs_a_user if {
	authz.decision == {"allow": false, "need_user": true, "reasons": ["a user token is required"]} with input as tokenless(authz.users_client)
}

test_users_client_without_the_role_is_denied if {
	authz.decision == {"allow": false, "reasons": ["user mallory lacks the role conformance"]} with input as call(authz.users_client, outsider)
}

test_other_workloads_and_services_are_denied if {
	denied := {"allow": false, "reasons": ["only the conformance runner may call the conformance service"]}
	authz.decision == denied with input as call("spiffe://palisade.local/client/cli", member)
	authz.decision == denied with input as object.union(call(authz.protocol_client, member), {"service": "user.v1.UserService"})
	authz.decision == denied with input as object.union(tokenless(authz.users_client), {"service": "grpc.health.v1.Health"})
}
