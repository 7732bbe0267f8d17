package user_test

import (
	"testing"

	"github.com/palisade-rpc/palisade/services/internal/layertest"
	"github.com/palisade-rpc/palisade/services/user"
)

// TestPolicy runs the rego tests of the user service's layer on the base
// policy, as the engine does before it loads it: every one passes, and the
// layer's policy files are fully covered.
func TestPolicy(t *testing.T) {
	t.Parallel()
	layertest.Tests(t, layertest.Layer(t, user.Policy(), "services/user/policy"), 10)
}

// TestPolicyRequestNeeded checks the layer's request_free claims against
// what requests do (see layertest.RequestNeeded).
func TestPolicyRequestNeeded(t *testing.T) {
	t.Parallel()
	layertest.RequestNeeded(t, layertest.Layer(t, user.Policy(), "services/user/policy"), "data.palisade.user_test", 80, 5)
}
