#!/usr/bin/env bash
# The whole test suite on a fresh machine (README command 2): installs the
# pinned third-party peers (npm, PyPI) and runs every cargo test.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tests/peers/install.sh >/dev/null
# A CI checkout is built once: incremental caches would only cost disk.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
cargo test "$@"
