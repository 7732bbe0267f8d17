# The user service's layer of the authorization policy (user.v1.UserService
# and user.v1.AuthService), on top of Palisade's base policy: the base
# decides health, reflection and the token exchange
# (palisade.token.v1.TokenService, which the user service serves: its
# delegates are data.palisade.config.delegates), and turns these allow
# rules and deny reasons into the decision. Configuration is data
# (data.json, or the service's policy data): data.palisade.config.delegates,
# the workloads that may act for users, and .watchers, those that may
# follow the change feed.
package palisade.authz

import data.palisade.lib
import data.palisade.user

# The procedures that act for a user, and so need a user token (a caller
# without one is answered 401).
user_procedures contains "/user.v1.UserService/GetUser"

user_procedures contains "/user.v1.UserService/ListUsers"

user_procedures contains "/user.v1.UserService/CreateUser"

user_procedures contains "/user.v1.UserService/UpdateUser"

# Login: any workload of the trust domain; the password is the proof.
allow if {
	input.procedure == "/user.v1.AuthService/Login"
	lib.in_trust_domain
}

deny_reasons contains lib.outside_trust_domain if input.procedure == "/user.v1.AuthService/Login"

# GetUser: a user reads their own record ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.direct
	lib.for_self("id")
}

# ... an admin reads any, with a direct token ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.direct
	user.admin
}

# ... or through a delegate acting for them ...
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.valid_delegation
	user.admin
}

# ... and a delegate reads a user only while acting for that user.
allow if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.valid_delegation
	lib.for_self("id")
}

deny_reasons contains "customers may only read their own user record" if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.direct
	not user.admin
	not lib.for_self("id")
}

deny_reasons contains "a delegated token must be presented by the workload named in its act claim" if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.delegated
	not lib.presented_by_actor
}

deny_reasons contains msg if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.presented_by_actor
	not lib.delegate(lib.actor)
	msg := sprintf("workload %s may not act for users", [lib.actor])
}

deny_reasons contains "a delegate may only read the user it acts for" if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.valid_delegation
	not user.admin
	not lib.for_self("id")
}

# ListUsers, CreateUser, UpdateUser: admins, with a direct token.
allow if {
	input.procedure in user.admin_only
	lib.direct
	user.admin
}

deny_reasons contains "admin role required" if {
	input.procedure in user.admin_only
	lib.direct
	not user.admin
}

deny_reasons contains "delegated tokens are not accepted for this procedure" if {
	input.procedure in user.admin_only
	lib.delegated
}

# WatchUserChanges: the change feed is for the workloads that cache users
# (watchers), subscribing as themselves. A token is refused even from a
# watcher: the feed is not for users, and a stream held open with a user's
# token would end when the token expires.
allow if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	user.watcher
	not lib.token
}

deny_reasons contains "the caller presented no workload identity" if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	not lib.workload
}

deny_reasons contains "a user token may not subscribe to user changes" if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	lib.token
}

deny_reasons contains msg if {
	input.procedure == "/user.v1.UserService/WatchUserChanges"
	not lib.token
	not user.watcher
	msg := sprintf("workload %s may not watch user changes", [lib.workload])
}

# The calls no request could change (see request_needed in the base): the
# procedures none of whose rules read input.request ...
request_free if input.procedure in {
	"/user.v1.AuthService/Login",
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
	"/user.v1.UserService/WatchUserChanges",
}

# ... and GetUser but for a user reading a record, or a delegate the user
# it acts for, whose id only the request names: an admin's (direct or
# through a delegate) is allowed, and a delegated token that is not valid
# refused, whatever the id.
request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.direct
	user.admin
}

request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.delegated
	not lib.valid_delegation
}

request_free if {
	input.procedure == "/user.v1.UserService/GetUser"
	lib.valid_delegation
	user.admin
}
