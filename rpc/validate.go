package rpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// maxReportedViolations bounds how many rule violations an error message
// lists; the error detail carries them all.
const maxReportedViolations = 10

// validation checks every request message against the protovalidate rules
// written in its .proto (buf.validate annotations): unary requests before
// the handler runs, stream messages as the handler receives them. It sits
// after authorization in the chain, so only a caller the policy admits learns
// what a valid request looks like. A message without rules passes.
type validation struct {
	v   protovalidate.Validator
	log *slog.Logger
}

func newValidation(logger *slog.Logger) (*validation, error) {
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("rpc: protovalidate: %w", err)
	}
	return &validation{v: v, log: logger}, nil
}

func (v *validation) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		if msg, ok := req.Any().(proto.Message); ok {
			if err := v.check(ctx, req.Spec().Procedure, msg); err != nil {
				return nil, err
			}
		}
		return next(ctx, req)
	}
}

func (v *validation) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (v *validation) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(ctx, &validatingConn{StreamingHandlerConn: conn, ctx: ctx, v: v})
	}
}

// validatingConn validates each message the handler receives.
type validatingConn struct {
	connect.StreamingHandlerConn
	ctx context.Context
	v   *validation
}

func (c *validatingConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	if m, ok := msg.(proto.Message); ok {
		return c.v.check(c.ctx, c.Spec().Procedure, m)
	}
	return nil
}

// check validates msg. A violated rule is invalid_argument naming each
// field and rule, with the violations as a buf.validate.Violations error
// detail; rules that cannot be evaluated are a server bug: logged, and
// internal for the caller.
func (v *validation) check(ctx context.Context, procedure string, msg proto.Message) error {
	err := v.v.Validate(msg)
	if err == nil {
		return nil
	}
	var verr *protovalidate.ValidationError
	if !errors.As(err, &verr) {
		v.log.ErrorContext(ctx, "request validation failed", "procedure", procedure, "error", err)
		return connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	cerr := connect.NewError(connect.CodeInvalidArgument, errors.New(violationMessage(verr)))
	if detail, derr := connect.NewErrorDetail(verr.ToProto()); derr == nil {
		cerr.AddDetail(detail)
	}
	return cerr
}

// violationMessage lists the violations as "field: message [rule]".
func violationMessage(verr *protovalidate.ValidationError) string {
	var b strings.Builder
	b.WriteString("invalid request: ")
	for i, viol := range verr.Violations {
		if i == maxReportedViolations {
			fmt.Fprintf(&b, "; and %d more", len(verr.Violations)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		p := viol.Proto
		field := protovalidate.FieldPathString(p.GetField())
		if field == "" {
			field = "(message)"
		}
		b.WriteString(field)
		b.WriteString(": ")
		if m := p.GetMessage(); m != "" {
			b.WriteString(m)
		} else {
			b.WriteString("violates its rule")
		}
		b.WriteString(" [")
		b.WriteString(p.GetRuleId())
		b.WriteString("]")
	}
	return b.String()
}
