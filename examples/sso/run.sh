#!/usr/bin/env bash
# The SSO example end to end on one machine: a central OpenID provider, a
# second one as cluster B's Dex (token exchange), two MCP servers that check
# the tokens they get, and the gateway. The providers are the test peers
# (npm oidc-provider on Node 22), installed by tests/peers/install.sh.
# Then, in another shell: flotilla auth login --endpoint http://127.0.0.1:8080/mcp
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd ../.. && pwd)"
eval "$(bash "$ROOT/tests/peers/install.sh")"
mkdir -p .secrets && chmod 700 .secrets
[[ -s .secrets/sealing-key ]] || head -c 32 /dev/urandom | base64 > .secrets/sealing-key
echo -n example-only-gateway-secret > .secrets/oidc-client-secret
trap 'kill 0' EXIT
"$NODE22" "$OIDC_PROVIDER_JS" --mode central --port 5556 \
  --client "flotilla:example-only-gateway-secret:http://127.0.0.1/oauth/callback" &
"$NODE22" "$OIDC_PROVIDER_JS" --mode cluster --port 5557 --central-issuer http://127.0.0.1:5556 \
  --client "flotilla-gateway:example-only-cluster-b-secret" --audience cluster-b &
sleep 2
"$PY" "$PY_SERVER" --port 8101 --require-bearer http://127.0.0.1:5556 --audience cluster-a &
"$PY" "$PY_SERVER" --port 8102 --require-bearer http://127.0.0.1:5557 --audience cluster-b &
cargo run --release --manifest-path "$ROOT/Cargo.toml" -- serve --config flotilla.yaml
