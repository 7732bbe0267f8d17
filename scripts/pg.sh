# A throwaway PostgreSQL server for the demo scripts, as the store tests
# start one (services/internal/pgtest): initdb into a fresh directory,
# postgres on a free port of 127.0.0.1 with its unix socket in that
# directory, fsync off — the data dies with the demo. Sourced, not run.
# initdb and postgres refuse to run as root: when this runs as root, they
# run as the "postgres" user (which the postgresql package creates), in a
# directory it owns. scripts/install-deps.sh installs PostgreSQL when
# initdb is missing.

# The PG* variables of the environment would change what initdb, postgres,
# psql and the services' connections do.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^PG' || true)

# pg_bindir: print the directory of initdb and postgres: initdb's on PATH,
# else the newest /usr/lib/postgresql/<version>/bin.
pg_bindir() {
	local p
	if p=$(command -v initdb) && p=$(readlink -f "$p") && [ -x "${p%/*}/postgres" ]; then
		echo "${p%/*}"
		return
	fi
	p=$(compgen -G '/usr/lib/postgresql/*/bin/initdb' | sort -t/ -k5,5n | tail -n 1)
	if [ -n "$p" ] && [ -x "${p%/*}/postgres" ]; then
		echo "${p%/*}"
		return
	fi
	echo "initdb and postgres not found on PATH or in /usr/lib/postgresql/*/bin: run scripts/install-deps.sh" >&2
	return 1
}

# pg_as CMD ARGS...: run CMD as the user that owns the server: this one,
# or "postgres" when this is root.
pg_as() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# port_free PORT: true when nothing accepts connections on 127.0.0.1:PORT.
port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# pg_start: create a temporary directory, PG_DIR, initdb into PG_DIR/data
# and start postgres on a free port, trying another if the port is taken
# meanwhile. Sets PG_DIR (as soon as it exists, so that the caller's trap
# can stop the server and remove it whatever fails), PG_BIN, PG_PORT and
# PG_PID; the server's log is PG_DIR/postgres.log, its options PG_OPTIONS.
# postgres runs as a child of this shell (not daemonized by pg_ctl), so
# that pg_stop reaps it and it leaves no zombie behind.
pg_start() {
	local dir port t0
	PG_BIN=$(pg_bindir) || return 1
	if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
		echo "running as root, and initdb refuses root: no postgres user to run it as (scripts/install-deps.sh installs PostgreSQL, which creates it)" >&2
		return 1
	fi
	PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/palisade-pg.XXXXXX") || return 1
	dir=$PG_DIR
	if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir" || return 1; fi
	pg_as "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C \
		--no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
	for _ in 1 2 3 4 5; do
		port=$((20000 + RANDOM % 10000))
		port_free "$port" || continue
		# -F: fsync off. -k: the unix socket in DIR, not /var/run/postgresql.
		PG_OPTIONS="-p $port -h 127.0.0.1 -k $dir -F -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=32MB -c max_connections=200"
		# shellcheck disable=SC2086 # PG_OPTIONS is split into words
		pg_as "$PG_BIN/postgres" -D "$dir/data" $PG_OPTIONS >"$dir/postgres.log" 2>&1 &
		PG_PID=$!
		t0=$SECONDS
		while kill -0 "$PG_PID" 2>/dev/null && [ $((SECONDS - t0)) -lt 60 ]; do
			if "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1; then
				PG_PORT=$port
				return 0
			fi
			sleep 0.1
		done
		pg_stop_server
		grep -q 'Address already in use' "$dir/postgres.log" 2>/dev/null || break
	done
	echo "postgres did not start; its log:" >&2
	tail -n 20 "$dir/postgres.log" >&2
	return 1
}

# pg_url DB: the URL of database DB, as the superuser (trust authentication,
# no TLS: loopback only).
pg_url() {
	echo "postgres://postgres@127.0.0.1:$PG_PORT/$1?sslmode=disable"
}

# pg_stop_server: stop the server at once, if it runs: SIGQUIT, postgres's
# immediate shutdown (nothing is kept), to the postmaster of PG_DIR's pid
# file; then wait for PG_PID (postgres, or runuser running it), both
# SIGKILLed after 30 s.
pg_stop_server() {
	local pid
	[ -n "${PG_PID:-}" ] || return 0
	pid=$(head -n 1 "$PG_DIR/data/postmaster.pid" 2>/dev/null)
	# The pid file may be stale (the server gone, its pid reused): only to
	# a postgres process.
	if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ]; then
		kill -QUIT "$pid" 2>/dev/null
	else
		kill -QUIT "$PG_PID" 2>/dev/null
	fi
	for _ in $(seq 1 300); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
	if kill -0 "$PG_PID" 2>/dev/null; then
		[ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] && kill -KILL "$pid" 2>/dev/null
		kill -KILL "$PG_PID" 2>/dev/null
	fi
	wait "$PG_PID" 2>/dev/null
	PG_PID=
}

# pg_stop: stop the server (pg_stop_server) and remove PG_DIR.
pg_stop() {
	local dir=${PG_DIR:-}
	[ -n "$dir" ] || return 0
	pg_stop_server
	rm -rf "$dir"
	PG_DIR=
}
