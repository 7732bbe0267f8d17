package order

import (
	"embed"
	"io/fs"
)

//go:embed policy/*.rego policy/data.json
var policyFiles embed.FS

// Policy returns the order service's layer of the authorization policy
// (services/order/policy): its rules for order.v1.OrderService, their rego
// tests, and data.json, the sample's configuration. Load it with
// policy.LoadFS; the engine runs it on Palisade's base policy.
func Policy() fs.FS {
	sub, err := fs.Sub(policyFiles, "policy")
	if err != nil {
		panic(err) // "policy" is a valid path, fixed at build time
	}
	return sub
}
