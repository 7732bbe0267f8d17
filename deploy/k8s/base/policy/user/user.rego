# Package palisade.user holds the helpers of the user service's rules
# (authz.rego).
package palisade.user

import data.palisade.lib

admin if lib.has_role("admin")

# The procedures for admins only, with a token they present themselves.
admin_only := {
	"/user.v1.UserService/ListUsers",
	"/user.v1.UserService/CreateUser",
	"/user.v1.UserService/UpdateUser",
}

# watcher holds when the caller may subscribe to the change feed: a workload
# listed in data.palisade.config.watchers.
watcher if lib.workload in data.palisade.config.watchers
