#!/usr/bin/env bash
# Fails when the Go code committed beside proto/ differs from what buf
# generates from the .proto files now (a changed .proto without
# `make generate`, or a hand-edited generated file), or a
# third_party/protovalidate that is not what tools/validateproto prints from
# the protovalidate Go module tools/go.mod pins. Generates into a
# temporary directory; the tree is not modified.
#
# Usage: scripts/check-generated.sh [ROOT]   (ROOT defaults to the repository)
set -euo pipefail
root=${1:-$(dirname "$0")/..}
cd "$root"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# buf/validate/validate.proto is printed from the protovalidate Go module
# (tools/validateproto); it must match the version tools/go.mod pins.
go -C tools run ./validateproto -out "$tmp/validate"
if ! diff -q third_party/protovalidate/buf/validate/validate.proto "$tmp/validate/buf/validate/validate.proto"; then
	echo "third_party/protovalidate is stale: run 'make generate' and commit the result" >&2
	exit 1
fi
go tool -modfile=tools/go.mod buf generate --output "$tmp"
if ! diff -rq -x '*.proto' -x '*_test.go' proto "$tmp/proto"; then
	echo "generated code is stale: run 'make generate' and commit the result" >&2
	exit 1
fi
# The Connect conformance suite's protos (conformance/buf.yaml), generated
# into conformance/gen.
if [ -f conformance/buf.gen.yaml ]; then
	(cd conformance && go tool -modfile=../tools/go.mod buf generate --output "$tmp/conformance")
	if ! diff -r -q conformance/gen "$tmp/conformance/gen"; then
		echo "generated code in conformance/gen is stale: run 'make generate' and commit the result" >&2
		exit 1
	fi
fi
echo "generated code is up to date"
