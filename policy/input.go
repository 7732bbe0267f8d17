package policy

import (
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/palisade-rpc/palisade/authz"
	"github.com/palisade-rpc/palisade/policy/internal/protovalue"
	"github.com/palisade-rpc/palisade/security"
)

// Keys of the input document, interned once.
var (
	keyProcedure  = ast.StringTerm("procedure")
	keyService    = ast.StringTerm("service")
	keyMethod     = ast.StringTerm("method")
	keyStreamType = ast.StringTerm("stream_type")
	keyPeer       = ast.StringTerm("peer")
	keySPIFFEID   = ast.StringTerm("spiffe_id")
	keyCertSHA256 = ast.StringTerm("cert_sha256")
	keyToken      = ast.StringTerm("token")
	keySub        = ast.StringTerm("sub")
	keyRoles      = ast.StringTerm("roles")
	keyScope      = ast.StringTerm("scope")
	keyAud        = ast.StringTerm("aud")
	keyIss        = ast.StringTerm("iss")
	keyJTI        = ast.StringTerm("jti")
	keyExp        = ast.StringTerm("exp")
	keyAct        = ast.StringTerm("act")
	keyBound      = ast.StringTerm("bound")
	keyRequest    = ast.StringTerm("request")
	keyResource   = ast.StringTerm("resource")
	keyKind       = ast.StringTerm("kind")
	keyID         = ast.StringTerm("id")
	keyOwner      = ast.StringTerm("owner")
	keyHTTP       = ast.StringTerm("http")
	keyProtocol   = ast.StringTerm("protocol")
)

// InputValue builds the policy input document of in (DESIGN.md's "Policy
// input") directly as an OPA value, without a JSON round trip. It holds no
// secret: the token's claims, never the token.
func InputValue(in *authz.Input) ast.Value {
	obj := ast.NewObjectWithCapacity(10)
	obj.Insert(keyProcedure, ast.StringTerm(in.Procedure))
	obj.Insert(keyService, ast.StringTerm(in.Service))
	obj.Insert(keyMethod, ast.StringTerm(in.Method))
	obj.Insert(keyStreamType, ast.StringTerm(in.StreamType))
	if p := in.Principal; p != nil {
		obj.Insert(keyPeer, ast.ObjectTerm(
			ast.Item(keySPIFFEID, ast.StringTerm(p.Workload.ID.String())),
			ast.Item(keyCertSHA256, ast.StringTerm(p.Workload.CertSHA256Hex())),
		))
		if p.User != nil {
			obj.Insert(keyToken, ast.NewTerm(userValue(p.User)))
		}
	}
	if in.Request != nil {
		obj.Insert(keyRequest, ast.NewTerm(MessageValue(in.Request.ProtoReflect())))
	}
	if r := in.Resource; r != nil {
		obj.Insert(keyResource, ast.ObjectTerm(
			ast.Item(keyKind, ast.StringTerm(r.Kind)),
			ast.Item(keyID, ast.StringTerm(r.ID)),
			ast.Item(keyOwner, ast.StringTerm(r.Owner)),
		))
	}
	obj.Insert(keyHTTP, ast.ObjectTerm(
		ast.Item(keyMethod, ast.StringTerm(in.HTTPMethod)),
		ast.Item(keyProtocol, ast.StringTerm(in.Protocol)),
	))
	return obj
}

func userValue(u *security.User) ast.Value {
	act := ast.NullTerm()
	if u.Actor != "" {
		act = ast.ObjectTerm(ast.Item(keySub, ast.StringTerm(u.Actor)))
	}
	return ast.NewObject(
		ast.Item(keySub, ast.StringTerm(u.Subject)),
		ast.Item(keyRoles, protovalue.Strings(u.Roles)),
		ast.Item(keyScope, ast.StringTerm(u.Scope)),
		ast.Item(keyAud, protovalue.Strings(u.Audience)),
		ast.Item(keyIss, ast.StringTerm(u.Issuer)),
		ast.Item(keyJTI, ast.StringTerm(u.TokenID)),
		ast.Item(keyExp, ast.IntNumberTerm(int(u.ExpiresAt.Unix()))),
		ast.Item(keyAct, act),
		ast.Item(keyBound, ast.BooleanTerm(u.CertBound)),
	)
}

// MessageValue converts a protobuf message to an OPA object keyed by proto
// field names (user_id, not userId), with the fields that are set (as
// protojson omits unset ones). Integers are numbers, enums their value
// names, bytes base64, Timestamps and Durations their protojson strings,
// FieldMasks arrays of paths.
func MessageValue(m protoreflect.Message) ast.Value { return protovalue.Message(m) }
