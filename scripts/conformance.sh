#!/usr/bin/env bash
# Runs the Connect conformance suite (connectrpc.com/conformance) against
# Palisade's server through the whole chain (`make conformance`):
#
#   1. the suite's own test suites, at the version the Makefile pins,
#      rewritten to run over TLS with client certificates (Palisade serves
#      nothing else), against bin/conformance-server pinning the runner's
#      client certificate as a workload that needs no user token;
#   2. the token suite, generated now (its tokens expire), against
#      bin/conformance-server requiring a user token on every call.
#
# Prints each run's pass count and time; on a failure, the runner's report.
# Needs bin/connectconformance, bin/conformance-server and
# bin/conformance-suites (the Makefile builds them).
#
# Usage: CONFORMANCE_VERSION=vX.Y.Z scripts/conformance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=${CONFORMANCE_VERSION:?set CONFORMANCE_VERSION to the pinned connectrpc.com/conformance version}
bin=${BIN:-bin}

dir=$(go mod download -json "connectrpc.com/conformance@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
suites=$dir/internal/app/connectconformance/testsuites/data
if [ ! -d "$suites" ]; then
	echo "conformance: no test suites at $suites" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin/conformance-suites" -src "$suites" -out "$tmp"

# run LABEL RUNNER-ARGS... -- SERVER-ARGS...: one runner invocation.
run() {
	local label=$1 log=$tmp/run.log start ms
	shift
	start=$(date +%s%N)
	if ! "$bin/connectconformance" --mode server --conf conformance/config.yaml "$@" >"$log" 2>&1; then
		cat "$log"
		echo "conformance: $label: FAILED" >&2
		return 1
	fi
	ms=$((($(date +%s%N) - start) / 1000000))
	printf 'conformance: %s: %s of %s cases passed (%d.%d s)\n' "$label" \
		"$(sed -n 's/^\([0-9]*\) passed, [0-9]* failed.*/\1/p' "$log")" \
		"$(sed -n 's/^Total cases: //p' "$log")" $((ms / 1000)) $((ms % 1000 / 100))
}

default_files=()
for f in "$tmp"/default/*.yaml; do
	default_files+=(--test-file "$f")
done
run "default suite $version over mTLS" "${default_files[@]}" -- "$bin/conformance-server"
run "token suite" --test-file "$tmp/auth/auth.yaml" -- \
	"$bin/conformance-server" --client-id spiffe://palisade.local/client/conformance-users --jwks "$tmp/auth/jwks.json"
