package user

import (
	"embed"
	"io/fs"
)

//go:embed policy/*.rego policy/data.json
var policyFiles embed.FS

// Policy returns the user service's layer of the authorization policy
// (services/user/policy): its rules for user.v1.UserService and
// user.v1.AuthService, their rego tests, and data.json, the sample's
// configuration (the delegates, the change feed's watchers, the trust
// domain). Load it with policy.LoadFS; the engine runs it on Palisade's
// base policy.
func Policy() fs.FS {
	sub, err := fs.Sub(policyFiles, "policy")
	if err != nil {
		panic(err) // "policy" is a valid path, fixed at build time
	}
	return sub
}
