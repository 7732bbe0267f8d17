#!/usr/bin/env bash
# Install what the tests and benchmarks need beyond Go, from Debian's
# packages:
#   - PostgreSQL (initdb and postgres), for the store tests that run on a
#     throwaway PostgreSQL server (services/internal/pgtest);
#   - redis-server, the peer `make bench-fanout` measures Palisade's change
#     feed against (Redis pub/sub over TLS, cmd/palisade/internal/fanout).
# Idempotent, and silent when everything is there already. Installs with
# apt-get (as root, or through sudo).
set -euo pipefail

have_postgres() {
	command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

have_redis() {
	command -v redis-server >/dev/null 2>&1
}

missing=()
have_postgres || missing+=(postgresql)
have_redis || missing+=(redis-server)
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-deps: ${missing[*]} missing, and no apt-get to install with: install PostgreSQL 15 or later and redis-server 7 or later (built with TLS)" >&2
	exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "install-deps: installing ${missing[*]} with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for m in "${missing[@]}"; do
	case $m in
	postgresql)
		if ! have_postgres; then
			echo "install-deps: postgresql is installed but initdb is still not found" >&2
			exit 1
		fi
		echo "install-deps: installed $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n 1 || command -v initdb)"
		;;
	redis-server)
		if ! have_redis; then
			echo "install-deps: redis-server is installed but not found on PATH" >&2
			exit 1
		fi
		echo "install-deps: installed $(command -v redis-server) ($(redis-server --version | cut -d' ' -f3))"
		;;
	esac
done
