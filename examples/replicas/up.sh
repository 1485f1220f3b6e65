#!/usr/bin/env bash
# Three gateway replicas on the quickstart fleet behind nginx in round-robin
# (no affinity) on http://127.0.0.1:8080/mcp. Stop them with down.sh, which
# stops exactly the processes this script started (their PIDs are in .run/).
# Needs nginx (Debian: apt-get install nginx-light).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT="$(cd ../.. && pwd)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
[[ -x "$NGINX" ]] || { echo "nginx is not installed (Debian: apt-get install nginx-light)" >&2; exit 1; }
[[ ! -s .run/pids ]] || { echo "already up (.run/pids exists); run down.sh first" >&2; exit 1; }
mkdir -p .secrets .run/nginx/tmp && chmod 700 .secrets
# One key for every replica: `openssl rand -base64 32` does the same.
[[ -s .secrets/sealing-key ]] || head -c 32 /dev/urandom | base64 > .secrets/sealing-key
cargo build --release --manifest-path "$ROOT/Cargo.toml"
BIN="$ROOT/target/release/flotilla"
: > .run/pids
for port in 8181 8182 8183; do
  "$BIN" serve --config flotilla.yaml --port "$port" > ".run/replica-$port.log" 2>&1 &
  echo $! >> .run/pids
done
RUN="$(pwd)/.run"
USER_LINE=""; [[ "$(id -u)" -eq 0 ]] && USER_LINE="user root;"
cat > .run/nginx/nginx.conf <<CONF
daemon off;
$USER_LINE
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/error.log notice;
events { worker_connections 1024; }
http {
    access_log $RUN/nginx/access.log;
    client_body_temp_path $RUN/nginx/tmp/body;
    proxy_temp_path $RUN/nginx/tmp/proxy;
    fastcgi_temp_path $RUN/nginx/tmp/fastcgi;
    uwsgi_temp_path $RUN/nginx/tmp/uwsgi;
    scgi_temp_path $RUN/nginx/tmp/scgi;
    upstream flotilla {
        server 127.0.0.1:8181;
        server 127.0.0.1:8182;
        server 127.0.0.1:8183;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:8080;
        location / {
            proxy_pass http://flotilla;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            # MCP answers are SSE streams that stay open.
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            # A replica that is down is skipped (a request it never got is retried).
            proxy_next_upstream error timeout;
        }
    }
}
CONF
"$NGINX" -c "$RUN/nginx/nginx.conf" -e "$RUN/nginx/error.log" > "$RUN/nginx/stdout.log" 2>&1 &
echo $! >> .run/pids
for port in 8181 8182 8183; do
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.2
  done
done
echo "three replicas (8181-8183) behind nginx: http://127.0.0.1:8080/mcp; logs in .run/; stop with ./down.sh"
