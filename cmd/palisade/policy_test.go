package main

import (
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/ast"
)

// TestEvalInputFromEvent: `policy eval --input` takes an input document
// as it is, and a decision log event's input, with the paths erased from
// it; an event whose input is gone, or anything but one object, is a
// clear error.
func TestEvalInputFromEvent(t *testing.T) {
	const doc = `{"procedure":"/user.v1.UserService/GetUser","service":"user.v1.UserService","method":"GetUser","stream_type":"unary",` +
		`"peer":{"spiffe_id":"spiffe://palisade.local/client/cli"},"token":{"sub":"alice","roles":["customer"],"act":null},` +
		`"request":{"id":"bob"},"http":{"method":"POST","protocol":"connect"}}`
	want := ast.MustParseTerm(doc).Value

	got, erased, err := evalInput([]byte(doc))
	if err != nil || got.Compare(want) != 0 || erased != nil {
		t.Fatalf("input document: %v, erased %v, %v", got, erased, err)
	}

	event := `{"labels":{"id":"0a1b2c3d4e5f6a7b","version":"(devel)"},"decision_id":"d-1","revision":"r-7","path":"palisade/authz/decision",` +
		`"input":` + doc + `,"result":{"allow":false,"reasons":["not bob"],"need_user":false},"erased":["/input/request/password"],` +
		`"requested_by":"spiffe://palisade.local/svc/user","timestamp":"2026-12-02T04:00:00Z"}`
	got, erased, err = evalInput([]byte(event))
	if err != nil || got.Compare(want) != 0 || len(erased) != 1 || erased[0] != "/input/request/password" {
		t.Fatalf("event: %v, erased %v, %v", got, erased, err)
	}

	for in, wantErr := range map[string]string{
		`{"decision_id":"d-1","erased":["/input"],"result":{"allow":true}}`: "whole input was erased",
		`{"decision_id":"d-1","result":{"allow":true}}`:                     "without an input",
		`{"decision_id":"d-1","input":"x"}`:                                 "not a JSON object",
		`[` + event + `]`:                                                   "not a JSON object",
		`{"decision_id":"d-1","input":{},"erased":"x"}`:                     "erased",
		`{`: "input:",
	} {
		if _, _, err := evalInput([]byte(in)); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("evalInput(%s): %v, want an error saying %q", in, err, wantErr)
		}
	}
}
