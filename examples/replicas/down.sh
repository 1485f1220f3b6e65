#!/usr/bin/env bash
# Stops what up.sh started (the PIDs it wrote to .run/pids), nothing else.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "$here/../stop-pids.sh" "$here"
