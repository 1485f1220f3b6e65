#!/usr/bin/env bash
# A gateway on http://127.0.0.1:8080/mcp and two agents ("north", "south")
# that dial out to it on loopback, each serving its simulated cluster over
# that one connection; the agents listen on no port. Stop them with down.sh,
# which stops exactly the processes this script started (PIDs in .run/pids).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd ../.. && pwd)"
[[ ! -s .run/pids ]] || { echo "already up (.run/pids exists); run down.sh first" >&2; exit 1; }
mkdir -p .run && chmod 700 .run
# FLOTILLA_BIN runs a binary already built instead.
BIN="${FLOTILLA_BIN:-$ROOT/target/release/flotilla}"
[[ -n "${FLOTILLA_BIN:-}" ]] || cargo build --release --manifest-path "$ROOT/Cargo.toml"
: > .run/pids
"$BIN" serve --manifests gateway --port 8080 > .run/gateway.log 2>&1 &
echo $! >> .run/pids
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:8080/readyz >/dev/null 2>&1 && break
  sleep 0.2
done
for cluster in north south; do
  # Each agent's credential, as its cluster would mount it from a Secret.
  credential="example-only-${cluster}-credential-change-me"
  printf '%s' "$credential" > ".run/$cluster.credential"
  "$BIN" agent --gateway http://127.0.0.1:8080/ --name "$cluster" \
    --token-file ".run/$cluster.credential" --manifests "$cluster" \
    > ".run/agent-$cluster.log" 2>&1 &
  echo $! >> .run/pids
done
echo "gateway: http://127.0.0.1:8080/mcp (status: http://127.0.0.1:8080/status); agents north and south dial out to it"
echo "logs in .run/; stop with ./down.sh"
