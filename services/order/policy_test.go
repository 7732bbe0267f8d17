package order_test

import (
	"testing"

	"github.com/palisade-rpc/palisade/services/internal/layertest"
	"github.com/palisade-rpc/palisade/services/order"
)

// TestPolicy runs the rego tests of the order service's layer on the base
// policy, as the engine does before it loads it: every one passes, and the
// layer's policy files are fully covered.
func TestPolicy(t *testing.T) {
	t.Parallel()
	layertest.Tests(t, layertest.Layer(t, order.Policy(), "services/order/policy"), 10)
}

// TestPolicyRequestNeeded checks the layer's request_free claims against
// what requests do (see layertest.RequestNeeded).
func TestPolicyRequestNeeded(t *testing.T) {
	t.Parallel()
	layertest.RequestNeeded(t, layertest.Layer(t, order.Policy(), "services/order/policy"), "data.palisade.order_test", 55, 7)
}
