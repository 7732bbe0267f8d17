package main

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
)

func TestDelimitedRoundTrip(t *testing.T) {
	t.Parallel()
	in := &conformancev1.ServerCompatResponse{Host: "127.0.0.1", Port: 25443, PemCert: []byte("cert")}
	var buf bytes.Buffer
	if err := writeDelimited(&buf, in); err != nil {
		t.Fatal(err)
	}
	if size := binary.BigEndian.Uint32(buf.Bytes()[:4]); int(size) != buf.Len()-4 {
		t.Fatalf("prefix says %d bytes, %d follow", size, buf.Len()-4)
	}
	out := &conformancev1.ServerCompatResponse{}
	if err := readDelimited(&buf, out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, out) {
		t.Fatalf("got %v, want %v", out, in)
	}
}

func TestReadDelimitedRefusesBadFrames(t *testing.T) {
	t.Parallel()
	huge := binary.BigEndian.AppendUint32(nil, maxRequestBytes+1)
	cases := map[string]struct {
		frame []byte
		want  string
	}{
		"empty":           {nil, "length prefix"},
		"short prefix":    {[]byte{0, 0}, "length prefix"},
		"too large":       {huge, "larger than"},
		"truncated body":  {append(binary.BigEndian.AppendUint32(nil, 10), 1, 2), "message"},
		"not the message": {append(binary.BigEndian.AppendUint32(nil, 2), 0xff, 0xff), "proto"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			err := readDelimited(bytes.NewReader(c.frame), &conformancev1.ServerCompatRequest{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, c.want)
			}
		})
	}
}
