#!/usr/bin/env bash
# The Palisade demo: start the user service and two order replicas, play a
# scripted scenario with curl, print each step with its result, stop the
# services. Exits non-zero when
# any step's result is not the expected one.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

FOREIGN=$PALISADE_HOME/foreign-certs
tmp=$(mktemp -d)
trap 'scripts/down.sh >/dev/null; rm -rf "$tmp"' EXIT

# Where the order replicas' logs stand before this run (they are appended to).
lines() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
start1=$(lines "$PALISADE_HOME/logs/ordersvc.log")
start2=$(lines "$PALISADE_HOME/logs/ordersvc-2.log")
ORDER_REPLICAS=2 scripts/up.sh || exit 1
if [ ! -f "$FOREIGN/cli.pem" ]; then
	"$BIN/palisade" certs init --dir "$FOREIGN" >/dev/null || exit 1
fi

passed=0
failed=0
if [ -t 1 ]; then bold=$'\033[1m' green=$'\033[32m' red=$'\033[31m' off=$'\033[0m'; else bold= green= red= off=; fi

# shellquote ARGS...: the arguments as a person would type them.
shellquote() {
	local a out=
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
	done
	printf '%s' "${out# }"
}

# serverlog SERVICE PATTERN: the service's last log line matching PATTERN.
serverlog() {
	grep -F -- "$2" "$PALISADE_HOME/logs/$1.log" | tail -n 1
}

# step TITLE WANT CURL-ARGS...
# WANT is an HTTP status, optionally followed by ":text" that the body must
# contain, or "refused" for a connection the TLS handshake must refuse.
step() {
	local title=$1 want=$2
	shift 2
	local shown
	shown=$(shellquote "$@")
	# Show tokens by the variable that holds them, as a person would type it.
	[ -n "${ALICE:-}" ] && shown=${shown//$ALICE/\$ALICE}
	[ -n "${ADMIN:-}" ] && shown=${shown//$ADMIN/\$ADMIN}
	[ -n "${BOB:-}" ] && shown=${shown//$BOB/\$BOB}
	printf '\n%s▶ %s%s\n  $ curl %s\n' "$bold" "$title" "$off" "$shown"
	local code rc
	code=$(curl -sS -o "$tmp/body" -w '%{http_code}' "$@" 2>"$tmp/err")
	rc=$?
	local got ok=0
	if [ "$rc" -ne 0 ]; then
		got="refused (curl exit $rc: $(tr -d '\n' <"$tmp/err" | sed 's/^curl: ([0-9]*) //'))"
		[ "$want" = refused ] && ok=1
	else
		got="HTTP $code $(head -c 400 "$tmp/body" | tr '\n' ' ')"
		local want_code=${want%%:*} want_text=""
		[[ $want == *:* ]] && want_text=${want#*:}
		if [ "$code" = "$want_code" ] && { [ -z "$want_text" ] || grep -qF -- "$want_text" "$tmp/body"; }; then
			ok=1
		fi
	fi
	printf '  → %s\n' "$got"
	if [ "$ok" = 1 ]; then
		printf '  %sPASS%s (expected %s)\n' "$green" "$off" "$want"
		passed=$((passed + 1))
	else
		printf '  %sFAIL%s (expected %s)\n' "$red" "$off" "$want"
		failed=$((failed + 1))
	fi
}

# trace_spans REQUEST_ID: the spans of the trace that the request with that
# id started, from both services' span files, in the order they started:
# service, kind, name, span id and parent span id ("-" for the root).
trace_spans() {
	local files=("$PALISADE_HOME/logs/ordersvc.traces.jsonl" "$PALISADE_HOME/logs/usersvc.traces.jsonl") trace
	trace=$(grep -h -F "\"Value\":\"$1\"" "${files[@]}" | tail -n 1 | grep -o '"TraceID":"[0-9a-f]*"' | head -n 1 | cut -d'"' -f4)
	[ -n "$trace" ] || return 0
	grep -h -F "\"TraceID\":\"$trace\"" "${files[@]}" |
		sed -E 's/^\{"Name":"([^"]*)","SpanContext":\{"TraceID":"[0-9a-f]*","SpanID":"([0-9a-f]*)".*"Parent":\{"TraceID":"[0-9a-f]*","SpanID":"([0-9a-f]*)".*"SpanKind":([0-9]),"StartTime":"([^"]*)".*"service.name","Value":\{"Type":"STRING","Value":"([a-z]*)".*$/\5 \6 \4 \1 span=\2 parent=\3/' |
		sort | cut -d' ' -f2- | sed -E 's/ 2 / server /; s/ 3 / client /; s/parent=0{16}$/parent=-/'
}

CLI=(--cacert "$CERTS/ca.pem" --cert "$CERTS/cli.pem" --key "$CERTS/cli-key.pem")
OTHER=(--cacert "$CERTS/ca.pem" --cert "$CERTS/other.pem" --key "$CERTS/other-key.pem")

# login TITLE VAR USER: log in with bin/palisade token and keep the token in VAR.
login() {
	[ -n "$1" ] && printf '\n%s▶ %s%s\n' "$bold" "$1" "$off"
	printf '  $ %s=$(%s/palisade token --user %s)\n' "$2" "$BIN" "$3"
	local tok
	if tok=$("$BIN/palisade" token --home "$PALISADE_HOME" --addr "$USER_URL" --user "$3" 2>"$tmp/err"); then
		printf -v "$2" '%s' "$tok"
		printf '  → %s…%s (%d bytes, EdDSA, bound to cli.pem)\n  %sPASS%s\n' "${tok:0:24}" "${tok: -8}" "${#tok}" "$green" "$off"
		passed=$((passed + 1))
	else
		printf '  → %s\n  %sFAIL%s\n' "$(cat "$tmp/err")" "$red" "$off"
		failed=$((failed + 1))
	fi
}

login "Login: alice gets an access token (argon2id password check, JWT signed by the user service)" ALICE alice
login "Login: bob and admin get theirs" BOB bob
login "" ADMIN admin

step "GetUser with alice's token: the chain verifies her token and the cli workload" '200:"id":"alice"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"id":"alice"}' "$USER_URL/user.v1.UserService/GetUser"

step "alice reads bob: 403, the policy says why and names its decision" '403:customers may only read their own user record' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"id":"bob"}' "$USER_URL/user.v1.UserService/GetUser"
decision=$(grep -o 'decision [0-9a-f]*-[0-9]*' "$tmp/body" | head -n 1 | cut -d' ' -f2)
printf '  usersvc decision log: %s\n' "$(serverlog usersvc "\"decision_id\":\"$decision\"")"

step "admin reads bob: 200" '200:"id":"bob"' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN" --json '{"id":"bob"}' "$USER_URL/user.v1.UserService/GetUser"

step "The same call without a token: 401, the procedure needs a user" '401:"code":"unauthenticated"' \
	"${CLI[@]}" --json '{"id":"alice"}' "$USER_URL/user.v1.UserService/GetUser"

step "alice's token replayed with another client certificate (other.pem): 401, the token is bound to cli.pem" \
	'401:invalid token' \
	"${OTHER[@]}" -H "Authorization: Bearer $ALICE" --json '{"id":"alice"}' "$USER_URL/user.v1.UserService/GetUser"
printf '  usersvc log: %s\n' "$(serverlog usersvc 'token: binding')"

step "CreateOrder: the order service exchanges alice's token for a delegated one and asks the user service about her" \
	'200:"status":"ORDER_STATUS_ACCEPTED"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" -H "X-Request-Id: demo-order-1" \
	--json '{"userId":"alice","items":[{"sku":"book-1","quantity":2}]}' \
	"$ORDER_URL/order.v1.OrderService/CreateOrder"
printf '  usersvc log: %s\n' "$(serverlog usersvc '"msg":"token exchanged"')"
printf '  usersvc log: %s\n' "$(serverlog usersvc '"actor":"spiffe://palisade.local/svc/order"')"
order_id=$(grep -o '"id":"ord_[a-z0-9]*"' "$tmp/body" | head -n 1 | cut -d'"' -f4)

# The trace of that call: both services write their spans with --trace-stdout.
printf '\n%s▶ The trace of request demo-order-1 across both services (logs/*.traces.jsonl)%s\n' "$bold" "$off"
trace_spans demo-order-1 >"$tmp/spans"
sed 's/^/    /' "$tmp/spans"
if [ "$(grep -c . "$tmp/spans")" = 5 ] && [ "$(grep -c 'parent=-' "$tmp/spans")" = 1 ]; then
	printf '  %sPASS%s (5 spans, one root: the order service'"'"'s; the user service'"'"'s are its descendants)\n' "$green" "$off"
	passed=$((passed + 1))
else
	printf '  %sFAIL%s (expected 5 spans with one root)\n' "$red" "$off"
	failed=$((failed + 1))
fi

step "CreateOrder with quantity 0 and no sku: 400, the request's rules (protovalidate) name the field and the rule" \
	'400:items[0].quantity: must be greater than or equal to 1' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"userId":"alice","items":[{"sku":"","quantity":0}]}' \
	"$ORDER_URL/order.v1.OrderService/CreateOrder"

step "alice creates an order for bob: 403, customers order for themselves only" \
	'403:customers may only create orders for themselves' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"userId":"bob","items":[{"sku":"book-1","quantity":1}]}' \
	"$ORDER_URL/order.v1.OrderService/CreateOrder"

step "bob reads alice's order: 403 (the handler asks the policy again with the stored order's owner)" \
	'403:customers may only read their own orders' \
	"${CLI[@]}" -H "Authorization: Bearer $BOB" --json "{\"id\":\"$order_id\"}" "$ORDER_URL/order.v1.OrderService/GetOrder"

step "alice reads her order: 200" '200:"userId":"alice"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json "{\"id\":\"$order_id\"}" "$ORDER_URL/order.v1.OrderService/GetOrder"

step "CreateOrder for an unknown user (as admin): refused, nothing stored" '400:does not exist' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN" --json '{"userId":"zed","items":[{"sku":"book-1","quantity":1}]}' \
	"$ORDER_URL/order.v1.OrderService/CreateOrder"

step "A caller without a client certificate: the TLS handshake refuses it" refused \
	--cacert "$CERTS/ca.pem" --json '{"id":"alice"}' "$USER_URL/user.v1.UserService/GetUser"
sleep 0.2 # the server logs the refused handshake after the client gives up
printf '  usersvc log: %s\n' "$(serverlog usersvc "client didn't provide a certificate")"

step "A caller whose certificate comes from another CA: refused" refused \
	--cacert "$CERTS/ca.pem" --cert "$FOREIGN/cli.pem" --key "$FOREIGN/cli-key.pem" \
	--json '{"id":"alice"}' "$USER_URL/user.v1.UserService/GetUser"
sleep 0.2
printf '  usersvc log: %s\n' "$(serverlog usersvc "certificate signed by unknown authority")"

step "Metrics: the user service's admin listener (plain HTTP, loopback only) in Prometheus format" \
	'200:palisade_authz_decisions_total{result="deny"}' "http://$USER_ADMIN_ADDR/metrics"
grep -E '^(palisade_|rpc_server_call_duration_seconds_count\{rpc_method="user.v1.UserService/GetUser")' "$tmp/body" | sed 's/^/    /'

# waitlog SERVICE SINCE PATTERN...: wait up to 5 s for a line of the service's
# log, after its first SINCE lines, that contains every PATTERN; print it.
waitlog() {
	local name=$1 since=$2 lines p
	shift 2
	for _ in $(seq 1 50); do
		lines=$(tail -n +"$((since + 1))" "$PALISADE_HOME/logs/$name.log")
		for p in "$@"; do lines=$(grep -F -- "$p" <<<"$lines"); done
		if [ -n "$lines" ]; then
			printf '  %s log: %s\n' "$name" "$(tail -n 1 <<<"$lines")"
			return 0
		fi
		sleep 0.1
	done
	printf '  %s log: no line with %s\n' "$name" "$*"
	return 1
}

# replicalog TITLE SINCE1 SINCE2 PATTERN...: a step that passes when both order
# replicas log a line with every PATTERN (after their first SINCE1, SINCE2 lines).
replicalog() {
	local title=$1 since1=$2 since2=$3 ok=1
	shift 3
	printf '\n%s▶ %s%s\n' "$bold" "$title" "$off"
	waitlog ordersvc "$since1" "$@" || ok=0
	waitlog ordersvc-2 "$since2" "$@" || ok=0
	if [ "$ok" = 1 ]; then
		printf '  %sPASS%s\n' "$green" "$off"
		passed=$((passed + 1))
	else
		printf '  %sFAIL%s\n' "$red" "$off"
		failed=$((failed + 1))
	fi
}

# Fan-out: both order replicas follow the user service's change feed.
replicalog "Two order replicas follow the user change feed (WatchUserChanges, as spiffe://palisade.local/svc/order, no token)" \
	"$start1" "$start2" '"msg":"user change feed caught up'

step "alice orders on the second replica: it asks the user service about her, then caches her" \
	'200:"status":"ORDER_STATUS_ACCEPTED"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"userId":"alice","items":[{"sku":"book-2","quantity":1}]}' \
	"$ORDER2_URL/order.v1.OrderService/CreateOrder"

since1=$(lines "$PALISADE_HOME/logs/ordersvc.log")
since2=$(lines "$PALISADE_HOME/logs/ordersvc-2.log")
step "admin renames alice (UpdateUser): the change and its sequence number are committed together" \
	'200:"displayName":"Alice Liddell"' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN" \
	--json '{"user":{"id":"alice","displayName":"Alice Liddell"},"updateMask":"displayName"}' \
	"$USER_URL/user.v1.UserService/UpdateUser"

replicalog "Both replicas invalidate alice at once: the change reached every node" \
	"$since1" "$since2" '"msg":"user cache invalidated"' '"user_id":"alice"'

step "alice orders again on the second replica: the order carries her new name" \
	'200:"userDisplayName":"Alice Liddell"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"userId":"alice","items":[{"sku":"book-2","quantity":1}]}' \
	"$ORDER2_URL/order.v1.OrderService/CreateOrder"

step "... and on the first replica too" '200:"userDisplayName":"Alice Liddell"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json '{"userId":"alice","items":[{"sku":"book-1","quantity":1}]}' \
	"$ORDER_URL/order.v1.OrderService/CreateOrder"

step "admin gives alice her name back, for the next run" '200:"displayName":"Alice"' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN" \
	--json '{"user":{"id":"alice","displayName":"Alice"},"updateMask":"displayName"}' \
	"$USER_URL/user.v1.UserService/UpdateUser"

printf '\n%d steps passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
