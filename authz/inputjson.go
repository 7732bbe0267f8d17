package authz

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// InputMask says what a decision log leaves out of the input documents it
// records. Whatever the mask, request fields marked sensitive in their
// .proto (the debug_redact field option) are left out: they never leave the
// process in clear. A nil *InputMask leaves out those fields only.
//
// A mask's paths are written as Open Policy Agent's decision log masks
// are: from the root of the decision log event, "/input/request/email",
// one segment per object member (percent-escaped, as in a URL path) or
// array index ("/input/request/items/0/note"). A path that names nothing
// in an input leaves it as it is. The paths a mask erased from an input
// are reported with it, as OPA's "erased".
type InputMask struct {
	root *maskNode // below "/input"; nil when only the sensitive fields go
	all  bool      // "/input": the whole input goes
}

type maskNode struct {
	erase    bool
	children map[string]*maskNode
}

// maxMaskPaths bounds a mask, which is configuration, not input.
const maxMaskPaths = 1024

// NewInputMask returns a mask erasing paths. A path that does not start
// with "/input", has an empty segment or a bad escape is an error.
func NewInputMask(paths ...string) (*InputMask, error) {
	if len(paths) > maxMaskPaths {
		return nil, fmt.Errorf("authz: input mask: %d paths, at most %d", len(paths), maxMaskPaths)
	}
	m := &InputMask{}
	for _, p := range paths {
		rest, ok := strings.CutPrefix(p, "/input")
		if !ok || (rest != "" && rest[0] != '/') {
			return nil, fmt.Errorf("authz: input mask %q: a path starts with /input/", p)
		}
		if rest == "" {
			m.all = true
			continue
		}
		if m.root == nil {
			m.root = &maskNode{}
		}
		n := m.root
		for seg := range strings.SplitSeq(rest[1:], "/") {
			name, err := url.PathUnescape(seg)
			if err != nil || name == "" {
				return nil, fmt.Errorf("authz: input mask %q: segment %q: not a member name or index", p, seg)
			}
			if n.children == nil {
				n.children = map[string]*maskNode{}
			}
			next := n.children[name]
			if next == nil {
				next = &maskNode{}
				n.children[name] = next
			}
			n = next
		}
		n.erase = true
	}
	return m, nil
}

// AppendJSON appends to dst the input document of in — what a policy
// decides on (DESIGN.md, "Policy input"): the procedure, the peer, the
// token's claims (never the token), the request in its protojson form with
// proto field names, the resource, the HTTP method and protocol — as JSON,
// without the sensitive request fields and the paths m erases. It returns
// the extended buffer and the paths erased from this input, as
// "/input/request/password". When m erases "/input" itself, nothing is
// appended.
//
// The document is the one package policy evaluates (policy.InputValue):
// fed to `palisade policy eval`, a logged input is decided as the call was,
// unless something was erased.
func (m *InputMask) AppendJSON(dst []byte, in *Input) ([]byte, []string) {
	if m != nil && m.all {
		return dst, []string{"/input"}
	}
	w := inputWriter{buf: dst}
	var root *maskNode
	if m != nil {
		root = m.root
	}
	w.input(root, in)
	return w.buf, w.erased
}

// inputWriter writes an input document, keeping the path it is at so that
// it can name what it erases.
type inputWriter struct {
	buf    []byte
	path   []pathSegment // below /input
	erased []string
}

type pathSegment struct {
	name  string
	index int // an array element's; -1 for an object member
}

// object writes a JSON object whose members members writes, each through
// the member function it is given.
type object struct {
	w     *inputWriter
	node  *maskNode
	first bool
}

func (w *inputWriter) object(node *maskNode) object {
	w.buf = append(w.buf, '{')
	return object{w: w, node: node, first: true}
}

func (o *object) end() { o.w.buf = append(o.w.buf, '}') }

// member starts the member name, unless the mask erases it; it returns
// the mask below the member and whether to write its value.
func (o *object) member(name string) (*maskNode, bool) { return o.memberOf(name, false) }

// memberOf is member for a value that is opaque to the mask when opaque is
// set: a well-known type, written whole. A path below such a value erases
// it whole, rather than leave what the path names.
func (o *object) memberOf(name string, opaque bool) (*maskNode, bool) {
	var child *maskNode
	if o.node != nil {
		if child = o.node.children[name]; child != nil && (child.erase || opaque && len(child.children) > 0) {
			o.w.erase(name)
			return nil, false
		}
	}
	if !o.first {
		o.w.buf = append(o.w.buf, ',')
	}
	o.first = false
	o.w.buf = appendJSONString(o.w.buf, name)
	o.w.buf = append(o.w.buf, ':')
	return child, true
}

func (o *object) str(name, value string) {
	if _, ok := o.member(name); ok {
		o.w.buf = appendJSONString(o.w.buf, value)
	}
}

func (o *object) strs(name string, values []string) {
	if _, ok := o.member(name); ok {
		o.w.strings(values)
	}
}

// erase records that the member name of the current object (or element
// name of the current array) was left out.
func (w *inputWriter) erase(name string) { w.erased = append(w.erased, w.pointer(name, true)) }

// pointer returns the path of the current value, with last appended if
// withLast, as a mask path: "/input/request/password".
func (w *inputWriter) pointer(last string, withLast bool) string {
	var b strings.Builder
	b.WriteString("/input")
	for _, s := range w.path {
		b.WriteByte('/')
		if s.index >= 0 {
			b.WriteString(strconv.Itoa(s.index))
		} else {
			b.WriteString(url.PathEscape(s.name))
		}
	}
	if withLast {
		b.WriteByte('/')
		b.WriteString(url.PathEscape(last))
	}
	return b.String()
}

func (w *inputWriter) push(s pathSegment) { w.path = append(w.path, s) }
func (w *inputWriter) pop()               { w.path = w.path[:len(w.path)-1] }

func (w *inputWriter) strings(values []string) {
	w.buf = append(w.buf, '[')
	for i, v := range values {
		if i > 0 {
			w.buf = append(w.buf, ',')
		}
		w.buf = appendJSONString(w.buf, v)
	}
	w.buf = append(w.buf, ']')
}

// input writes the document, member for member as policy.InputValue builds it.
func (w *inputWriter) input(node *maskNode, in *Input) {
	o := w.object(node)
	o.str("procedure", in.Procedure)
	o.str("service", in.Service)
	o.str("method", in.Method)
	o.str("stream_type", in.StreamType)
	if p := in.Principal; p != nil {
		if child, ok := o.member("peer"); ok {
			w.push(pathSegment{name: "peer", index: -1})
			peer := w.object(child)
			peer.str("spiffe_id", p.Workload.ID.String())
			peer.str("cert_sha256", p.Workload.CertSHA256Hex())
			peer.end()
			w.pop()
		}
		if u := p.User; u != nil {
			if child, ok := o.member("token"); ok {
				w.push(pathSegment{name: "token", index: -1})
				tok := w.object(child)
				tok.str("sub", u.Subject)
				tok.strs("roles", u.Roles)
				tok.str("scope", u.Scope)
				tok.strs("aud", u.Audience)
				tok.str("iss", u.Issuer)
				tok.str("jti", u.TokenID)
				if _, ok := tok.member("exp"); ok {
					w.buf = strconv.AppendInt(w.buf, u.ExpiresAt.Unix(), 10)
				}
				if actNode, ok := tok.member("act"); ok {
					if u.Actor == "" {
						w.buf = append(w.buf, "null"...)
					} else {
						w.push(pathSegment{name: "act", index: -1})
						act := w.object(actNode)
						act.str("sub", u.Actor)
						act.end()
						w.pop()
					}
				}
				if _, ok := tok.member("bound"); ok {
					w.buf = strconv.AppendBool(w.buf, u.CertBound)
				}
				tok.end()
				w.pop()
			}
		}
	}
	if in.Request != nil {
		if child, ok := o.member("request"); ok {
			w.push(pathSegment{name: "request", index: -1})
			w.message(child, in.Request.ProtoReflect())
			w.pop()
		}
	}
	if r := in.Resource; r != nil {
		if child, ok := o.member("resource"); ok {
			w.push(pathSegment{name: "resource", index: -1})
			res := w.object(child)
			res.str("kind", r.Kind)
			res.str("id", r.ID)
			res.str("owner", r.Owner)
			res.end()
			w.pop()
		}
	}
	if child, ok := o.member("http"); ok {
		w.push(pathSegment{name: "http", index: -1})
		h := w.object(child)
		h.str("method", in.HTTPMethod)
		h.str("protocol", in.Protocol)
		h.end()
		w.pop()
	}
	o.end()
}

// message writes m as policy.MessageValue converts it: the fields that are
// set, by proto name; Timestamps and Durations as strings, FieldMasks as
// arrays of paths, other well-known types in their protojson form. Fields
// marked debug_redact are erased.
func (w *inputWriter) message(node *maskNode, m protoreflect.Message) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp":
		if ts, ok := m.Interface().(*timestamppb.Timestamp); ok {
			w.buf = appendJSONString(w.buf, ts.AsTime().UTC().Format("2006-01-02T15:04:05.999999999Z07:00"))
			return
		}
	case "google.protobuf.Duration":
		if d, ok := m.Interface().(*durationpb.Duration); ok {
			w.buf = appendJSONString(w.buf, d.AsDuration().String())
			return
		}
	case "google.protobuf.FieldMask":
		if fm, ok := m.Interface().(*fieldmaskpb.FieldMask); ok {
			w.strings(fm.GetPaths())
			return
		}
	}
	if wellKnown(m.Descriptor()) {
		w.wellKnownValue(m)
		return
	}
	o := w.object(node)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := string(fd.Name())
		if sensitive(fd) {
			w.erase(name)
			return true
		}
		child, ok := o.memberOf(name, !fd.IsList() && !fd.IsMap() && wellKnown(fd.Message()))
		if !ok {
			return true
		}
		w.push(pathSegment{name: name, index: -1})
		w.field(child, fd, v)
		w.pop()
		return true
	})
	o.end()
}

// wellKnown reports whether md (nil for a field that holds no message) is a
// well-known type, which the input document holds in its protojson form.
func wellKnown(md protoreflect.MessageDescriptor) bool {
	return md != nil && md.FullName().Parent() == "google.protobuf"
}

// wellKnownValue writes a well-known type in its protojson form, or null
// when it has none.
func (w *inputWriter) wellKnownValue(m protoreflect.Message) {
	data, err := protojson.Marshal(m.Interface())
	if err == nil {
		var b bytes.Buffer
		if err = json.Compact(&b, data); err == nil {
			w.buf = append(w.buf, b.Bytes()...)
			return
		}
	}
	w.buf = append(w.buf, "null"...)
}

func (w *inputWriter) field(node *maskNode, fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch {
	case fd.IsList():
		l := v.List()
		w.buf = append(w.buf, '[')
		first := true
		for i := range l.Len() {
			var child *maskNode
			if node != nil && len(node.children) > 0 {
				// Indices are those of the request: erasing an element does not
				// renumber the others.
				if child = node.children[strconv.Itoa(i)]; child != nil && (child.erase || len(child.children) > 0 && wellKnown(fd.Message())) {
					w.erase(strconv.Itoa(i))
					continue
				}
			}
			if !first {
				w.buf = append(w.buf, ',')
			}
			first = false
			w.push(pathSegment{index: i})
			w.scalar(child, fd, l.Get(i))
			w.pop()
		}
		w.buf = append(w.buf, ']')
	case fd.IsMap():
		o := w.object(node)
		v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
			key := k.String()
			if child, ok := o.memberOf(key, wellKnown(fd.MapValue().Message())); ok {
				w.push(pathSegment{name: key, index: -1})
				w.scalar(child, fd.MapValue(), mv)
				w.pop()
			}
			return true
		})
		o.end()
	default:
		w.scalar(node, fd, v)
	}
}

func (w *inputWriter) scalar(node *maskNode, fd protoreflect.FieldDescriptor, v protoreflect.Value) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		w.buf = strconv.AppendBool(w.buf, v.Bool())
	case protoreflect.StringKind:
		w.buf = appendJSONString(w.buf, v.String())
	case protoreflect.BytesKind:
		w.buf = append(w.buf, '"')
		w.buf = base64.StdEncoding.AppendEncode(w.buf, v.Bytes())
		w.buf = append(w.buf, '"')
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			w.buf = appendJSONString(w.buf, string(ev.Name()))
		} else {
			w.buf = strconv.AppendInt(w.buf, int64(v.Enum()), 10)
		}
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		w.buf = strconv.AppendInt(w.buf, v.Int(), 10)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		w.buf = strconv.AppendUint(w.buf, v.Uint(), 10)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		if math.IsNaN(f) || math.IsInf(f, 0) {
			w.buf = appendJSONString(w.buf, strconv.FormatFloat(f, 'g', -1, 64)) // as protojson writes them
		} else {
			w.buf = strconv.AppendFloat(w.buf, f, 'g', -1, 64)
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		w.message(node, v.Message())
	default:
		w.buf = append(w.buf, "null"...)
	}
}

// sensitive reports whether fd is marked sensitive in its .proto (the
// debug_redact field option): a field a decision log must leave out.
func sensitive(fd protoreflect.FieldDescriptor) bool {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	return ok && opts.GetDebugRedact()
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				const hex = "0123456789abcdef"
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			// Valid JSON, but not valid JavaScript: escaped as encoding/json does.
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', byte('8'+r-'\u2028'))
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
