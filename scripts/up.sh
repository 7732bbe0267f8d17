#!/usr/bin/env bash
# Start usersvc, then ordersvc (which depends on it), in the background and
# return once both are healthy; with ORDER_REPLICAS=2, a second ordersvc
# replica too (ordersvc-2, on ORDER2_ADDR, with its own database, no admin
# listener). Logs go to $PALISADE_HOME/logs (NAME.log), trace spans too
# (NAME.traces.jsonl, one JSON span per line: --trace-stdout), pids to
# $PALISADE_HOME/run. Metrics are served on $USER_ADMIN_ADDR and
# $ORDER_ADMIN_ADDR (/metrics). Creates the development PKI first when it is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

mkdir -p "$PALISADE_HOME/logs" "$PALISADE_HOME/run"
if [ ! -f "$CERTS/ca.pem" ]; then
	"$BIN/palisade" certs init --dir "$CERTS" >/dev/null
	echo "minted a development PKI into $CERTS"
fi

# start NAME URL ARGS...: start the service unless it runs, wait until healthy.
# NAME is the binary, or the binary and a replica number (ordersvc-2).
start() {
	local name=$1 url=$2
	shift 2
	local pidfile=$PALISADE_HOME/run/$name.pid
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		echo "$name is already running (pid $(cat "$pidfile"))"
		return
	fi
	"$BIN/${name%%-*}" "$@" >>"$PALISADE_HOME/logs/$name.traces.jsonl" 2>>"$PALISADE_HOME/logs/$name.log" &
	echo $! >"$pidfile"
	for _ in $(seq 1 100); do
		if healthy "$url"; then
			echo "$name is up at $url (pid $(cat "$pidfile"))"
			return
		fi
		if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
			echo "$name exited; last log lines:" >&2
			tail -n 20 "$PALISADE_HOME/logs/$name.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	echo "$name is not healthy after 10s; see $PALISADE_HOME/logs/$name.log" >&2
	exit 1
}

# USER_POLICY_DIR=dir, ORDER_POLICY_DIR=dir make up: that service takes its
# policy layer (on the base policy in the binary) from dir, watched.
user_policy=()
[ -n "${USER_POLICY_DIR:-}" ] && user_policy=(--policy-dir "$USER_POLICY_DIR")
order_policy=()
[ -n "${ORDER_POLICY_DIR:-}" ] && order_policy=(--policy-dir "$ORDER_POLICY_DIR")

start usersvc "$USER_URL" --addr "$USER_ADDR" "${user_policy[@]}" --admin-addr "$USER_ADMIN_ADDR" --trace-stdout \
	--ca "$CERTS/ca.pem" --cert "$CERTS/usersvc.pem" --key "$CERTS/usersvc-key.pem" \
	--db "$PALISADE_HOME/users.db" --keys "$PALISADE_HOME/keys/signing-keys.json" \
	--demo-passwords "$PALISADE_HOME/demo-passwords.json"
start ordersvc "$ORDER_URL" --addr "$ORDER_ADDR" "${order_policy[@]}" --admin-addr "$ORDER_ADMIN_ADDR" --trace-stdout \
	--ca "$CERTS/ca.pem" --cert "$CERTS/ordersvc.pem" --key "$CERTS/ordersvc-key.pem" \
	--db "$PALISADE_HOME/orders.db" --user-service "$USER_URL"
if [ "${ORDER_REPLICAS:-1}" -ge 2 ]; then
	start ordersvc-2 "$ORDER2_URL" --addr "$ORDER2_ADDR" "${order_policy[@]}" --trace-stdout \
		--ca "$CERTS/ca.pem" --cert "$CERTS/ordersvc.pem" --key "$CERTS/ordersvc-key.pem" \
		--db "$PALISADE_HOME/orders-2.db" --user-service "$USER_URL"
fi
