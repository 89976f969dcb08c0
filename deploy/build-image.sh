#!/usr/bin/env bash
# Builds the sinew container image with podman and checks that it serves:
# a throwaway Postgres on loopback, the image run against it, /healthz and
# one tool call, whose spans reach an OTLP receiver on loopback and whose
# count the metrics port serves.
#
#   deploy/build-image.sh [SPEC]     (default: specs/examples/shop.json)
#
# Needs podman and runc (Debian: apt-get install podman runc) and
# PostgreSQL's initdb/pg_ctl. Base images cannot be pulled here, so the image
# is FROM scratch with a root filesystem staged from the host's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
spec=${1:-specs/examples/shop.json}
image=${SINEW_IMAGE:-localhost/sinew:dev}
stage=target/image/rootfs
podman_flags=(--runtime runc)
# Explicit limits: podman's defaults exceed what these sandboxes allow
# (nofile at most the shell's hard limit; nproc 4096 is plenty).
nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ] && nofile=65536
nproc=4096
run_flags=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc" --network host)

cargo build --release -p sinew-host
bin=target/release/sinew

rm -rf "$stage" && mkdir -p "$stage"/{usr/local/bin,app,etc,tmp,opt/sinew/cache}
chmod 1777 "$stage/tmp"
cp "$bin" "$stage/usr/local/bin/sinew"
# The shared libraries the binary links (glibc, libgcc), at their paths.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$stage$(dirname "$lib")"
  cp -L "$lib" "$stage$lib"
done
cp "$spec" "$stage/app/spec.json"
echo 'nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin' > "$stage/etc/passwd"
echo 'nonroot:x:65532:' > "$stage/etc/group"
# The component compiled ahead of time: no compilation at cold start.
"$bin" component --precompile "$stage/opt/sinew/cache"
chmod -R a+rX "$stage"

podman "${podman_flags[@]}" build -f deploy/Containerfile -t "$image" "$stage"
echo "image: $image ($(podman image inspect "$image" --format '{{.Size}}') bytes)"

# A throwaway Postgres on a free loopback port.
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || pgbin=$(dirname "$(command -v initdb)")
work=$(mktemp -d /tmp/sinew-image-test.XXXXXX)
chmod 755 "$work"
as_pg=()
if [ "$(id -u)" = 0 ]; then chown postgres "$work"; as_pg=(runuser -u postgres --); fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
app_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
metrics_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"${as_pg[@]}" "$pgbin/initdb" -D "$work/data" -U sinew --auth=trust --no-sync >/dev/null
"${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -l "$work/log" -w \
  -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$work" start >/dev/null
name=sinew-image-test-$$
# An OTLP receiver on loopback: records each export's path and size.
otlp_log=$work/otlp.log
python3 - "$otlp_log" > "$work/otlp.port" <<'PY' &
import http.server, sys
log = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        with open(log, 'a') as f:
            f.write(f"{self.path} {self.headers.get('content-type')} {len(body)}\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_port, flush=True)
s.serve_forever()
PY
otlp_pid=$!
for _ in $(seq 1 50); do [ -s "$work/otlp.port" ] && break; sleep 0.1; done
otlp_port=$(cat "$work/otlp.port")
cleanup() {
  kill "$otlp_pid" 2>/dev/null || true
  podman "${podman_flags[@]}" rm -f "$name" >/dev/null 2>&1 || true
  "${as_pg[@]}" "$pgbin/pg_ctl" -D "$work/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

secret=image-test-secret
podman "${podman_flags[@]}" run -d --name "$name" "${run_flags[@]}" \
  -e PORT="$app_port" -e SINEW_LISTEN=127.0.0.1 \
  -e DATABASE_URL="postgres://sinew@127.0.0.1:$port/postgres" \
  -e SINEW_JWT_SECRET="$secret" \
  -e OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp_port" -e OTEL_BSP_SCHEDULE_DELAY=200 \
  -e SINEW_METRICS_LISTEN="127.0.0.1:$metrics_port" "$image" >/dev/null
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$app_port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$app_port/healthz"; echo
curl -fsS "http://127.0.0.1:$app_port/readyz"; echo
token=$(SINEW_JWT_SECRET=$secret "$bin" token --sub sam --roles staff)
answer=$(curl -sS -w ' %{http_code}' -X POST "http://127.0.0.1:$app_port/tools/list_products" \
  -H "authorization: Bearer $token" -H 'content-type: application/json' -d '{}')
echo "list_products: $answer"
case "$answer" in *' 200') ;; *) echo "the tool call failed"; podman logs "$name"; exit 1 ;; esac
# The request's spans reach the OTLP receiver; the metrics are served.
for _ in $(seq 1 50); do grep -q '^/v1/traces application/x-protobuf' "$otlp_log" 2>/dev/null && break; sleep 0.2; done
grep '^/v1/traces application/x-protobuf' "$otlp_log" | head -1 || { echo "no trace export reached the receiver"; podman logs "$name"; exit 1; }
curl -fsS "http://127.0.0.1:$metrics_port/metrics" | grep 'sinew_requests_total{.*tool="list_products"' \
  || { echo "no request metrics"; exit 1; }
echo "container log:"; podman logs "$name" | head -5
echo "ok: $image serves"
