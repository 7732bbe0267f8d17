#!/usr/bin/env bash
# The SPIRE end-to-end run (`make spire-e2e`, not part of `make test`): a
# throwaway SPIRE server (sqlite datastore, loopback, trust domain
# palisade.local, X509-SVIDs of SVID_TTL, 2 minutes) and a join-token
# attested agent; registration entries for usersvc, ordersvc and the caller
# (cmd/internal/spire-e2e), each selected by the agent's unix workload
# attestor on its uid, its binary's path and the binary's SHA-256 (they all
# run as one user, so the uid alone would not tell them apart); usersvc and
# ordersvc started with --spiffe-socket, their identity from the agent. The
# caller, its identity from the agent too, calls CreateOrder without a
# pause until it has seen the certificate each service serves, and its own,
# rotate ROTATIONS times (SPIRE renews an SVID at half its lifetime: about
# a minute), and fails on any failed call. Every process it starts is
# stopped, and its temporary directory removed, on any exit.
#
# SPIRE_BIN: the directory of spire-server and spire-agent (v1.13.3, built
# by `make spire-e2e` from tools/spire/go.mod into bin/spire). BIN: that of
# usersvc, ordersvc and spire-e2e. Ports: SPIRE_E2E_USER_ADDR,
# SPIRE_E2E_ORDER_ADDR, SPIRE_SERVER_PORT. Logs: $PALISADE_HOME/logs/spire-e2e/.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

SPIRE_BIN=${SPIRE_BIN:-bin/spire}
USER_E2E_ADDR=${SPIRE_E2E_USER_ADDR:-127.0.0.1:18643}
ORDER_E2E_ADDR=${SPIRE_E2E_ORDER_ADDR:-127.0.0.1:19643}
# Admin listeners (GET /healthz: 200 once serving) two ports above.
USER_ADMIN=${USER_E2E_ADDR%:*}:$((${USER_E2E_ADDR##*:} + 2))
ORDER_ADMIN=${ORDER_E2E_ADDR%:*}:$((${ORDER_E2E_ADDR##*:} + 2))
SPIRE_SERVER_PORT=${SPIRE_SERVER_PORT:-18681}
SVID_TTL=${SVID_TTL:-120}
ROTATIONS=${ROTATIONS:-2}
TD=palisade.local
NODE_ID=spiffe://$TD/node/spire-e2e
LOGS=$PALISADE_HOME/logs/spire-e2e

for f in "$SPIRE_BIN/spire-server" "$SPIRE_BIN/spire-agent" "$BIN/usersvc" "$BIN/ordersvc" "$BIN/spire-e2e"; do
	[ -x "$f" ] || { echo "spire-e2e: $f is missing (run make spire-e2e)" >&2; exit 1; }
done
server=$(realpath "$SPIRE_BIN/spire-server")
agent=$(realpath "$SPIRE_BIN/spire-agent")

started=$EPOCHREALTIME
tmp=$(mktemp -d "${TMPDIR:-/tmp}/palisade-spire.XXXXXX") || exit 1
mkdir -p "$tmp/server" "$tmp/agent" "$tmp/svc/keys" "$LOGS"
rm -f "$LOGS"/*.log
declare -A PID

# stop NAME...: SIGTERM, wait up to 15 s, then SIGKILL.
stop() {
	local name pid i
	for name in "$@"; do
		pid=${PID[$name]:-}
		[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
	done
	for name in "$@"; do
		pid=${PID[$name]:-}
		[ -n "$pid" ] || continue
		for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$pid" 2>/dev/null; then
			echo "$name (pid $pid) did not stop after 15s; killing it" >&2
			kill -KILL "$pid"
		fi
		wait "$pid" 2>/dev/null
		PID[$name]=
	done
}

cleanup() {
	stop caller
	stop ordersvc usersvc
	stop spire-agent
	stop spire-server
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() { printf '%6.1fs %s\n' "$(elapsed)" "$*"; }
elapsed() { awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { print b - a }'; }
fail() {
	echo "spire-e2e: $*" >&2
	for f in "$LOGS"/*.log; do echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2; done
	exit 1
}

# start NAME LOG COMMAND...: start COMMAND in the background, its output to LOG.
start() {
	local name=$1 log=$2
	shift 2
	"$@" >"$log" 2>&1 &
	PID[$name]=$!
}

# wait_for NAME SECONDS COMMAND...: until COMMAND succeeds, or NAME exits, or SECONDS pass.
wait_for() {
	local name=$1 secs=$2 i
	shift 2
	for i in $(seq $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited"
		sleep 0.1
	done
	fail "$name not ready after ${secs}s"
}

# The server: its CA lives 30 minutes (SPIRE wants a CA TTL of at least six
# SVID lifetimes, and the JWT-SVIDs' default is 5 minutes), enough for the
# run, and nothing rotates it meanwhile.
cat >"$tmp/server/server.conf" <<EOF
server {
    bind_address = "127.0.0.1"
    bind_port = "$SPIRE_SERVER_PORT"
    socket_path = "$tmp/server/api.sock"
    trust_domain = "$TD"
    data_dir = "$tmp/server/data"
    log_level = "INFO"
    ca_ttl = "30m"
    default_x509_svid_ttl = "${SVID_TTL}s"
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = "$tmp/server/data/datastore.sqlite3"
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
EOF
spire_server() { "$server" "$@" -socketPath "$tmp/server/api.sock"; }
start spire-server "$LOGS/spire-server.log" "$server" run -config "$tmp/server/server.conf"
wait_for spire-server 60 spire_server healthcheck
step "spire-server $("$server" --version 2>&1) up on 127.0.0.1:$SPIRE_SERVER_PORT (trust domain $TD, X509-SVIDs of ${SVID_TTL}s, CA of 30m)"

token=$(spire_server token generate -spiffeID "$NODE_ID" -ttl 300 | awk '/^Token:/ {print $2}')
[ -n "$token" ] || fail "no join token"
spire_server bundle show >"$tmp/agent/bundle.pem" || fail "no bundle"
cat >"$tmp/agent/agent.conf" <<EOF
agent {
    data_dir = "$tmp/agent/data"
    log_level = "INFO"
    server_address = "127.0.0.1"
    server_port = "$SPIRE_SERVER_PORT"
    socket_path = "$tmp/agent/agent.sock"
    trust_bundle_path = "$tmp/agent/bundle.pem"
    trust_domain = "$TD"
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {
            discover_workload_path = true
        }
    }
}
EOF
start spire-agent "$LOGS/spire-agent.log" "$agent" run -config "$tmp/agent/agent.conf" -joinToken "$token"
wait_for spire-agent 60 "$agent" healthcheck -socketPath "$tmp/agent/agent.sock"
step "spire-agent attested with a join token as $NODE_ID; Workload API on unix://$tmp/agent/agent.sock"

# register NAME SPIFFE-ID: an entry for the binary $BIN/NAME run by this user.
register() {
	local path sum
	path=$(realpath "$BIN/$1")
	sum=$(sha256sum "$path" | cut -d' ' -f1)
	spire_server entry create -parentID "$NODE_ID" -spiffeID "$2" -x509SVIDTTL "$SVID_TTL" \
		-selector "unix:uid:$(id -u)" -selector "unix:path:$path" -selector "unix:sha256:$sum" >/dev/null ||
		fail "entry for $1"
	step "entry $2 <- unix:uid:$(id -u), unix:path:$path, unix:sha256:${sum:0:12}…"
}
register usersvc "spiffe://$TD/svc/user"
register ordersvc "spiffe://$TD/svc/order"
register spire-e2e "spiffe://$TD/client/spire-e2e"
# The agent learns of new entries at its next sync (every 5 s): wait for it
# to hold the three SVIDs, so that no workload asks before it has them.
agent_has() { grep -q "msg=\"Creating X509-SVID\".*spiffe_id=\"$1\"" "$LOGS/spire-agent.log"; }
for id in svc/user svc/order client/spire-e2e; do wait_for spire-agent 30 agent_has "spiffe://$TD/$id"; done
step "spire-agent holds the three SVIDs"

socket=unix://$tmp/agent/agent.sock
start usersvc "$LOGS/usersvc.log" "$BIN/usersvc" --addr "$USER_E2E_ADDR" --admin-addr "$USER_ADMIN" --spiffe-socket "$socket" \
	--db "$tmp/svc/users.db" --keys "$tmp/svc/keys/signing-keys.json" --demo-passwords "$tmp/svc/demo-passwords.json"
wait_for usersvc 60 curl -sf "http://$USER_ADMIN/healthz"
step "usersvc serving on $USER_E2E_ADDR (--spiffe-socket)"
start ordersvc "$LOGS/ordersvc.log" "$BIN/ordersvc" --addr "$ORDER_E2E_ADDR" --admin-addr "$ORDER_ADMIN" --spiffe-socket "$socket" \
	--db "$tmp/svc/orders.db" --user-service "https://$USER_E2E_ADDR"
wait_for ordersvc 60 curl -sf "http://$ORDER_ADMIN/healthz"
step "ordersvc serving on $ORDER_E2E_ADDR (--spiffe-socket), calling usersvc as spiffe://$TD/svc/order"

step "CreateOrder without a pause until every certificate has rotated $ROTATIONS times"
"$BIN/spire-e2e" --socket "$socket" --user-url "https://$USER_E2E_ADDR" --order-url "https://$ORDER_E2E_ADDR" \
	--passwords "$tmp/svc/demo-passwords.json" --rotations "$ROTATIONS" --timeout "$(((ROTATIONS + 1) * SVID_TTL + 120))s" &
PID[caller]=$!
wait "${PID[caller]}"
rc=$?
PID[caller]=
for name in usersvc ordersvc; do
	kill -0 "${PID[$name]}" 2>/dev/null || fail "$name exited during the run"
	log=$LOGS/$name.log
	echo "  $name log: $(grep -c '"msg":"SVID updated"' "$log") SVIDs taken from the agent, $(grep -c '"msg":"SVID refused"' "$log") refused;" \
		"$(grep -c '"level":"ERROR"' "$log") errors; $(grep -c 'bound to another client certificate' "$log") tokens refused as bound to a previous certificate"
done
[ "$rc" -eq 0 ] || fail "the caller failed"
step "spire-e2e: PASS"
