package conformance

// The ConformanceService below follows the suite's reference server
// (connectrpc.com/conformance internal/app/referenceserver/impl.go, Apache
// License 2.0, Copyright 2023-2024 The Connect Authors) in its non-reference
// mode, written against connect-go v1 and with delays that end with the call.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	conformancev1 "github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1"
	"github.com/palisade-rpc/palisade/conformance/gen/connectrpc/conformance/v1/conformancev1connect"
)

// Service implements the suite's ConformanceService: every call answers as
// its request's response definition says (headers, trailers, data, error,
// delay) and echoes what the server saw of the request (headers, timeout,
// messages, Connect GET query) so the runner can check it survived the trip.
// Unimplemented is left to the generated default, which answers
// unimplemented.
type Service struct {
	conformancev1connect.UnimplementedConformanceServiceHandler
}

var _ conformancev1connect.ConformanceServiceHandler = (*Service)(nil)

// Unary implements conformancev1connect.ConformanceServiceHandler.
func (*Service) Unary(ctx context.Context, req *connect.Request[conformancev1.UnaryRequest]) (*connect.Response[conformancev1.UnaryResponse], error) {
	return unary(ctx, req, req.Msg.GetResponseDefinition(), func(p *conformancev1.ConformancePayload) *conformancev1.UnaryResponse {
		return &conformancev1.UnaryResponse{Payload: p}
	})
}

// IdempotentUnary implements conformancev1connect.ConformanceServiceHandler;
// it is Unary, called with Connect GET.
func (*Service) IdempotentUnary(ctx context.Context, req *connect.Request[conformancev1.IdempotentUnaryRequest]) (*connect.Response[conformancev1.IdempotentUnaryResponse], error) {
	return unary(ctx, req, req.Msg.GetResponseDefinition(), func(p *conformancev1.ConformancePayload) *conformancev1.IdempotentUnaryResponse {
		return &conformancev1.IdempotentUnaryResponse{Payload: p}
	})
}

// unary answers a unary request as def says, after its delay, wrapping the
// payload in the method's response message.
func unary[T, Res any, Req interface {
	*T
	proto.Message
}](ctx context.Context, req *connect.Request[T], def *conformancev1.UnaryResponseDefinition, wrap func(*conformancev1.ConformancePayload) *Res) (*connect.Response[Res], error) {
	reqAny, err := asAny(Req(req.Msg))
	if err != nil {
		return nil, err
	}
	payload, err := unaryPayload(ctx, def, req.Header(), req.Peer().Query, []*anypb.Any{reqAny})
	if err != nil {
		return nil, err
	}
	sleep(def.GetResponseDelayMs())
	res := connect.NewResponse(wrap(payload))
	addMetadata(def, res.Header(), res.Trailer())
	return res, nil
}

// ClientStream implements conformancev1connect.ConformanceServiceHandler.
// The first message's response definition applies.
func (*Service) ClientStream(ctx context.Context, stream *connect.ClientStream[conformancev1.ClientStreamRequest]) (*connect.Response[conformancev1.ClientStreamResponse], error) {
	var def *conformancev1.UnaryResponseDefinition
	var reqs []*anypb.Any
	for stream.Receive() {
		msg := stream.Msg()
		if len(reqs) == 0 {
			def = msg.GetResponseDefinition()
		}
		req, err := asAny(msg)
		if err != nil {
			return nil, err
		}
		reqs = append(reqs, req)
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	payload, err := unaryPayload(ctx, def, stream.RequestHeader(), stream.Peer().Query, reqs)
	if err != nil {
		return nil, err
	}
	sleep(def.GetResponseDelayMs())
	res := connect.NewResponse(&conformancev1.ClientStreamResponse{Payload: payload})
	addMetadata(def, res.Header(), res.Trailer())
	return res, nil
}

// ServerStream implements conformancev1connect.ConformanceServiceHandler.
// Headers go out at once, before the first delay, so the client can read
// them; only the first response carries the request info.
func (*Service) ServerStream(ctx context.Context, req *connect.Request[conformancev1.ServerStreamRequest], stream *connect.ServerStream[conformancev1.ServerStreamResponse]) error {
	reqAny, err := asAny(req.Msg)
	if err != nil {
		return err
	}
	def := req.Msg.GetResponseDefinition()
	if def == nil {
		return nil
	}
	addMetadata(def, stream.ResponseHeader(), stream.ResponseTrailer())
	if len(def.GetResponseData()) > 0 {
		if err := stream.Send(nil); err != nil { // headers only
			return sendError(err)
		}
	}
	info := func() *conformancev1.ConformancePayload_RequestInfo {
		return requestInfo(ctx, req.Header(), req.Peer().Query, []*anypb.Any{reqAny})
	}
	sent, err := sendData(ctx, def, 0, info, stream.Send, func(p *conformancev1.ConformancePayload) *conformancev1.ServerStreamResponse {
		return &conformancev1.ServerStreamResponse{Payload: p}
	})
	if err != nil {
		return err
	}
	return streamError(def.GetError(), sent, info)
}

// BidiStream implements conformancev1connect.ConformanceServiceHandler. Full
// duplex answers each message as it comes (with the requests received since
// the last response); half duplex reads everything, then answers.
func (*Service) BidiStream(ctx context.Context, stream *connect.BidiStream[conformancev1.BidiStreamRequest, conformancev1.BidiStreamResponse]) error {
	var def *conformancev1.StreamResponseDefinition
	fullDuplex, first := false, true
	sent := 0
	var reqs []*anypb.Any
	info := func() *conformancev1.ConformancePayload_RequestInfo {
		return requestInfo(ctx, stream.RequestHeader(), stream.Peer().Query, reqs)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		msg, err := stream.Receive()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("receive request: %w", err)
		}
		reqAny, err := asAny(msg)
		if err != nil {
			return err
		}
		reqs = append(reqs, reqAny)
		if first {
			first = false
			def, fullDuplex = msg.GetResponseDefinition(), msg.GetFullDuplex()
			addMetadata(def, stream.ResponseHeader(), stream.ResponseTrailer())
			// Only full duplex may answer before the client is done sending.
			if fullDuplex && len(def.GetResponseData()) > 0 {
				if err := stream.Send(nil); err != nil {
					return sendError(err)
				}
			}
		}
		if !fullDuplex {
			continue
		}
		if sent >= len(def.GetResponseData()) {
			break
		}
		res := &conformancev1.BidiStreamResponse{Payload: &conformancev1.ConformancePayload{Data: def.GetResponseData()[sent]}}
		if sent == 0 {
			res.Payload.RequestInfo = info()
		} else {
			res.Payload.RequestInfo = &conformancev1.ConformancePayload_RequestInfo{Requests: reqs}
		}
		sleep(def.GetResponseDelayMs())
		if err := stream.Send(res); err != nil {
			return sendError(err)
		}
		sent++
		reqs = nil
	}
	if !fullDuplex && len(def.GetResponseData()) > 0 {
		if err := stream.Send(nil); err != nil {
			return sendError(err)
		}
	}
	if def == nil {
		return nil
	}
	// Half duplex sends everything here; full duplex what the client did not
	// ask for with a message of its own.
	sent, err := sendData(ctx, def, sent, info, stream.Send, func(p *conformancev1.ConformancePayload) *conformancev1.BidiStreamResponse {
		return &conformancev1.BidiStreamResponse{Payload: p}
	})
	if err != nil {
		return err
	}
	return streamError(def.GetError(), sent, info)
}

// sendData sends def's response data from index from on, each after def's
// delay, the call's first response carrying the request info. It returns
// how many responses the call has sent.
func sendData[Res any](ctx context.Context, def *conformancev1.StreamResponseDefinition, from int, info func() *conformancev1.ConformancePayload_RequestInfo, send func(*Res) error, wrap func(*conformancev1.ConformancePayload) *Res) (int, error) {
	sent := from
	for ; sent < len(def.GetResponseData()); sent++ {
		payload := &conformancev1.ConformancePayload{Data: def.GetResponseData()[sent]}
		if sent == 0 {
			payload.RequestInfo = info()
		}
		sleep(def.GetResponseDelayMs())
		if err := ctx.Err(); err != nil {
			return sent, err
		}
		if err := send(wrap(payload)); err != nil {
			return sent, sendError(err)
		}
	}
	return sent, nil
}

// unaryPayload builds the payload of a unary or client-stream response, or
// the error def asks for, carrying the request info in its details and
// def's headers and trailers in its metadata (connect-go sends an error's
// metadata as headers or trailers as the protocol requires).
func unaryPayload(ctx context.Context, def *conformancev1.UnaryResponseDefinition, header http.Header, query url.Values, reqs []*anypb.Any) (*conformancev1.ConformancePayload, error) {
	info := requestInfo(ctx, header, query, reqs)
	switch res := def.GetResponse().(type) {
	case *conformancev1.UnaryResponseDefinition_Error:
		err := protoToConnectError(res.Error, info)
		addHeaders(def.GetResponseHeaders(), err.Meta())
		addHeaders(def.GetResponseTrailers(), err.Meta())
		return nil, err
	case *conformancev1.UnaryResponseDefinition_ResponseData:
		return &conformancev1.ConformancePayload{RequestInfo: info, Data: res.ResponseData}, nil
	case nil:
		return &conformancev1.ConformancePayload{RequestInfo: info}, nil
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("response definition has an unexpected type %T", res))
	}
}

// streamError returns the error a stream definition ends with, if any; when
// no response was sent, the error's details carry the request info.
func streamError(def *conformancev1.Error, sent int, info func() *conformancev1.ConformancePayload_RequestInfo) error {
	if def == nil {
		return nil
	}
	if sent > 0 {
		return protoToConnectError(def, nil)
	}
	return protoToConnectError(def, info())
}

// protoToConnectError converts the suite's Error to a connect error with its
// details, followed by info when set.
func protoToConnectError(e *conformancev1.Error, info *conformancev1.ConformancePayload_RequestInfo) *connect.Error {
	err := connect.NewError(connect.Code(e.GetCode()), errors.New(e.GetMessage()))
	details := append([]*anypb.Any(nil), e.GetDetails()...)
	if info != nil {
		infoAny, aerr := anypb.New(info)
		if aerr != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("encode request info: %w", aerr))
		}
		details = append(details, infoAny)
	}
	for _, d := range details {
		detail, derr := connect.NewErrorDetail(d)
		if derr != nil {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("encode error detail: %w", derr))
		}
		err.AddDetail(detail)
	}
	return err
}

// requestInfo is what the server saw of the request: headers, the timeout
// left, the messages and, for Connect GET, the query.
func requestInfo(ctx context.Context, header http.Header, query url.Values, reqs []*anypb.Any) *conformancev1.ConformancePayload_RequestInfo {
	info := &conformancev1.ConformancePayload_RequestInfo{RequestHeaders: toHeaders(header), Requests: reqs}
	if len(query) > 0 {
		info.ConnectGetInfo = &conformancev1.ConformancePayload_ConnectGetInfo{QueryParams: toHeaders(query)}
	}
	if deadline, ok := ctx.Deadline(); ok {
		ms := time.Until(deadline).Milliseconds()
		info.TimeoutMs = &ms
	}
	return info
}

func toHeaders(h map[string][]string) []*conformancev1.Header {
	out := make([]*conformancev1.Header, 0, len(h))
	for name, values := range h {
		out = append(out, &conformancev1.Header{Name: name, Value: values})
	}
	return out
}

// metadataDefinition is what unary and stream response definitions share.
type metadataDefinition interface {
	GetResponseHeaders() []*conformancev1.Header
	GetResponseTrailers() []*conformancev1.Header
}

func addMetadata(def metadataDefinition, header, trailer http.Header) {
	addHeaders(def.GetResponseHeaders(), header)
	addHeaders(def.GetResponseTrailers(), trailer)
}

func addHeaders(src []*conformancev1.Header, dst http.Header) {
	for _, h := range src {
		for _, v := range h.GetValue() {
			dst.Add(h.GetName(), v)
		}
	}
}

func asAny(msg proto.Message) (*anypb.Any, error) {
	a, err := anypb.New(msg)
	if err != nil {
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("encode request: %w", err))
	}
	return a, nil
}

func sendError(err error) error {
	return connect.NewError(connect.CodeInternal, fmt.Errorf("send on stream: %w", err))
}

// sleep waits the response delay of ms milliseconds in full, even past the
// call's deadline, as the suite's reference server does; what comes after
// it (a send, a reply) then fails or is discarded if the call is over.
//
// Answering at the deadline instead races the runner's client: it enforces
// the same deadline itself and, when its deadline fires while a Connect
// error body is arriving over HTTP/2, reports the cut-off body ("unexpected
// end of JSON input") rather than deadline_exceeded — about one run in
// three failed a Timeouts case that way. The server's own deadline
// enforcement is connect-go's, and Palisade does not change it.
func sleep(ms uint32) {
	time.Sleep(time.Duration(ms) * time.Millisecond)
}
