package policy_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing/fstest"

	"github.com/open-policy-agent/opa/v1/ast"

	"github.com/palisade-rpc/palisade/policy"
)

// A service's layer of the policy: one allow rule for its procedure, on
// Palisade's base policy, with the rego test the engine runs before it
// loads the layer (a layer without tests is refused).
var inventoryLayer = fstest.MapFS{
	"inventory.rego": {Data: []byte(`package palisade.authz

import data.palisade.lib

user_procedures contains "/inventory.v1.InventoryService/ListItems"

# A user lists their own items.
allow if {
	input.procedure == "/inventory.v1.InventoryService/ListItems"
	lib.direct
	lib.for_self("owner_id")
}
`)},
	"inventory_test.rego": {Data: []byte(`package inventory_test

import data.palisade.authz

test_own_items if {
	authz.decision.allow with input as {
		"procedure": "/inventory.v1.InventoryService/ListItems",
		"peer": {"spiffe_id": "spiffe://palisade.local/client/cli"},
		"token": {"sub": "alice", "roles": [], "act": null},
		"request": {"owner_id": "alice"},
	}
}
`)},
	"data.json": {Data: []byte(`{"palisade": {"config": {"trust_domain": "palisade.local"}}}`)},
}

// ExampleNewEngine loads a service's layer (as kit.WithPolicy does with
// the files a service embeds) and asks it for decisions. A Palisade server
// asks the engine (an authz.Authorizer) for every call; Eval takes the
// input document directly, as `palisade policy eval` does.
func ExampleNewEngine() {
	ctx := context.Background()
	layer, err := policy.LoadFS(inventoryLayer, "inventory layer")
	if err != nil {
		panic(err)
	}
	engine, err := policy.NewEngine(ctx, layer, policy.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err) // a layer that does not compile, or whose tests fail, is refused
	}
	for _, owner := range []string{"alice", "bob"} {
		input := ast.MustParseTerm(`{
			"procedure": "/inventory.v1.InventoryService/ListItems",
			"service": "inventory.v1.InventoryService", "method": "ListItems",
			"peer": {"spiffe_id": "spiffe://palisade.local/client/cli"},
			"token": {"sub": "alice", "roles": ["customer"], "act": null},
			"request": {"owner_id": "` + owner + `"}}`).Value
		d, err := engine.Eval(ctx, input)
		if err != nil {
			panic(err)
		}
		fmt.Printf("alice lists %s's items: allow=%v\n", owner, d.Allow)
	}
	// A call without a token to a procedure that acts for a user.
	d, err := engine.Eval(ctx, ast.MustParseTerm(`{
		"procedure": "/inventory.v1.InventoryService/ListItems",
		"peer": {"spiffe_id": "spiffe://palisade.local/client/cli"},
		"request": {"owner_id": "alice"}}`).Value)
	if err != nil {
		panic(err)
	}
	fmt.Printf("no token: allow=%v need_user=%v\n", d.Allow, d.NeedsUser)
	// Output:
	// alice lists alice's items: allow=true
	// alice lists bob's items: allow=false
	// no token: allow=false need_user=true
}
