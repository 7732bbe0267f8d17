package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	userv1 "github.com/palisade-rpc/palisade/proto/user/v1"
	"github.com/palisade-rpc/palisade/proto/user/v1/userv1connect"
)

// grpcPrefixLen is the length of a gRPC message's prefix: a flags byte and
// the message's length, 4 bytes big-endian.
const grpcPrefixLen = 5

// grpcGetUserHandler serves user.v1.UserService/GetUser over the gRPC
// protocol, and nothing else, written by hand on net/http without
// connect-go: nethttp-mtls's handler. With the same users.GetUser behind it
// as every other configuration, what it costs the server beyond mtls's
// figures is net/http's HTTP/2 transport and TLS alone, the floor under any
// gRPC handler on net/http. It is a diagnostic, not a serving path: it
// ignores grpc-timeout and metadata, compresses nothing and accepts no
// compressed message.
//
// Refusals: a method other than POST gets HTTP 405, a content type other
// than application/grpc (or application/grpc+proto) HTTP 415, as grpc-go's
// server answers them; the rest get a gRPC status in a trailers-only
// response, with grpc-go's codes: a message over maxBytes
// resource_exhausted, a compressed one unimplemented (internal with no
// grpc-encoding), a truncated prefix or message, or one that does not
// unmarshal, internal, no message or more than one unimplemented (the
// gRPC status codes' "cardinality violation").
type grpcGetUserHandler struct {
	// maxBytes bounds a request message; nothing longer is read.
	maxBytes uint32
}

// grpcError is a gRPC status the handler answers a call with.
type grpcError struct {
	code codes.Code
	msg  string
}

func (h grpcGetUserHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "gRPC calls are POST requests", http.StatusMethodNotAllowed)
		return
	}
	if !isGRPCProto(r.Header.Get("Content-Type")) {
		http.Error(w, "content type must be application/grpc or application/grpc+proto", http.StatusUnsupportedMediaType)
		return
	}
	msg, gerr := readUnaryMessage(r.Body, r.Header.Get("Grpc-Encoding"), h.maxBytes)
	if gerr != nil {
		writeGRPCError(w, gerr)
		return
	}
	req := new(userv1.GetUserRequest)
	if err := proto.Unmarshal(msg, req); err != nil {
		writeGRPCError(w, &grpcError{codes.Internal, "cannot unmarshal the request"})
		return
	}
	res, err := users{}.GetUser(r.Context(), req)
	if err != nil {
		writeGRPCError(w, &grpcError{codes.Unknown, "GetUser failed"})
		return
	}
	size := proto.Size(res)
	frame := make([]byte, grpcPrefixLen, grpcPrefixLen+size)
	binary.BigEndian.PutUint32(frame[1:], uint32(size))
	frame, err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(frame, res)
	if err != nil {
		writeGRPCError(w, &grpcError{codes.Internal, "cannot marshal the reply"})
		return
	}
	header := w.Header()
	header.Set("Content-Type", "application/grpc")
	if _, err := w.Write(frame); err != nil {
		return // the client went away: nobody to send a status to
	}
	header.Set(http.TrailerPrefix+"Grpc-Status", "0")
}

// isGRPCProto says whether contentType is gRPC's with the proto codec:
// application/grpc or application/grpc+proto, parameters allowed.
func isGRPCProto(contentType string) bool {
	base, _, _ := strings.Cut(contentType, ";")
	base = strings.TrimSpace(base)
	return base == "application/grpc" || base == "application/grpc+proto"
}

// readUnaryMessage reads the one message of a unary gRPC request from
// body: its prefix, then at most maxBytes of message, then the end of the
// body. encoding is the request's grpc-encoding header, to name the
// refusal of a compressed message.
func readUnaryMessage(body io.Reader, encoding string, maxBytes uint32) ([]byte, *grpcError) {
	var prefix [grpcPrefixLen]byte
	if _, err := io.ReadFull(body, prefix[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &grpcError{codes.Unimplemented, "unary call with no request message"}
		}
		return nil, &grpcError{codes.Internal, "truncated message prefix"}
	}
	switch prefix[0] {
	case 0:
	case 1:
		if encoding == "" || encoding == "identity" {
			return nil, &grpcError{codes.Internal, "compressed flag set with identity or empty encoding"}
		}
		return nil, &grpcError{codes.Unimplemented, "compressed messages are not supported"}
	default:
		return nil, &grpcError{codes.Internal, fmt.Sprintf("invalid message flags %#x", prefix[0])}
	}
	n := binary.BigEndian.Uint32(prefix[1:])
	if n > maxBytes {
		return nil, &grpcError{codes.ResourceExhausted, fmt.Sprintf("message larger than max (%d vs. %d)", n, maxBytes)}
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(body, msg); err != nil {
		return nil, &grpcError{codes.Internal, "truncated message"}
	}
	var more [1]byte
	switch _, err := io.ReadFull(body, more[:]); {
	case err == nil:
		return nil, &grpcError{codes.Unimplemented, "unary call with more than one request message"}
	case !errors.Is(err, io.EOF):
		return nil, &grpcError{codes.Internal, "cannot read the request body"}
	}
	return msg, nil
}

// writeGRPCError answers a call that has had no reply yet with e, in a
// trailers-only response: HTTP 200 and the status in the only HEADERS
// frame, which ends the stream.
func writeGRPCError(w http.ResponseWriter, e *grpcError) {
	header := w.Header()
	header.Set("Content-Type", "application/grpc")
	header.Set("Grpc-Status", strconv.Itoa(int(e.code)))
	header.Set("Grpc-Message", percentEncode(e.msg))
	w.WriteHeader(http.StatusOK)
}

// percentEncode encodes a grpc-message value as the gRPC protocol asks:
// every byte outside printable ASCII, and '%', as %XX.
func percentEncode(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c < ' ' || c > '~' || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// netHTTPGRPCMux routes GetUser's path, and only it, to the hand-written
// gRPC handler, through a ServeMux as the bare Connect configurations route
// theirs, so that routing costs both alike; any other path gets the mux's
// 404 (a gRPC client's unimplemented).
func netHTTPGRPCMux(maxBytes uint32) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle(userv1connect.UserServiceGetUserProcedure, grpcGetUserHandler{maxBytes: maxBytes})
	return mux
}
