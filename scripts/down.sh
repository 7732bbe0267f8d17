#!/usr/bin/env bash
# Stop the services started by up.sh: SIGTERM (they drain in-flight calls),
# then wait for them to exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

for name in ordersvc-2 ordersvc usersvc; do
	pidfile=$PALISADE_HOME/run/$name.pid
	[ -f "$pidfile" ] || continue
	pid=$(cat "$pidfile")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 150); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			echo "$name (pid $pid) did not stop after 15s; killing it" >&2
			kill -KILL "$pid"
		fi
		echo "stopped $name"
	fi
	rm -f "$pidfile"
done
