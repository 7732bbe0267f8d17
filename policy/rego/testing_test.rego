# Package palisade.testing holds helpers for the rego tests of a layer. It
# is a test file: it is loaded with the tests (the engine's own, `palisade
# policy test`), never with the policy that decides.
#
# Its functions check a layer's request_free claims: a decision that says
# request_needed: false is final before the request is read, so it must be
# the one every request gets. Run them over every procedure of the layer,
# every kind of caller and the requests an attacker might send, with the
# configuration the tests pin; too many evaluations for a rego test run at
# each load, they are meant for a Go test (see services/user's
# TestPolicyRequestNeeded) or `opa eval`.
package palisade.testing

import data.palisade.authz

# decision(doc, config) is the decision for the input document doc with
# data.palisade.config replaced by config.
decision(doc, config) := d if {
	d := authz.decision with input as doc with data.palisade.config as config
}

# decide(doc, config) is decision(doc, config) without its request_needed.
decide(doc, config) := object.remove(decision(doc, config), {"request_needed"})

# settled_but_changed(calls, requests, config) is the set of the calls (input
# documents without a request) that the policy settles before their request
# but whose decision a request of requests changes. It must be empty: a
# request_free rule that holds for one of them claims too much.
settled_but_changed(calls, requests, config) := {{"input": c, "request": r, "early": early, "got": got} |
	some c in calls
	d := decision(c, config)
	d.request_needed == false
	early := object.remove(d, {"request_needed"})
	some r in requests
	got := decide(object.union(c, {"request": r}), config)
	got != early
}

# waiting_for_nothing(calls, requests, config) is the set of the calls that
# wait for their request although no request of requests changes their
# decision. It should be empty: each costs a request read for nothing.
waiting_for_nothing(calls, requests, config) := {c |
	some c in calls
	decision(c, config).request_needed == true
	count({decide(object.union(c, {"request": r}), config) | some r in requests}) == 1
}

# request_needed_counts(calls, config) counts the calls settled before their
# request ("false") and those that wait for it ("true").
request_needed_counts(calls, config) := {json.marshal(needed): n |
	some needed in {true, false}
	n := count([1 | some c in calls; decision(c, config).request_needed == needed])
}
