package rpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// The server decodes requests with its own codecs, registered for every
// mounted service in place of connect-go's (same names, same marshaling):
//
//   - binary protobuf ("proto", which gRPC and gRPC-Web use too) decodes
//     with DiscardUnknown. connect-go's keeps the unknown fields of a
//     request, so a 4 MiB field no schema names was held as long as the
//     handler held the message and echoed wherever the handler copied a
//     sub-message into its reply. Here a request carries only the fields
//     its .proto declares; the bytes of the others are read and dropped.
//   - JSON ("json" and "json; charset=utf-8") decodes as connect-go's does,
//     with protojson's DiscardUnknown: an unknown key is accepted and
//     dropped, as it always was on this server.
//
// Both report each stream message's size before decoding it, so the stream
// byte cap (WithMaxStreamBytes) counts what the client sent, unknown fields
// included (see messageSizes).

// errStreamBytes is what a codec returns instead of decoding a message that
// would take its stream past the byte cap; the stream limit turns it into
// resource_exhausted.
var errStreamBytes = errors.New("stream byte limit reached: message not decoded")

// codecs returns the server's codecs, reporting sizes to sizes.
func codecs(sizes *messageSizes) []connect.HandlerOption {
	return []connect.HandlerOption{
		connect.WithCodec(protoBinaryCodec{sizes}),
		connect.WithCodec(protoJSONCodec{name: "json", sizes: sizes}),
		connect.WithCodec(protoJSONCodec{name: "json; charset=utf-8", sizes: sizes}),
	}
}

// protoBinaryCodec is connect-go's binary protobuf codec, decoding with
// DiscardUnknown.
type protoBinaryCodec struct{ sizes *messageSizes }

func (protoBinaryCodec) Name() string { return "proto" }

func (protoBinaryCodec) Marshal(message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(m)
}

func (protoBinaryCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{}.MarshalAppend(dst, m)
}

func (protoBinaryCodec) MarshalStable(message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(m)
}

func (protoBinaryCodec) IsBinary() bool { return true }

func (c protoBinaryCodec) Unmarshal(data []byte, message any) error {
	m, err := asProto(message)
	if err != nil {
		return err
	}
	if !c.sizes.admit(message, len(data)) {
		return errStreamBytes
	}
	if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

// protoJSONCodec is connect-go's protobuf JSON codec.
type protoJSONCodec struct {
	name  string
	sizes *messageSizes
}

func (c protoJSONCodec) Name() string { return c.name }

func (protoJSONCodec) Marshal(message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{}.Marshal(m)
}

func (protoJSONCodec) MarshalAppend(dst []byte, message any) ([]byte, error) {
	m, err := asProto(message)
	if err != nil {
		return nil, err
	}
	return protojson.MarshalOptions{}.MarshalAppend(dst, m)
}

func (c protoJSONCodec) MarshalStable(message any) ([]byte, error) {
	// protojson varies its whitespace; compacting makes the output stable.
	data, err := c.Marshal(message)
	if err != nil {
		return nil, err
	}
	compact := bytes.NewBuffer(data[:0])
	if err := json.Compact(compact, data); err != nil {
		return nil, err
	}
	return compact.Bytes(), nil
}

func (protoJSONCodec) IsBinary() bool { return false }

func (c protoJSONCodec) Unmarshal(data []byte, message any) error {
	m, err := asProto(message)
	if err != nil {
		return err
	}
	if !c.sizes.admit(message, len(data)) {
		return errStreamBytes
	}
	if len(data) == 0 {
		return errors.New("zero-length payload is not a valid JSON object")
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("unmarshal into %T: %w", message, err)
	}
	return nil
}

func asProto(message any) (proto.Message, error) {
	m, ok := message.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("%T doesn't implement proto.Message", message)
	}
	return m, nil
}

// messageSizes carries the size of a stream message from the codec that
// decodes it to the stream limit that counts it. connect-go does not tell
// an interceptor how many bytes a message took; the codec sees them, but
// not the stream. What they share is the message: the pointer the handler
// passes to Receive is the one connect-go hands the codec, synchronously,
// on the same goroutine. So before Receive the limit registers the message
// with the bytes its stream may still take (watch), the codec records the
// size and refuses to decode past the budget (admit), and the limit reads
// the size after Receive (done).
//
// A message the codec never saw (an empty one, or one decoded by a codec a
// service registered itself) has no recorded size; the limit then counts
// proto.Size of the decoded message, which leaves out any unknown fields
// that codec dropped.
type messageSizes struct {
	watched atomic.Int64 // entries in m: when 0, admit costs one atomic load
	m       sync.Map     // message (a pointer) -> *sizeSlot
}

// sizeSlot is one message being received on a stream with a byte cap.
type sizeSlot struct {
	budget int // bytes the stream may still take
	size   int // the message's size as the codec saw it; -1 until then
}

// watch registers message, about to be received with budget bytes left, and
// returns its slot, or nil if message cannot be tracked (not a pointer, or
// already being received elsewhere).
func (s *messageSizes) watch(message any, budget int) *sizeSlot {
	if v := reflect.ValueOf(message); v.Kind() != reflect.Pointer || v.IsNil() {
		return nil
	}
	slot := &sizeSlot{budget: budget, size: -1}
	if _, loaded := s.m.LoadOrStore(message, slot); loaded {
		return nil
	}
	s.watched.Add(1)
	return slot
}

// done unregisters message.
func (s *messageSizes) done(message any) {
	s.m.Delete(message)
	s.watched.Add(-1)
}

// admit records that message is size bytes and reports whether it fits its
// stream's budget. Messages nobody watches (unary requests) always fit.
func (s *messageSizes) admit(message any, size int) bool {
	if s == nil || s.watched.Load() == 0 {
		return true
	}
	if reflect.ValueOf(message).Kind() != reflect.Pointer {
		return true // never watched, and maybe not a valid map key
	}
	v, ok := s.m.Load(message)
	if !ok {
		return true
	}
	slot := v.(*sizeSlot)
	slot.size = size
	return size <= slot.budget
}
