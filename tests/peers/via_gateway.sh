#!/usr/bin/env bash
# Owns: putting Flotilla between the MCP conformance suite's scenario server
# and a real client. The suite runs this as its client under test and passes
# the scenario server's URL as the last argument; this starts a gateway
# (binary: $FLOTILLA) on 127.0.0.1 with that URL as its only upstream
# (toolPrefix "": tool names unchanged), waits for /readyz, runs the Python
# SDK client (conformance_client.py) against the gateway and exits with the
# client's status. It stops exactly the gateway it started.
set -uo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
URL="${!#}"
# The suite names its server `localhost`; it listens on 127.0.0.1 in the tests.
URL="${URL/:\/\/localhost:/://127.0.0.1:}"
: "${FLOTILLA:?set FLOTILLA to the flotilla binary}"
WORK="$(mktemp -d)"
mkdir "$WORK/fleet"
cat > "$WORK/fleet/upstream.yaml" <<YAML
apiVersion: flotilla.dev/v1alpha1
kind: MCPServer
metadata: {name: conformance}
spec: {type: streamable-http, url: "$URL", toolPrefix: "", timeout: 20}
YAML
"$FLOTILLA" serve --manifests "$WORK/fleet" --bind 127.0.0.1 --port 0 >"$WORK/gateway.log" 2>&1 &
GATEWAY=$!
finish() {
  kill "$GATEWAY" 2>/dev/null; wait "$GATEWAY" 2>/dev/null
  if [[ "${STATUS:-1}" != 0 ]]; then echo "--- gateway log ---" >&2; tail -30 "$WORK/gateway.log" >&2; fi
  rm -rf "$WORK"
}
trap finish EXIT
MCP=""
for _ in $(seq 200); do
  MCP="$(grep -o 'http://127\.0\.0\.1:[0-9]*/mcp' "$WORK/gateway.log" | head -1)"
  [[ -n "$MCP" ]] && break
  sleep 0.05
done
[[ -n "$MCP" ]] || { echo "via_gateway: the gateway did not start" >&2; exit 2; }
for _ in $(seq 200); do
  curl -sf "${MCP%/mcp}/readyz" >/dev/null && break
  sleep 0.05
done
"$DIR/.venv/bin/python" "$DIR/conformance_client.py" "$MCP"
STATUS=$?
exit "$STATUS"
