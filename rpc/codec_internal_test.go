package rpc

import (
	"context"
	"errors"
	"io"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
)

// scriptedConn is a client stream whose Receive decodes the next of msgs
// with codec, or, without one, with proto.Unmarshal (a codec the server
// does not know).
type scriptedConn struct {
	connect.StreamingHandlerConn
	codec connect.Codec
	msgs  [][]byte
}

func (c *scriptedConn) Spec() connect.Spec { return connect.Spec{StreamType: connect.StreamTypeClient} }

func (c *scriptedConn) Receive(m any) error {
	if len(c.msgs) == 0 {
		return io.EOF
	}
	data := c.msgs[0]
	c.msgs = c.msgs[1:]
	if c.codec == nil {
		return proto.Unmarshal(data, m.(proto.Message))
	}
	return c.codec.Unmarshal(data, m)
}

// TestStreamBytesCountWhatTheClientSent: three 100-byte messages, each
// nearly all an unknown field, against a cap of 250 bytes: two are decoded
// (without the unknown field), the third is refused with
// resource_exhausted before it is decoded, and nothing is left registered.
// Decoded by a codec the server does not know, the messages are counted by
// their decoded size, which here keeps the unknown field.
func TestStreamBytesCountWhatTheClientSent(t *testing.T) {
	t.Parallel()
	pad := protowire.AppendBytes(protowire.AppendTag(nil, 99, protowire.BytesType), make([]byte, 94))
	wire, err := proto.Marshal(&userv1.GetUserRequest{Id: "x"})
	if err != nil {
		t.Fatal(err)
	}
	wire = append(wire, pad...)
	if len(wire) != 100 {
		t.Fatalf("message of %d bytes, want 100", len(wire))
	}
	for name, foreign := range map[string]bool{"server codec": false, "foreign codec": true} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			sizes := new(messageSizes)
			var codec connect.Codec = protoBinaryCodec{sizes}
			if foreign {
				codec = nil
			}
			conn := &scriptedConn{codec: codec, msgs: [][]byte{wire, wire, wire}}
			var got []*userv1.GetUserRequest
			handler := func(_ context.Context, c connect.StreamingHandlerConn) error {
				for {
					m := new(userv1.GetUserRequest)
					if err := c.Receive(m); err != nil {
						got = append(got, m)
						return err
					}
					got = append(got, m)
				}
			}
			limit := &streamLimit{maxBytes: 250, sizes: sizes}
			err := limit.WrapStreamingHandler(handler)(context.Background(), conn)
			var ce *connect.Error
			if !errors.As(err, &ce) || ce.Code() != connect.CodeResourceExhausted || ce.Message() != "a stream may carry at most 250 bytes from the client" {
				t.Fatalf("stream ended with %v", err)
			}
			if len(got) != 3 || got[0].GetId() != "x" || got[1].GetId() != "x" {
				t.Fatalf("received %v", got)
			}
			if !foreign {
				if got[2].GetId() != "" {
					t.Fatalf("the message past the cap was decoded: %v", got[2])
				}
				for i, m := range got[:2] {
					if n := len(m.ProtoReflect().GetUnknown()); n != 0 {
						t.Fatalf("message %d kept %d bytes of unknown fields", i, n)
					}
				}
			}
			n := 0
			sizes.m.Range(func(any, any) bool { n++; return true })
			if n != 0 || sizes.watched.Load() != 0 {
				t.Fatalf("%d messages (count %d) left registered", n, sizes.watched.Load())
			}
		})
	}
}
