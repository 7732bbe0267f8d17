# Package palisade.authz is the base of every Palisade policy: Palisade
# evaluates data.palisade.authz.decision on every call, with the input
# document described in DESIGN.md ("Policy input"). The base defines that
# decision, denies by default, opens health and reflection to the workloads
# of the trust domain and the token exchange to the delegates, and keeps the
# need_user convention. Each service adds its own rules as a layer: rego
# files in this package that add
#
#   allow if { ... }                  the calls it allows,
#   deny_reasons contains "..." if    why it refuses the others (optional),
#   user_procedures contains "/pkg.v1.Service/Method"
#                                     the procedures that act for a user,
#   request_free if { ... }           the calls no request could change,
#
# and tests of their own (*_test.rego). The rules the base defines here —
# decision, reasons, need_user, need_user_field, request_needed — and the
# default of allow are the base's alone: a layer that defines them is
# refused. Helpers are in data.palisade.lib; configuration is read from
# data.palisade.config: trust_domain and delegates (and whatever the layers
# read), from the layer's data.json or the service's policy data.
#
# The reasons of a denial are shown to the denied caller, so they only ever
# name the caller's own procedure, workload and token, and never what the
# rules compare against.
package palisade.authz

import data.palisade.lib

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
	user_procedure
	not lib.token
}

# user_procedure holds when the procedure called is one of the layer's
# user_procedures: one that acts for a user, and so needs a user token.
user_procedure if input.procedure in data.palisade.authz.user_procedures

default allow := false

# reasons is [] when the call is allowed, and otherwise says why not: the
# sorted deny_reasons, or a generic reason when no rule has one.
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
# need_user. It is true unless a request_free rule holds, and each names
# the calls it covers: a rule that reads input.request must not fall under
# one of them. The layers' tests check their claims with the helpers of
# data.palisade.testing.
default request_needed := true

request_needed := false if request_free

# The base's own procedures read nothing of their request. (The token
# exchange deliberately reads nothing of it: the subject token in it is
# the handler's to verify.)
request_free if input.procedure in {
	"/grpc.health.v1.Health/Check",
	"/grpc.health.v1.Health/Watch",
	"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
	"/palisade.token.v1.TokenService/ExchangeToken",
}

# A call no rule allows or refuses with a reason of its own (an unknown
# procedure) is refused whatever its request says. This only ever settles
# a denial, and binds the layers: a rule that needs the request to allow a
# call must come with a reason for refusing it without.
request_free if {
	not allow
	count(deny_reasons) == 0
}

# A procedure that acts for a user is refused without a token (401), and
# with a token whose sub or act claim is malformed, whatever the request.
request_free if {
	user_procedure
	not lib.token
}

request_free if {
	user_procedure
	lib.token
	not lib.direct
	not lib.delegated
}

# ---------------------------------------------------------------------------
# Health and reflection: any workload of the trust domain, no token needed.
# Each rule starts with an equality on input.service or input.procedure
# against a constant, so OPA's rule index only evaluates the rules of the
# procedure called.
# ---------------------------------------------------------------------------

allow if {
	input.service == "grpc.health.v1.Health"
	lib.in_trust_domain
}

allow if {
	input.service == "grpc.reflection.v1.ServerReflection"
	lib.in_trust_domain
}

allow if {
	input.service == "grpc.reflection.v1alpha.ServerReflection"
	lib.in_trust_domain
}

deny_reasons contains lib.outside_trust_domain if input.service == "grpc.health.v1.Health"

deny_reasons contains lib.outside_trust_domain if input.service == "grpc.reflection.v1.ServerReflection"

deny_reasons contains lib.outside_trust_domain if input.service == "grpc.reflection.v1alpha.ServerReflection"

# ---------------------------------------------------------------------------
# The token exchange (palisade.token.v1.TokenService, served by a token
# issuer): only the delegates, no token needed. The subject token travels
# in the request body and is verified by the handler; these rules
# deliberately read nothing from input.request.
# ---------------------------------------------------------------------------

allow if {
	input.procedure == "/palisade.token.v1.TokenService/ExchangeToken"
	lib.delegate(lib.workload)
}

deny_reasons contains "the caller presented no workload identity" if {
	input.procedure == "/palisade.token.v1.TokenService/ExchangeToken"
	not lib.workload
}

deny_reasons contains msg if {
	input.procedure == "/palisade.token.v1.TokenService/ExchangeToken"
	not lib.delegate(lib.workload)
	msg := sprintf("workload %s may not exchange tokens", [lib.workload])
}

# ---------------------------------------------------------------------------
# Procedures that act for a user (the layers' user_procedures).
# ---------------------------------------------------------------------------

deny_reasons contains "a user token is required" if {
	user_procedure
	not lib.token
}

deny_reasons contains "the token's sub or act claim is malformed" if {
	user_procedure
	lib.token
	not lib.direct
	not lib.delegated
}
