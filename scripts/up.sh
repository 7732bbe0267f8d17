#!/usr/bin/env bash
# Start usersvc and ordersvc in the background and return once both are
# healthy. Logs go to $PALISADE_HOME/logs, pids to $PALISADE_HOME/run.
# Creates the development PKI first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

mkdir -p "$PALISADE_HOME/logs" "$PALISADE_HOME/run"
if [ ! -f "$CERTS/ca.pem" ]; then
	"$BIN/palisade" certs init --dir "$CERTS" >/dev/null
	echo "minted a development PKI into $CERTS"
fi

start() { # name args...
	local name=$1; shift
	local pidfile=$PALISADE_HOME/run/$name.pid
	if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
		echo "$name is already running (pid $(cat "$pidfile"))"
		return
	fi
	"$BIN/$name" "$@" >>"$PALISADE_HOME/logs/$name.log" 2>&1 &
	echo $! >"$pidfile"
}

start usersvc --addr "$USER_ADDR" --ca "$CERTS/ca.pem" --cert "$CERTS/usersvc.pem" --key "$CERTS/usersvc-key.pem" \
	--db "$PALISADE_HOME/users.db"
start ordersvc --addr "$ORDER_ADDR" --ca "$CERTS/ca.pem" --cert "$CERTS/ordersvc.pem" --key "$CERTS/ordersvc-key.pem" \
	--db "$PALISADE_HOME/orders.db" --user-service "$USER_URL"

for name_url in "usersvc $USER_URL" "ordersvc $ORDER_URL"; do
	set -- $name_url
	for _ in $(seq 1 100); do
		healthy "$2" && break
		if ! kill -0 "$(cat "$PALISADE_HOME/run/$1.pid")" 2>/dev/null; then
			echo "$1 exited; last log lines:" >&2
			tail -n 20 "$PALISADE_HOME/logs/$1.log" >&2
			exit 1
		fi
		sleep 0.1
	done
	if ! healthy "$2"; then
		echo "$1 is not healthy after 10s; see $PALISADE_HOME/logs/$1.log" >&2
		exit 1
	fi
	echo "$1 is up at $2 (pid $(cat "$PALISADE_HOME/run/$1.pid"))"
done
