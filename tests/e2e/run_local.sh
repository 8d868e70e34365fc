#!/usr/bin/env bash
# Runs matrix_client_check.py and sliding_sync_check.py against a throwaway
# Synapse on loopback, behind an nginx TLS proxy with a CA and certificate made
# here, then removes it all.
#
#   tests/e2e/run_local.sh            the check must pass (exit 0), and then
#                                     against a deliberately mis-routed vhost
#                                     it must fail on M_UNRECOGNIZED
#   KEEP=1 tests/e2e/run_local.sh     keep the temporary directory
#
# Needs: the repo's .venv with matrix-synapse and matrix-nio (PYTHON=... to use
# another interpreter), openssl and nginx (apt-get install nginx-light openssl).
# Everything listens on 127.0.0.1 only and stops when the script ends.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-180}"

for tool in openssl nginx; do
  command -v "$tool" >/dev/null || { echo "run_local: $tool is missing (apt-get install nginx-light openssl)" >&2; exit 2; }
done
"$PYTHON" -c 'import nio, synapse' || { echo "run_local: $PYTHON lacks matrix-nio or matrix-synapse" >&2; exit 2; }

work="$(mktemp -d /tmp/matrix-e2e.XXXXXX)"
chmod 755 "$work"  # nginx workers must traverse it
synapse_pid=""
nginx_pid=""

cleanup() {
  local rc=$?
  local pid
  for pid in $nginx_pid $synapse_pid; do
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "${KEEP:-}" ]]; then
    echo "run_local: kept $work"
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
synapse_port="$(free_port)"
tls_port="$(free_port)"
broken_port="$(free_port)"
server_name="localtest"
tls_name="matrix.localtest"

echo "==> Synapse config in $work (server_name $server_name, 127.0.0.1:$synapse_port)"
(cd "$work" && "$PYTHON" -m synapse.app.homeserver --server-name "$server_name" \
  --config-path "$work/homeserver.yaml" --generate-config --report-stats=no >/dev/null)
"$PYTHON" - "$work/homeserver.yaml" "$synapse_port" <<'EOF'
import sys
import yaml

path, port = sys.argv[1], int(sys.argv[2])
with open(path) as fh:
    cfg = yaml.safe_load(fh)
cfg["listeners"] = [{
    "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
    "x_forwarded": True, "resources": [{"names": ["client"], "compress": False}],
}]
cfg["trusted_key_servers"] = []          # no outbound key fetching
cfg["enable_registration"] = True
cfg["enable_registration_without_verification"] = True
# The check logs in twice per run; reruns from one address would otherwise hit
# Synapse's per-address login limit (which the check reports as a failure).
cfg["rc_login"] = {"address": {"per_second": 1, "burst_count": 20},
                   "account": {"per_second": 1, "burst_count": 20}}
with open(path, "w") as fh:
    yaml.safe_dump(cfg, fh)
EOF

echo "==> CA and server certificate for $tls_name"
mkdir -p "$work/tls"
(
  cd "$work/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 \
    -subj "/CN=matrix e2e test CA" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
    -subj "/CN=$tls_name" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$tls_name" > ext.cnf
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
    -out server.crt -days 2 -extfile ext.cnf 2>/dev/null
)

echo "==> nginx: https://$tls_name:$tls_port and a mis-routed vhost on :$broken_port (127.0.0.1)"
mkdir -p "$work/nginx"
user_line=""
[[ "$(id -u)" == 0 ]] && user_line="user root;"
cat > "$work/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 256; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  client_max_body_size 50M;
  ssl_certificate $work/tls/server.crt;
  ssl_certificate_key $work/tls/server.key;
  # A request whose Host/SNI is not $tls_name lands here: 421.
  server { listen 127.0.0.1:$tls_port ssl default_server; server_name _; return 421; }
  server {
    listen 127.0.0.1:$tls_port ssl;
    server_name $tls_name;
    location ~ ^(/_matrix|/_synapse/client) {
      proxy_pass http://127.0.0.1:$synapse_port;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header Host \$host;
      proxy_http_version 1.1;
      proxy_read_timeout 120s;
    }
  }
  server {
    # Deliberately wrong routes: Synapse answers them with M_UNRECOGNIZED.
    listen 127.0.0.1:$broken_port ssl;
    server_name $tls_name;
    location /_matrix/client/v3/user_directory/ {
      proxy_pass http://127.0.0.1:$synapse_port/_matrix/client/v3/no_such_directory/;
    }
    location /_matrix/client/v1/media/thumbnail/ {
      proxy_pass http://127.0.0.1:$synapse_port/_matrix/client/v1/media/no_such_thumbnail/;
    }
    location /_matrix {
      proxy_pass http://127.0.0.1:$synapse_port;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header Host \$host;
    }
  }
}
EOF
nginx -q -t -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf"

echo "==> starting Synapse"
(cd "$work" && exec "$PYTHON" -m synapse.app.homeserver --config-path "$work/homeserver.yaml" \
  >"$work/synapse.out" 2>&1) &
synapse_pid=$!
nginx -g 'daemon off;' -e "$work/nginx/error.log" -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_pid=$!

ready=""
for _ in $(seq 1 120); do
  if "$PYTHON" - "$synapse_port" <<'EOF' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/_matrix/client/versions", timeout=2).read()
EOF
  then ready=1; break; fi
  kill -0 "$synapse_pid" 2>/dev/null || break
  sleep 0.5
done
if [[ -z "$ready" ]]; then
  echo "run_local: Synapse did not come up; its output:" >&2
  tail -n 40 "$work/synapse.out" >&2 || true
  exit 1
fi

common=(--tls-server-name "$tls_name" --ca-cert "$work/tls/ca.crt"
        --server-name "$server_name" --timeout "$CHECK_TIMEOUT")
report_dir="${REPORT_DIR:-$work}"

echo "==> check against https://127.0.0.1:$tls_port (TLS name $tls_name): must pass"
set +e
"$PYTHON" "$here/matrix_client_check.py" --url "https://127.0.0.1:$tls_port" "${common[@]}" \
  --report "$report_dir/report.json"
good_rc=$?

echo "==> check against the mis-routed vhost https://127.0.0.1:$broken_port: must fail on M_UNRECOGNIZED"
"$PYTHON" "$here/matrix_client_check.py" --url "https://127.0.0.1:$broken_port" "${common[@]}" \
  --report "$report_dir/report-misrouted.json" > "$work/misrouted.out"
bad_rc=$?
set -e
grep -A3 '^M_UNRECOGNIZED' "$work/misrouted.out" || true
"$PYTHON" - "$report_dir/report-misrouted.json" "$bad_rc" <<'EOF'
import json, sys

report = json.load(open(sys.argv[1]))
got = sorted({(r["step"], r["method"]) for r in report["unrecognized"]})
want = [("media", "GET"), ("user_directory", "POST")]
if int(sys.argv[2]) != 1 or report["passed"] or got != want:
    sys.exit(f"mis-routed run: exit {sys.argv[2]}, M_UNRECOGNIZED seen in {got}, expected {want}")
print("mis-routed run failed as it should (exit 1, M_UNRECOGNIZED in media and user_directory)")
EOF

echo "==> sliding sync client against https://127.0.0.1:$tls_port: must pass"
set +e
"$PYTHON" "$here/sliding_sync_check.py" --url "https://127.0.0.1:$tls_port" \
  --tls-server-name "$tls_name" --ca-cert "$work/tls/ca.crt" --server-name "$server_name" \
  --record "$report_dir/sliding-sync.json"
sliding_rc=$?
set -e

if [[ "$good_rc" != 0 ]]; then
  echo "run_local: the check FAILED against the local Synapse (exit $good_rc)" >&2
  exit 1
fi
if [[ "$sliding_rc" != 0 ]]; then
  echo "run_local: the sliding sync client FAILED against the local Synapse (exit $sliding_rc)" >&2
  exit 1
fi
echo "run_local: OK"
