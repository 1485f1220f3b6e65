#!/usr/bin/env bash
# Owns: an end-to-end smoke check of the installed peers (not used by cargo tests).
# Starts each server on 127.0.0.1 port 0 (reading back the port it bound:
# never a port picked here and released for it), checks it binds loopback only,
# lists/calls tools with curl, the Inspector CLI and py_client.py (auto + legacy),
# then kills everything it started. Prints "N passed, N failed".
set -euo pipefail
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
eval "$("$DIR/install.sh")"
cd "$DIR"
pass=0; fail=0; pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
ok() { echo "ok   $1"; pass=$((pass+1)); }
ko() { echo "FAIL $1"; fail=$((fail+1)); }
check() { local name=$1; shift; if "$@" >/tmp/peers-smoke.out 2>&1; then ok "$name"; else ko "$name"; sed 's/^/     /' /tmp/peers-smoke.out | tail -5; fi; }
# The TCP port process $1 listens on (it was told port 0), within 30 s.
port_of() { local p; for _ in $(seq 300); do
  p=$(ss -Hltnp 2>/dev/null | awk -v pid="pid=$1," 'index($0, pid) { n = split($4, a, ":"); print a[n]; exit }')
  [[ -n $p ]] && { echo "$p"; return 0; }; sleep 0.1; done; echo "no port for pid $1" >&2; return 1; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
loopback_only() { ! ss -Hltn "sport = :$1" | awk '{print $4}' | grep -qv '^127\.0\.0\.1:'; }
curl_init() { curl -sSf -o /dev/null -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' "$1" \
  -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}'; }
insp() { "$NODE22" "$INSPECTOR_JS" --cli "$@" --format json; }
has() { "$@" | grep -q "$EXPECT"; }

# server-everything, streamableHttp
PORT=0 node --require "$LOOPBACK_PRELOAD" "$EVERYTHING_JS" streamableHttp >/dev/null 2>&1 & pids+=($!); P1=$(port_of $!) || P1=0
# server-everything, sse
PORT=0 node --require "$LOOPBACK_PRELOAD" "$EVERYTHING_JS" sse >/dev/null 2>&1 & pids+=($!); P2=$(port_of $!) || P2=0
# kubernetes-mcp-server
"$KUBERNETES_MCP_SERVER" --port 0 --bind-address 127.0.0.1 --kubeconfig "$KUBECONFIG_FAKE" >/dev/null 2>&1 & pids+=($!); P3=$(port_of $!) || P3=0
# python server
"$PY" "$PY_SERVER" --port 0 >/dev/null 2>&1 & pids+=($!); P4=$(port_of $!) || P4=0
for p in $P1 $P2 $P3 $P4; do check "listening+loopback-only :$p" bash -c "$(declare -f wait_port loopback_only); wait_port $p && loopback_only $p"; done

E=http://127.0.0.1:$P1/mcp S=http://127.0.0.1:$P2/sse K=http://127.0.0.1:$P3/mcp Y=http://127.0.0.1:$P4/mcp
for u in $E $K $Y; do check "curl initialize $u" curl_init "$u"; done
EXPECT=get-sum check "inspector tools/list everything(http)" has insp "$E" --transport http --method tools/list
EXPECT=get-sum check "inspector tools/list everything(sse)" has insp "$S" --transport sse --method tools/list
EXPECT=pods_list check "inspector tools/list kubernetes" has insp "$K" --transport http --method tools/list
EXPECT=slow check "inspector tools/list python" has insp "$Y" --transport http --method tools/list
EXPECT='"result":5' check "inspector tools/call python add" has insp "$Y" --transport http --method tools/call --tool-name add --tool-args-json '{"a":2,"b":3}'
for m in "" --legacy; do
  EXPECT=get-sum check "py_client $m list-tools everything" has "$PY" "$PY_CLIENT" --url "$E" $m list-tools
  EXPECT=pods_list check "py_client $m list-tools kubernetes" has "$PY" "$PY_CLIENT" --url "$K" $m list-tools
  EXPECT='"result": 5' check "py_client $m call python add" has "$PY" "$PY_CLIENT" --url "$Y" $m call add '{"a":2,"b":3}'
  EXPECT='sum of 2 and 3 is 5' check "py_client $m call everything get-sum" has "$PY" "$PY_CLIENT" --url "$E" $m call get-sum '{"a":2,"b":3}'
done
echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
