#!/usr/bin/env bash
# Install what the tests need beyond Go: PostgreSQL (initdb and postgres),
# for the store tests that run on a throwaway PostgreSQL server
# (services/internal/pgtest). Idempotent, and silent when everything is
# there already. Installs with apt-get (as root, or through sudo).
set -euo pipefail

have_postgres() {
	command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

have_postgres && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "install-deps: initdb not found, and no apt-get to install it with: install PostgreSQL 15 or later" >&2
	exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
echo "install-deps: initdb not found; installing postgresql with apt-get"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
if ! have_postgres; then
	echo "install-deps: postgresql is installed but initdb is still not found" >&2
	exit 1
fi
echo "install-deps: installed $(compgen -G '/usr/lib/postgresql/*/bin/initdb' | head -n 1 || command -v initdb)"
