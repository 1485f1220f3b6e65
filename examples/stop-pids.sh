#!/usr/bin/env bash
# Stops what an example's up.sh started: the PIDs it wrote to DIR/.run/pids,
# nothing else. SIGTERM first (each process gets 2 s to drain: an agent ends
# its servers, a gateway its requests), then SIGKILL for any still there.
# Usage: stop-pids.sh DIR (the example's directory).
set -euo pipefail
pids="${1:?usage: stop-pids.sh DIR}/.run/pids"
[[ -s "$pids" ]] || { echo "nothing to stop ($pids is empty)"; exit 0; }
while read -r pid; do
  kill "$pid" 2>/dev/null || true
done < "$pids"
sleep 2
while read -r pid; do
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
done < "$pids"
rm -f "$pids"
echo "stopped"
