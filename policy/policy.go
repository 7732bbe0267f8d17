// Package policy is the Open Policy Agent engine of Palisade: Engine is an
// authz.Authorizer, embedded OPA evaluating data.palisade.authz.decision.
// Its decisions are taken on the input document InputValue builds from an
// authz.Input, and remembered per policy version when the policy is a pure
// function of its input.
//
// A policy is layered. The framework's base (Base: policy/rego) defines the
// decision document, denies by default, opens health and reflection to the
// trust domain and the token exchange to the delegates, and keeps the
// need_user convention; package palisade.lib holds the helpers. Each
// service brings one layer — its own allow rules, deny reasons and
// user_procedures, with their tests — read from the files it embeds
// (LoadFS), a directory (LoadDir) or an OPA bundle (ReadBundle,
// BundleLoader). Lists that are configuration (the delegates, the trust
// domain, a service's own) are data: the layer's data.json, or WithData.
//
// A version of the layer is loaded only after the base and it compile and
// the layer's own rego tests pass. A layer that carries no test is refused
// too (ErrUntested), unless the engine was made WithUntestedPolicies, and so
// is a layer that redefines what is the base's. Engine.Watch polls the
// layer's source; a source it cannot read, and a version it refused, are
// tried again with backoff while the last good policy keeps deciding.
//
// A BundleSource follows a bundle server with OPA's downloader (ETags, long
// polling, signed bundles), through the same gate, and keeps the last good
// bundle on disk for a start without the server.
//
// Decisions that need a stored resource (authz.AuthorizeResource) see
// input.resource = {kind, id, owner}. A decision document saying
// "request_needed": false lets the server settle a unary call before
// reading its request (authz.PreRequestAuthorizer): the base says so for
// the calls no request could change, and the layers' request_free rules add
// theirs.
package policy
