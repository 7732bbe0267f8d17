# Package palisade.lib is the library of Palisade's base policy: who the
# caller is, which token it presented and for whom it acts. Every service's
# layer uses it (`import data.palisade.lib`); it belongs to the base, and a
# layer may not add to it.
#
# The helpers read the input document (DESIGN.md, "Policy input") and the
# configuration under data.palisade.config: trust_domain and delegates.
package palisade.lib

# workload is the calling workload's SPIFFE ID, from its client certificate;
# undefined when the caller presented none.
workload := input.peer.spiffe_id if is_string(input.peer.spiffe_id)

# trust_domain is the SPIFFE trust domain whose workloads the policy knows
# (data.palisade.config.trust_domain); undefined when none is configured.
trust_domain := data.palisade.config.trust_domain if is_string(data.palisade.config.trust_domain)

# in_trust_domain holds when the caller is a workload of trust_domain.
in_trust_domain if startswith(workload, sprintf("spiffe://%s/", [trust_domain]))

# outside_trust_domain is why the caller is not a workload of the trust
# domain, a reason to show it; undefined when it is one.
outside_trust_domain := "the caller presented no workload identity" if {
	not workload
} else := "no trust domain is configured" if {
	not trust_domain
} else := sprintf("workload %s is not in trust domain %s", [workload, trust_domain]) if {
	not in_trust_domain
}

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

# A delegated token was issued by the token exchange to a workload that
# acts for the user: act.sub names that workload, the actor.
delegated if actor

actor := token.act.sub if {
	user
	is_string(token.act.sub)
	token.act.sub != ""
}

# presented_by_actor holds when the workload presenting a delegated token is
# the one it was issued to.
presented_by_actor if actor == workload

# delegate(id) holds when the workload id is on the delegation allow-list,
# data.palisade.config.delegates: it may exchange a user's token for one
# that lets it act for the user, and present such tokens.
delegate(id) if id in data.palisade.config.delegates

# A delegated token is honoured only when the workload presenting it is the
# actor it names, and that workload is (still) a delegate.
valid_delegation if {
	presented_by_actor
	delegate(actor)
}

# has_role(r) holds when the token's roles list r.
has_role(r) if r in token.roles

# for_self(field) holds when the request field (by its proto name) names the
# token's user.
for_self(field) if user == input.request[field]
