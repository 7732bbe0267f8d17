package rpc

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

// GzipBomb returns a gzip stream of a user.v1.GetUserRequest whose id is
// members MiB of 'a': members concatenated gzip members (one MiB each,
// about 1 KiB compressed), so a few KiB inflate to members MiB.
func GzipBomb(tb testing.TB, members int) (compressed []byte, inflated int) {
	tb.Helper()
	const chunk = 1 << 20
	gz := func(parts ...[]byte) []byte {
		var buf bytes.Buffer
		zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if err != nil {
			tb.Fatal(err)
		}
		for _, p := range parts {
			if _, err := zw.Write(p); err != nil {
				tb.Fatal(err)
			}
		}
		if err := zw.Close(); err != nil {
			tb.Fatal(err)
		}
		return buf.Bytes()
	}
	a := []byte(strings.Repeat("a", chunk))
	// Field 1 (id), wire type 2, length members*chunk.
	prefix := binary.AppendUvarint([]byte{0x0a}, uint64(members*chunk))
	out := gz(prefix, a)
	rest := gz(a)
	for range members - 1 {
		out = append(out, rest...)
	}
	return out, len(prefix) + members*chunk
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestBoundedDecompressorStopsEarly: a 50 MiB bomb yields limit+1 bytes and
// then an error, having read only a small part of the compressed input.
func TestBoundedDecompressorStopsEarly(t *testing.T) {
	t.Parallel()
	bomb, inflated := GzipBomb(t, 50)
	const limit = 64 << 10
	src := &countingReader{r: bytes.NewReader(bomb)}
	d := &boundedDecompressor{limit: limit}
	if err := d.Reset(src); err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, d)
	if !errors.Is(err, errDecompressedTooLarge) {
		t.Fatalf("err = %v, want errDecompressedTooLarge", err)
	}
	if n != limit+1 {
		t.Fatalf("decompressed %d bytes, want limit+1 = %d", n, limit+1)
	}
	if src.n > len(bomb)/10 {
		t.Fatalf("read %d of %d compressed bytes (%d inflated): did not stop early", src.n, len(bomb), inflated)
	}
	t.Logf("bomb: %d bytes inflating to %d; read %d compressed bytes, %d decompressed", len(bomb), inflated, src.n, n)

	// The same decompressor, reset, takes a message within the limit.
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(bytes.Repeat([]byte("b"), limit))
	_ = zw.Close()
	if err := d.Reset(&buf); err != nil {
		t.Fatal(err)
	}
	if n, err := io.Copy(io.Discard, d); err != nil || n != limit {
		t.Fatalf("message of exactly the limit: %d bytes, %v", n, err)
	}
}
