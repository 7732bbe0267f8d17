// Package policy is the Open Policy Agent engine of Palisade: Engine is an
// authz.Authorizer, embedded OPA evaluating data.palisade.authz.decision
// against the rego in policy/rego (or a directory or an OPA bundle). Its
// decisions are taken on the input document InputValue builds from an
// authz.Input, and remembered per policy version when the policy is a pure
// function of its input.
//
// A policy version is loaded only after it compiles and passes its own
// rego tests. A version that carries no test is refused too (ErrUntested),
// unless the engine was made WithUntestedPolicies. Engine.Watch polls the
// source; a source it cannot read, and a version it refused, are tried
// again with backoff while the last good policy keeps deciding.
//
// Decisions that need a stored resource (authz.AuthorizeResource) see
// input.resource = {kind, id, owner}; the default policy's GetOrder rules
// use it. A policy that adds "request_needed": false to its decision
// document lets the server settle a unary call before reading its request
// (authz.PreRequestAuthorizer): Engine takes part when the policy mentions
// request_needed.
package policy
