// Command ordersvc serves the sample order service (order.v1.OrderService)
// over mTLS. Before it accepts an order it asks the user service, with its
// own workload certificate and a token delegated by the caller's user,
// whether the user exists and is active.
package main

import (
	"github.com/palisade-rpc/palisade/kit"
	"github.com/palisade-rpc/palisade/services/order"
)

func main() {
	var svc ordersvc
	kit.Main("ordersvc", svc.setup,
		kit.WithDescription(description),
		kit.WithPolicy(order.Policy()),
		kit.WithAddr("127.0.0.1:9443"),
		kit.WithFlags(svc.define),
		// Tokens are verified with the user service's keys, fetched over
		// the same balanced client as the calls to it.
		kit.WithTokenVerifier(svc.build),
		kit.WithServerOptions(order.ServerOptions()...))
}
