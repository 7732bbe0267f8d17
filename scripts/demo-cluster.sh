#!/usr/bin/env bash
# The Palisade cluster demo: a throwaway PostgreSQL server, two usersvc and
# three ordersvc replicas sharing it; an order created on one order replica
# is read from the others; usersvc-1 is killed (SIGKILL) while calls go
# through every order replica, and the calls that must not fail do not;
# every order replica still invalidates alice when she is renamed through
# usersvc-2; usersvc-1 comes back. Prints each step with its result and
# exits non-zero when any result is not the expected one. Every process it
# starts is stopped, and its temporary directories removed, on any exit.
#
# Ports: usersvc-N on CLUSTER_USER_ADDR's port + N-1, ordersvc-N on
# CLUSTER_ORDER_ADDR's + N-1, each with its admin listener (metrics) 10
# above; PostgreSQL on a free port. Logs: $PALISADE_HOME/logs/cluster/.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh

CLUSTER_USER_ADDR=${CLUSTER_USER_ADDR:-127.0.0.1:8543}
CLUSTER_ORDER_ADDR=${CLUSTER_ORDER_ADDR:-127.0.0.1:9543}
LOGS=$PALISADE_HOME/logs/cluster
USERSVCS=(usersvc-1 usersvc-2)
ORDERSVCS=(ordersvc-1 ordersvc-2 ordersvc-3)
declare -A ADDR ADMIN URL PID
for i in 1 2; do
	ADDR[usersvc-$i]=${CLUSTER_USER_ADDR%:*}:$((${CLUSTER_USER_ADDR##*:} + i - 1))
	ADMIN[usersvc-$i]=${CLUSTER_USER_ADDR%:*}:$((${CLUSTER_USER_ADDR##*:} + i + 9))
done
for i in 1 2 3; do
	ADDR[ordersvc-$i]=${CLUSTER_ORDER_ADDR%:*}:$((${CLUSTER_ORDER_ADDR##*:} + i - 1))
	ADMIN[ordersvc-$i]=${CLUSTER_ORDER_ADDR%:*}:$((${CLUSTER_ORDER_ADDR##*:} + i + 9))
done
for name in "${USERSVCS[@]}" "${ORDERSVCS[@]}"; do URL[$name]=https://${ADDR[$name]}; done
USER_URLS=${URL[usersvc-1]},${URL[usersvc-2]}

started=$EPOCHREALTIME
tmp=$(mktemp -d "${TMPDIR:-/tmp}/palisade-cluster.XXXXXX") || exit 1
workers=()

# stop NAME...: SIGTERM (the services drain), wait up to 15 s, then SIGKILL.
stop() {
	local name pid t0
	for name in "$@"; do
		pid=${PID[$name]:-}
		[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
	done
	for name in "$@"; do
		pid=${PID[$name]:-}
		[ -n "$pid" ] || continue
		t0=$EPOCHREALTIME
		while kill -0 "$pid" 2>/dev/null && within "$t0" 15; do sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			echo "$name (pid $pid) did not stop after 15s; killing it" >&2
			kill -KILL "$pid"
		fi
		wait "$pid" 2>/dev/null
		PID[$name]=
	done
}

cleanup() {
	touch "$tmp/stop"
	# The load workers see $tmp/stop before each call; their call of the
	# moment (curl, their child) is ended by its parent's process id, and
	# each is waited for, so that none is left behind.
	for pid in "${workers[@]}"; do pkill -TERM -P "$pid" 2>/dev/null; done
	for pid in "${workers[@]}"; do wait "$pid" 2>/dev/null; done
	stop "${ORDERSVCS[@]}"
	stop "${USERSVCS[@]}"
	pg_stop
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
if [ -t 1 ]; then bold=$'\033[1m' green=$'\033[32m' red=$'\033[31m' off=$'\033[0m'; else bold= green= red= off=; fi

# shellquote ARGS...: the arguments as a person would type them.
shellquote() {
	local a out=
	for a in "$@"; do
		if [[ $a =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
	done
	printf '%s' "${out# }"
}

# shown ARGS...: shellquote, with tokens, certificates and the temporary
# directory shown by the variables that hold them.
shown() {
	local s
	s=$(shellquote "$@")
	[ -n "${ALICE:-}" ] && s=${s//$ALICE/\$ALICE}
	[ -n "${ADMIN_TOKEN:-}" ] && s=${s//$ADMIN_TOKEN/\$ADMIN}
	s=${s//$CERTS/\$CERTS}
	s=${s//$tmp/\$TMP}
	printf '%s' "$s"
}

title() { printf '\n%s▶ %s%s\n' "$bold" "$1" "$off"; }

# verdict OK EXPECTED: count and print the step's result (OK is 1 or 0);
# false when it failed.
verdict() {
	if [ "$1" = 1 ]; then
		printf '  %sPASS%s%s\n' "$green" "$off" "${2:+ ($2)}"
		passed=$((passed + 1))
	else
		printf '  %sFAIL%s%s\n' "$red" "$off" "${2:+ (expected $2)}"
		failed=$((failed + 1))
		return 1
	fi
}

# check EXPECTED: verdict on the exit status of the command before.
check() { verdict $(($? == 0)) "$@"; }

# ms_since START: milliseconds since START (an $EPOCHREALTIME).
ms_since() {
	local now=$EPOCHREALTIME
	echo $(((${now/./} - ${1/./}) / 1000))
}

# within START SECONDS: true until SECONDS have passed since START (an
# $EPOCHREALTIME): the deadlines of the waits below, which hold however
# slowly a loaded machine runs each try.
within() { [ "$(ms_since "$1")" -lt $(($2 * 1000)) ]; }

CLI=(--cacert "$CERTS/ca.pem" --cert "$CERTS/cli.pem" --key "$CERTS/cli-key.pem")

# step TITLE WANT CURL-ARGS...: as in demo.sh. WANT is an HTTP status,
# optionally followed by ":text" that the body must contain. The body is
# left in $tmp/body.
step() {
	local title=$1 want=$2
	shift 2
	title "$title"
	printf '  $ curl %s\n' "$(shown "$@")"
	local code rc got ok=0
	code=$(curl -sS --max-time 10 -o "$tmp/body" -w '%{http_code}' "$@" 2>"$tmp/err")
	rc=$?
	if [ "$rc" -ne 0 ]; then
		got="curl exit $rc: $(tr -d '\n' <"$tmp/err")"
		: >"$tmp/body"
	else
		got="HTTP $code $(head -c 400 "$tmp/body" | tr '\n' ' ')"
		local want_code=${want%%:*} want_text=""
		[[ $want == *:* ]] && want_text=${want#*:}
		if [ "$code" = "$want_code" ] && { [ -z "$want_text" ] || grep -qF -- "$want_text" "$tmp/body"; }; then
			ok=1
		fi
	fi
	printf '  → %s\n' "$got"
	verdict "$ok" "$want"
	[ "$ok" = 1 ]
}

# lines NAME: how many lines the replica's log has now.
lines() { if [ -f "$LOGS/$1.log" ]; then wc -l <"$LOGS/$1.log"; else echo 0; fi; }

# logged NAME SINCE PATTERN...: the replica's log lines after its first
# SINCE that contain every PATTERN.
logged() {
	local name=$1 since=$2 out p
	shift 2
	out=$(tail -n +"$((since + 1))" "$LOGS/$name.log")
	for p in "$@"; do out=$(grep -F -- "$p" <<<"$out"); done
	[ -n "$out" ] && printf '%s\n' "$out"
}

# waitlog NAME SINCE START SECONDS PATTERN...: wait until SECONDS after
# START (an $EPOCHREALTIME) for a line of
# logged NAME SINCE PATTERN...; print the last.
waitlog() {
	local name=$1 since=$2 t0=$3 secs=$4 out
	shift 4
	while :; do
		if out=$(logged "$name" "$since" "$@"); then
			tail -n 1 <<<"$out"
			return 0
		fi
		within "$t0" "$secs" || return 1
		sleep 0.05
	done
}

# field NAME: the value of the JSON field NAME on stdin (a log line).
field() { grep -o "\"$1\":\(\"[^\"]*\"\|[^,}]*\)" | head -n 1 | cut -d: -f2- | tr -d '"'; }

# logms LINE: the time of a log line, in Unix milliseconds.
logms() { date -d "$(field time <<<"$1")" +%s%3N; }

# start NAME ARGS...: start the replica (bin/usersvc or bin/ordersvc) in
# the background, logging to $LOGS/NAME.log.
start() {
	local name=$1
	shift
	printf '  $ %s\n' "$(shown "$BIN/${name%-*}" "$@")"
	if ! port_free "${ADDR[$name]##*:}" || ! port_free "${ADMIN[$name]##*:}"; then
		printf '  %s or %s is taken (make up? another demo?)\n' "${ADDR[$name]}" "${ADMIN[$name]}"
		return 1
	fi
	"$BIN/${name%-*}" "$@" >>"$LOGS/$name.log" 2>&1 &
	PID[$name]=$!
}

# up NAME...: wait until each replica is healthy, at most 60 s: before it
# serves, usersvc-1 hashes the demo passwords (argon2id) and every replica
# runs its policy's tests, 15 s or more on a busy machine.
up() {
	local name ok=1 t0=$EPOCHREALTIME
	for name in "$@"; do
		while within "$t0" 60; do
			healthy "${URL[$name]}" && break
			kill -0 "${PID[$name]}" 2>/dev/null || break
			sleep 0.1
		done
		if healthy "${URL[$name]}"; then
			printf '  → %s is up at %s (pid %s)\n' "$name" "${URL[$name]}" "${PID[$name]}"
		else
			ok=0
			printf '  → %s is not up; the end of its log:\n' "$name"
			tail -n 10 "$LOGS/$name.log" | sed 's/^/    /'
		fi
	done
	[ "$ok" = 1 ]
}

TLS_USER=(--ca "$CERTS/ca.pem" --cert "$CERTS/usersvc.pem" --key "$CERTS/usersvc-key.pem")
TLS_ORDER=(--ca "$CERTS/ca.pem" --cert "$CERTS/ordersvc.pem" --key "$CERTS/ordersvc-key.pem")

# usersvc NAME PASSWORDS-FILE: start a user replica on the shared database
# and signing keys; only the one given a passwords file sets the demo
# passwords.
usersvc() {
	start "$1" --addr "${ADDR[$1]}" --admin-addr "${ADMIN[$1]}" "${TLS_USER[@]}" \
		--db "$(pg_url users)" --keys "$tmp/signing-keys.json" --demo-passwords "$2"
}

# ordersvc NAME: start an order replica on the shared database, given both
# user replicas. At debug level it logs each request it retries on another
# user replica.
ordersvc() {
	start "$1" --addr "${ADDR[$1]}" --admin-addr "${ADMIN[$1]}" "${TLS_ORDER[@]}" \
		--db "$(pg_url orders)" --user-service "$USER_URLS" --log-level debug
}

# abort WHY: stop the demo after a failed step the rest depends on.
abort() {
	printf '\n%s: the demo stops here\n%d steps passed, %d failed (logs: %s)\n' "$1" "$passed" "$failed" "$LOGS"
	exit 1
}

scripts/install-deps.sh || exit 1
mkdir -p "$LOGS"
for name in "${USERSVCS[@]}" "${ORDERSVCS[@]}"; do : >"$LOGS/$name.log"; done
if [ ! -f "$CERTS/ca.pem" ]; then
	"$BIN/palisade" certs init --dir "$CERTS" >/dev/null || exit 1
	echo "minted a development PKI into $CERTS"
fi
printf 'CERTS=%s TMP=%s (removed at exit)\n' "$CERTS" "$tmp"

# --- PostgreSQL --------------------------------------------------------------

title "A throwaway PostgreSQL: initdb into a temporary directory$([ "$(id -u)" -eq 0 ] && echo ' as the postgres user'), on 127.0.0.1, fsync off"
if ! pg_start; then
	verdict 0 "PostgreSQL running"
	abort "PostgreSQL did not start"
fi
printf '  $ initdb -D %s/data -U postgres --auth=trust --no-sync\n' "$PG_DIR"
printf '  $ postgres -D %s/data %s >%s/postgres.log 2>&1 &\n' "$PG_DIR" "$PG_OPTIONS" "$PG_DIR"
psql=("$PG_BIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qAt -v ON_ERROR_STOP=1)
printf '  $ psql -c %s -c %s -c %s\n' "'CREATE DATABASE users'" "'CREATE DATABASE orders'" "'SHOW server_version'"
if got=$("${psql[@]}" -d postgres -c 'CREATE DATABASE users' -c 'CREATE DATABASE orders' -c 'SHOW server_version' 2>&1); then
	printf '  → PostgreSQL %s on 127.0.0.1:%s, databases users and orders\n' "$got" "$PG_PORT"
	verdict 1
else
	printf '  → %s\n' "$got"
	verdict 0 "two databases created"
	abort "PostgreSQL does not answer"
fi

# --- The replicas ------------------------------------------------------------

title "usersvc-1 on the users database: it seeds alice, bob and admin and writes their demo passwords"
usersvc usersvc-1 "$tmp/demo-passwords.json" && up usersvc-1
check "healthy" || abort "usersvc-1 did not start"

title "Three ordersvc replicas at once on the orders database (they migrate it under an advisory lock), each given both user replicas"
ok=1
for name in "${ORDERSVCS[@]}"; do ordersvc "$name" || ok=0; done
[ "$ok" = 1 ] && up "${ORDERSVCS[@]}"
check "healthy" || abort "the order replicas did not start"
printf '  $ psql -d orders -c %s\n  → %s\n' "'SELECT service, version FROM schema_versions'" \
	"$("${psql[@]}" -d orders -c 'SELECT service, version FROM schema_versions' 2>&1 | tr '\n' ' ')"

title "usersvc-2 on the same database, after the order replicas: they subscribed to the change feed on usersvc-1"
usersvc usersvc-2 "" && up usersvc-2
check "healthy" || abort "usersvc-2 did not start"

for name in "${USERSVCS[@]}" "${ORDERSVCS[@]}"; do
	step "$name answers its health check" '200:"status":"SERVING_STATUS_SERVING"' \
		"${CLI[@]}" --json '{}' "${URL[$name]}/grpc.health.v1.Health/Check"
done

title "Each order replica follows the user change feed; usersvc-1 serves them"
ok=1
t0=$EPOCHREALTIME
for name in "${ORDERSVCS[@]}"; do
	if line=$(waitlog "$name" 0 "$t0" 30 '"msg":"user change feed caught up'); then
		printf '  %s log: %s\n' "$name" "$line"
	else
		printf '  %s log: no "user change feed caught up"\n' "$name"
		ok=0
	fi
done
feeds() { # feeds NAME: the feeds the user replica serves now
	echo $(($(logged "$1" 0 '"msg":"change feed opened"' | wc -l) - $(logged "$1" 0 '"msg":"change feed closed"' | wc -l)))
}
on1=$(feeds usersvc-1)
printf '  usersvc-1 serves %s change feeds, usersvc-2 %s\n' "$on1" "$(feeds usersvc-2)"
[ "$on1" -ge 1 ] || ok=0
verdict "$ok" "every feed caught up, at least one on usersvc-1"

# --- Tokens, and an order read from every replica -----------------------------

# login VAR USER REPLICA: log in with bin/palisade token and keep the token in VAR.
login() {
	local tok
	printf '  $ %s=$(%s)\n' "$1" "$(shown "$BIN/palisade" token --addr "${URL[$3]}" --user "$2" --demo-passwords "$tmp/demo-passwords.json")"
	if tok=$("$BIN/palisade" token --home "$PALISADE_HOME" --addr "${URL[$3]}" --user "$2" \
		--demo-passwords "$tmp/demo-passwords.json" 2>"$tmp/err"); then
		printf -v "$1" '%s' "$tok"
		printf '  → %s…%s (%d bytes)\n' "${tok:0:24}" "${tok: -8}" "${#tok}"
		verdict 1
	else
		printf '  → %s\n' "$(cat "$tmp/err")"
		verdict 0 "a token"
		abort "no token for $2"
	fi
}
title "alice logs in on usersvc-2, with the password usersvc-1 set: one database"
login ALICE alice usersvc-2
title "admin logs in on usersvc-1"
login ADMIN_TOKEN admin usersvc-1

step "alice orders on ordersvc-1: it asks the user service about her and caches her" \
	'200:"userDisplayName":"Alice"' \
	"${CLI[@]}" -H "Authorization: Bearer $ALICE" -H "X-Request-Id: cluster-order-1" \
	--json '{"userId":"alice","items":[{"sku":"book-1","quantity":2}]}' \
	"${URL[ordersvc-1]}/order.v1.OrderService/CreateOrder" || abort "no order"
order_id=$(grep -o '"id":"ord_[a-z0-9]*"' "$tmp/body" | head -n 1 | cut -d'"' -f4)
cp "$tmp/body" "$tmp/order.json"

for name in ordersvc-2 ordersvc-3; do
	step "GetOrder of that order on $name: the same order, from the shared database" "200:\"id\":\"$order_id\"" \
		"${CLI[@]}" -H "Authorization: Bearer $ALICE" --json "{\"id\":\"$order_id\"}" \
		"${URL[$name]}/order.v1.OrderService/GetOrder"
	title "... byte for byte the order ordersvc-1 returned"
	printf '  $ cmp <(GetOrder on %s) <(CreateOrder on ordersvc-1)\n' "$name"
	if cmp -s "$tmp/body" "$tmp/order.json"; then verdict 1; else
		printf '  → they differ:\n    %s\n    %s\n' "$(cat "$tmp/body")" "$(cat "$tmp/order.json")"
		verdict 0 "the same bytes"
	fi
done

# userread ID: the user replica's log line that read a user for request ID.
userread() {
	local name
	for name in "${USERSVCS[@]}"; do
		logged "$name" 0 '"msg":"user read"' "\"request_id\":\"$1\"" | sed "s/^/$name log: /"
	done
}
for name in ordersvc-2 ordersvc-3; do
	step "alice orders on $name: a miss in its cache, so it asks the user service" \
		'200:"userDisplayName":"Alice"' \
		"${CLI[@]}" -H "Authorization: Bearer $ALICE" -H "X-Request-Id: cluster-miss-${name#*-}" \
		--json '{"userId":"alice","items":[{"sku":"book-2","quantity":1}]}' \
		"${URL[$name]}/order.v1.OrderService/CreateOrder"
	line=$(userread "cluster-miss-${name#*-}")
	printf '  %s\n' "${line:-no user service log line for request cluster-miss-${name#*-}}"
	[ -n "$line" ]
	check "a user read logged for the request"
done
for name in "${ORDERSVCS[@]}"; do
	step "alice orders again on $name: answered from its cache, no call to the user service" \
		'200:"userDisplayName":"Alice"' \
		"${CLI[@]}" -H "Authorization: Bearer $ALICE" -H "X-Request-Id: cluster-hit-${name#*-}" \
		--json '{"userId":"alice","items":[{"sku":"book-3","quantity":1}]}' \
		"${URL[$name]}/order.v1.OrderService/CreateOrder"
	line=$(userread "cluster-hit-${name#*-}")
	printf '  %s\n' "${line:-no user service log line for request cluster-hit-${name#*-}: alice is cached on $name}"
	[ -z "$line" ]
	check "no user read for the request"
done

# A CreateOrder for a user who does not exist stores nothing and makes one
# call upstream: GetUser, which is idempotent (its delegated token is
# cached after the first). The load below makes many.
for name in "${ORDERSVCS[@]}"; do
	step "admin orders for nobody on $name: 400, the user service says there is no such user" \
		'400:does not exist' \
		"${CLI[@]}" -H "Authorization: Bearer $ADMIN_TOKEN" \
		--json '{"userId":"nobody","items":[{"sku":"book-1","quantity":1}]}' \
		"${URL[$name]}/order.v1.OrderService/CreateOrder"
done

# --- usersvc-1 killed under load -----------------------------------------------

# metrics NAME METHOD: the order replica's client calls of METHOD so far,
# by status code ("CODE COUNT" lines), from its admin listener.
metrics() {
	curl -sS --max-time 5 "http://${ADMIN[$1]}/metrics" | awk -v m="rpc_method=\"$2\"" '
		/^rpc_client_call_duration_seconds_count\{/ && index($0, m) {
			match($0, /rpc_response_status_code="[^"]*"/)
			n[substr($0, RSTART + 26, RLENGTH - 27)] += $NF
		}
		END { for (c in n) print c, n[c] }' | sort
}

# delta BEFORE AFTER: "CODE COUNT" of AFTER less BEFORE, nonzero ones.
delta() {
	awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d) print $1, d }' "$1" "$2"
}

# worker NAME: until $tmp/stop exists, alice's GetOrder and admin's
# CreateOrder for a user who does not exist on order replica NAME; one
# result line per call in $tmp/load-NAME. curl runs as the worker's own
# child (no command substitution), so that cleanup can stop it by its
# parent's process id.
worker() {
	local name=$1 n=0 code
	while [ ! -e "$tmp/stop" ]; do
		n=$((n + 1))
		pcurl --max-time 10 -o "$tmp/w-$name" -w '%{http_code}' -H "Authorization: Bearer $ALICE" \
			--json "{\"id\":\"$order_id\"}" "${URL[$name]}/order.v1.OrderService/GetOrder" >"$tmp/c-$name" 2>&1
		code=$(<"$tmp/c-$name")
		if [ "$code" = 200 ] && grep -qF "\"id\":\"$order_id\"" "$tmp/w-$name"; then
			echo "GetOrder ok"
		else
			echo "GetOrder failed $code $(head -c 200 "$tmp/w-$name" 2>/dev/null)"
		fi
		[ -e "$tmp/stop" ] && break
		pcurl --max-time 10 -o "$tmp/w-$name" -w '%{http_code}' -H "Authorization: Bearer $ADMIN_TOKEN" \
			--json "{\"userId\":\"nobody-${name#*-}-$n\",\"items\":[{\"sku\":\"book-1\",\"quantity\":1}]}" \
			"${URL[$name]}/order.v1.OrderService/CreateOrder" >"$tmp/c-$name" 2>&1
		code=$(<"$tmp/c-$name")
		if [ "$code" = 400 ] && grep -qF 'does not exist' "$tmp/w-$name"; then
			echo "Lookup ok"
		else
			echo "Lookup failed $code $(head -c 200 "$tmp/w-$name" 2>/dev/null)"
		fi
	done >"$tmp/load-$name"
}

title "Calls through every order replica; after 1 s, usersvc-1 is killed (SIGKILL) under them; they go on for 2 s more"
printf '  each order replica: loop { alice GetOrder %s; admin CreateOrder for nobody-N (its GetUser lookup) }\n' "$order_id"
declare -A since
for name in "${ORDERSVCS[@]}" usersvc-2; do since[$name]=$(lines "$name"); done
for name in "${ORDERSVCS[@]}"; do
	metrics "$name" user.v1.UserService/GetUser >"$tmp/before-get-$name"
	metrics "$name" palisade.token.v1.TokenService/ExchangeToken >"$tmp/before-xchg-$name"
done
rm -f "$tmp/stop"
for name in "${ORDERSVCS[@]}"; do
	worker "$name" &
	workers+=($!)
done
sleep 1
killed=$EPOCHREALTIME
printf '  $ kill -KILL %s   # usersvc-1\n' "${PID[usersvc-1]}"
kill -KILL "${PID[usersvc-1]}"
wait "${PID[usersvc-1]}" 2>/dev/null
PID[usersvc-1]=
sleep 2
touch "$tmp/stop"
wait "${workers[@]}"
workers=()
calls=0
for name in "${ORDERSVCS[@]}"; do
	get=$(grep -c '^GetOrder' "$tmp/load-$name")
	getbad=$(grep -c '^GetOrder failed' "$tmp/load-$name")
	look=$(grep -c '^Lookup' "$tmp/load-$name")
	lookbad=$(grep -c '^Lookup failed' "$tmp/load-$name")
	calls=$((calls + get + look))
	printf '  %s: GetOrder %d calls, %d failed; CreateOrder for nobody %d calls, %d not answered "does not exist"\n' \
		"$name" "$get" "$getbad" "$look" "$lookbad"
	grep 'failed' "$tmp/load-$name" | head -n 3 | sed 's/^/    /'
done

title "No idempotent call failed: GetOrder always answered, and so did every GetUser the order replicas made to the user service"
printf '  GetOrder and GetUser are NO_SIDE_EFFECTS in their .proto: a GetUser cut by the kill is retried on usersvc-2.\n'
printf '  CreateOrder has side effects, is never retried once sent, and may fail with unavailable; those made here\n'
printf '  for a user who does not exist call upstream only GetUser (the delegated token is cached: no ExchangeToken),\n'
printf '  so each must still be answered "does not exist". The order replicas'"'"' own count (rpc_client_call_duration_seconds_count):\n'
ok=1
bad=$(cat "$tmp"/load-ordersvc-* | grep -c 'failed')
[ "$bad" -eq 0 ] || ok=0
for name in "${ORDERSVCS[@]}"; do
	metrics "$name" user.v1.UserService/GetUser >"$tmp/after-get-$name"
	metrics "$name" palisade.token.v1.TokenService/ExchangeToken >"$tmp/after-xchg-$name"
	get=$(delta "$tmp/before-get-$name" "$tmp/after-get-$name" | paste -sd, | sed 's/,/, /g')
	xchg=$(delta "$tmp/before-xchg-$name" "$tmp/after-xchg-$name" | paste -sd, | sed 's/,/, /g')
	retried=$(logged "$name" "${since[$name]}" '"msg":"retrying a request on another endpoint"' "\"endpoint\":\"${ADDR[usersvc-1]}\"")
	printf '  %s: GetUser calls by code: %s; ExchangeToken calls: %s; requests to usersvc-1 retried on usersvc-2: %d\n' \
		"$name" "${get:-none}" "${xchg:-none}" "$(grep -c . <<<"$retried")"
	[ -n "$retried" ] && printf '%s\n' "$retried" | head -n 2 | sed "s/^/    $name log: /"
	delta "$tmp/before-get-$name" "$tmp/after-get-$name" | grep -qv '^\(OK\|NOT_FOUND\) ' && ok=0
	[ -n "$get" ] || ok=0 # the calls must have reached the user service
done
printf '  %d calls in all from the demo, %d failed\n' "$calls" "$bad"
verdict "$ok" "0 failed; GetUser only OK or NOT_FOUND"

title "Each order replica whose feed was on usersvc-1 resumed it on usersvc-2, after the last change it applied, with no reset"
ok=1
for name in "${ORDERSVCS[@]}"; do
	if ! lost=$(logged "$name" "${since[$name]}" '"msg":"user change feed lost'); then
		printf '  %s: its feed was not on usersvc-1\n' "$name"
		continue
	fi
	lost=$(tail -n 1 <<<"$lost")
	at=$(grep -nF -- "$lost" "$LOGS/$name.log" | tail -n 1 | cut -d: -f1)
	printf '  %s log: %s\n' "$name" "$lost"
	if back=$(waitlog "$name" "$at" "$killed" 20 '"msg":"user change feed caught up'); then
		sub=$(logged "$name" "$at" '"msg":"user change feed subscribing"' | tail -n 1)
		printf '  %s log: %s\n' "$name" "$sub"
		printf '  %s log: %s\n' "$name" "$back"
		printf '  → lost %d ms after the kill; resubscribed after sequence %s (its position when lost: %s); live again %d ms later\n' \
			"$(($(logms "$lost") - ${killed/./} / 1000))" \
			"$(field after_sequence <<<"$sub")" "$(field sequence <<<"$lost")" "$(($(logms "$back") - $(logms "$lost")))"
		[ "$(field after_sequence <<<"$sub")" = "$(field sequence <<<"$lost")" ] || ok=0
	else
		printf '  → not caught up within 20 s of the kill\n'
		ok=0
	fi
	if logged "$name" "${since[$name]}" '"msg":"user change feed reset' >/dev/null; then
		printf '  → %s got a reset\n' "$name"
		ok=0
	fi
done
printf '  usersvc-2 serves %s change feeds\n' "$(feeds usersvc-2)"
[ "$(feeds usersvc-2)" -eq 3 ] || ok=0
verdict "$ok" "every feed live again, all three on usersvc-2, no reset"

# --- alice renamed while usersvc-1 is down -------------------------------------

for name in "${ORDERSVCS[@]}" usersvc-2; do since[$name]=$(lines "$name"); done
renamed=$EPOCHREALTIME
step "admin renames alice through usersvc-2 (UpdateUser)" '200:"displayName":"Alice Liddell"' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN_TOKEN" \
	--json '{"user":{"id":"alice","displayName":"Alice Liddell"},"updateMask":"displayName"}' \
	"${URL[usersvc-2]}/user.v1.UserService/UpdateUser"
updated=$(waitlog usersvc-2 "${since[usersvc-2]}" "$renamed" 5 '"msg":"user updated"' '"user_id":"alice"')
printf '  usersvc-2 log: %s\n' "$updated"

# The staleness bound (README, Streaming and fan-out): 3 s after the feed's
# last heartbeat; 1 s more for the polling calls on a busy machine.
title "Every order replica shows her new name within the staleness bound (3 s): CreateOrder on each until its order says Alice Liddell"
ok=1
declare -A seen tries
for name in "${ORDERSVCS[@]}"; do tries[$name]=0; done
while :; do
	pending=0
	for name in "${ORDERSVCS[@]}"; do
		[ -n "${seen[$name]:-}" ] && continue
		pending=1
		tries[$name]=$((tries[$name] + 1))
		pcurl --max-time 5 -H "Authorization: Bearer $ALICE" --json '{"userId":"alice","items":[{"sku":"book-4","quantity":1}]}' \
			"${URL[$name]}/order.v1.OrderService/CreateOrder" >"$tmp/poll-$name" 2>&1
		grep -qF '"userDisplayName":"Alice Liddell"' "$tmp/poll-$name" && seen[$name]=$(ms_since "$renamed")
	done
	[ "$pending" = 0 ] && break
	within "$renamed" 4 || break
	sleep 0.05
done
for name in "${ORDERSVCS[@]}"; do
	if [ -n "${seen[$name]:-}" ]; then
		printf '  %s: "Alice Liddell" %d ms after the rename was sent (%d CreateOrder)\n' "$name" "${seen[$name]}" "${tries[$name]}"
	else
		printf '  %s: still not "Alice Liddell" after 4 s (%d CreateOrder); last: %s\n' "$name" "${tries[$name]}" "$(head -c 300 "$tmp/poll-$name")"
		ok=0
	fi
done
verdict "$ok" "every replica within 3 s + 1 s"

title "Every order replica invalidated alice, whom it had cached, from the feed it now follows on usersvc-2"
ok=1
for name in "${ORDERSVCS[@]}"; do
	if line=$(waitlog "$name" "${since[$name]}" "$renamed" 5 '"msg":"user cache invalidated' '"user_id":"alice"'); then
		printf '  %s log (%d ms after usersvc-2 logged the update): %s\n' "$name" \
			"$(($(logms "$line") - $(logms "$updated")))" "$line"
		[ "$(field was_cached <<<"$line")" = true ] || ok=0
	else
		printf '  %s log: no "user cache invalidated" for alice\n' "$name"
		ok=0
	fi
done
verdict "$ok" '"user cache invalidated", "was_cached":true, on every replica'

# --- usersvc-1 back --------------------------------------------------------------

title "usersvc-1 restarts (never writing the passwords file: --demo-passwords \"\")"
usersvc usersvc-1 "" && up usersvc-1
check "healthy"

step "usersvc-1 serves again: admin reads alice there, renamed through usersvc-2 while it was down" \
	'200:"displayName":"Alice Liddell"' \
	"${CLI[@]}" -H "Authorization: Bearer $ADMIN_TOKEN" --json '{"id":"alice"}' \
	"${URL[usersvc-1]}/user.v1.UserService/GetUser"

elapsed=$(ms_since "$started")
printf '\n%d steps passed, %d failed (%d.%d s; logs: %s)\n' "$passed" "$failed" \
	$((elapsed / 1000)) $((elapsed % 1000 / 100)) "$LOGS"
[ "$failed" -eq 0 ]
