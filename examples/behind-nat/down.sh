#!/usr/bin/env bash
# Stops what up.sh started (the PIDs it wrote to .run/pids), nothing else.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ -s .run/pids ]] || { echo "nothing to stop (.run/pids is empty)"; exit 0; }
while read -r pid; do
  kill "$pid" 2>/dev/null || true
done < .run/pids
# Give them their drain (the agents end their servers first), then make sure.
sleep 2
while read -r pid; do
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
done < .run/pids
rm -f .run/pids
echo "stopped"
