// Package protovalue converts protobuf messages to OPA values: the request
// document of the policy input (policy.MessageValue). It imports OPA's ast
// and protobuf only, so its fuzz target (make test-fuzz) instruments and
// builds that much rather than the policy engine's whole tree.
package protovalue

import (
	"bytes"
	"encoding/base64"
	"math"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Message converts m to an OPA object keyed by proto field names (user_id,
// not userId), with the fields that are set (as protojson omits unset
// ones). Integers are numbers, enums their value names, bytes base64,
// Timestamps and Durations their protojson strings, FieldMasks arrays of
// paths, other well-known types their protojson form.
func Message(m protoreflect.Message) ast.Value {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp":
		if ts, ok := m.Interface().(*timestamppb.Timestamp); ok {
			return ast.String(ts.AsTime().UTC().Format("2006-01-02T15:04:05.999999999Z07:00"))
		}
	case "google.protobuf.Duration":
		if d, ok := m.Interface().(*durationpb.Duration); ok {
			return ast.String(d.AsDuration().String())
		}
	case "google.protobuf.FieldMask":
		if fm, ok := m.Interface().(*fieldmaskpb.FieldMask); ok {
			return Strings(fm.GetPaths()).Value
		}
	}
	if m.Descriptor().FullName().Parent() == "google.protobuf" {
		// Other well-known types (wrappers, Struct, Any, …): their protojson
		// form is what a policy author expects.
		if data, err := protojson.Marshal(m.Interface()); err == nil {
			if v, err := ast.ValueFromReader(bytes.NewReader(data)); err == nil {
				return v
			}
		}
		return ast.Null{}
	}
	obj := ast.NewObject()
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		obj.Insert(ast.StringTerm(string(fd.Name())), ast.NewTerm(fieldValue(fd, v)))
		return true
	})
	return obj
}

func fieldValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) ast.Value {
	switch {
	case fd.IsList():
		l := v.List()
		terms := make([]*ast.Term, l.Len())
		for i := range terms {
			terms[i] = ast.NewTerm(scalarValue(fd, l.Get(i)))
		}
		return ast.NewArray(terms...)
	case fd.IsMap():
		obj := ast.NewObject()
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			obj.Insert(ast.StringTerm(k.String()), ast.NewTerm(scalarValue(fd.MapValue(), mv)))
			return true
		})
		return obj
	}
	return scalarValue(fd, v)
}

func scalarValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) ast.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return ast.Boolean(v.Bool())
	case protoreflect.StringKind:
		return ast.String(v.String())
	case protoreflect.BytesKind:
		return ast.String(base64.StdEncoding.EncodeToString(v.Bytes()))
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return ast.String(string(ev.Name()))
		}
		return ast.Number(strconv.FormatInt(int64(v.Enum()), 10))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.Number(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.Number(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return ast.String(strconv.FormatFloat(f, 'g', -1, 64)) // as protojson writes them
		}
		return ast.Number(strconv.FormatFloat(f, 'g', -1, 64))
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return Message(v.Message())
	}
	return ast.Null{}
}

// Strings is ss as an OPA array of strings.
func Strings(ss []string) *ast.Term {
	terms := make([]*ast.Term, len(ss))
	for i, s := range ss {
		terms[i] = ast.StringTerm(s)
	}
	return ast.ArrayTerm(terms...)
}
