# Shared settings of the demo scripts; sourced, not run. Every value can be
# overridden from the environment, e.g. PALISADE_HOME=/tmp/p USER_ADDR=127.0.0.1:18443.
PALISADE_HOME=${PALISADE_HOME:-.palisade}
CERTS=$PALISADE_HOME/certs
USER_ADDR=${USER_ADDR:-127.0.0.1:8443}
ORDER_ADDR=${ORDER_ADDR:-127.0.0.1:9443}
BIN=${BIN:-bin}
# ORDER2_ADDR: the second order replica (ORDER_REPLICAS=2 scripts/up.sh, and
# the demo); by default the port after ORDER_ADDR's.
ORDER2_ADDR=${ORDER2_ADDR:-${ORDER_ADDR%:*}:$((${ORDER_ADDR##*:} + 1))}
USER_URL=https://$USER_ADDR
ORDER_URL=https://$ORDER_ADDR
# Admin listeners (Prometheus metrics at /metrics, plain HTTP on loopback):
# by default two ports above each service's port (8445, 9445).
USER_ADMIN_ADDR=${USER_ADMIN_ADDR:-${USER_ADDR%:*}:$((${USER_ADDR##*:} + 2))}
ORDER_ADMIN_ADDR=${ORDER_ADMIN_ADDR:-${ORDER_ADDR%:*}:$((${ORDER_ADDR##*:} + 2))}
ORDER2_URL=https://$ORDER2_ADDR

# curl as the demo's command-line client: its certificate is spiffe://palisade.local/client/cli.
pcurl() {
	curl -sS --cacert "$CERTS/ca.pem" --cert "$CERTS/cli.pem" --key "$CERTS/cli-key.pem" "$@"
}

# healthy URL: true when the service at URL reports SERVING.
healthy() {
	pcurl --max-time 2 --json '{}' "$1/grpc.health.v1.Health/Check" 2>/dev/null | grep -q '"status":"SERVING_STATUS_SERVING"'
}
