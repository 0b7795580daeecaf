#!/usr/bin/env bash
# Proxy benchmark (not a test, not in CI). One run on one machine, interleaved and repeated:
#   direct   client -> backend
#   isthmus  client -> Isthmus outbound -> mTLS HTTP/2 -> Isthmus inbound -> backend
#   haproxy  client -> HAProxy -> mTLS HTTP/2 -> HAProxy -> backend
#   nginx    client -> nginx -> mTLS HTTP/1.1 keep-alive -> nginx -> backend
#   isthmus-t1, isthmus-t100   the Isthmus chain with tracing at 1 % and at 100 %, exporting to a
#            local OTLP receiver (left out with NO_TRACING=1, or without the e2e venv's
#            opentelemetry-proto)
# The backend is nginx serving static 19 B / 1 KiB / 16 KiB files (HTTP/1.1 keep-alive to every
# proxy; h2c for direct HTTP/2 runs). Servers are pinned to CPU 0, the load tool to CPU 1.
# Access logs are off everywhere. Results: $OUT/results.jsonl and a Markdown summary on stdout.
#
#   e2e/bench/proxy.sh                # full run (~25 min)
#   REPS=1 LAT_REPS=1 SECS=2 e2e/bench/proxy.sh   # quick look
#   ISTHMUS_BIN=path/to/isthmus e2e/bench/proxy.sh  # a binary built elsewhere (deploy/build-pgo)
#   TRAIN_ONLY=1 ISTHMUS_BIN=... e2e/bench/proxy.sh # load Isthmus alone, then stop it gracefully
#                                     # (the training run of deploy/build-pgo)
set -euo pipefail
cd "$(dirname "$0")/../.."
REPS=${REPS:-3}
LAT_REPS=${LAT_REPS:-5}
SECS=${SECS:-4}
LAT_SECS=${LAT_SECS:-10}
RATE=${RATE:-2000}
HS_REPS=${HS_REPS:-3}
HS_SECS=${HS_SECS:-5}
TARGETS="direct isthmus haproxy nginx"
if [ -n "${TRAIN_ONLY:-}" ]; then
  # deploy/build-pgo's training: every Isthmus case below once, briefly.
  TARGETS=isthmus REPS=1 SECS=2 LAT_REPS=1 LAT_SECS=3 HS_REPS=1 HS_SECS=2
fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
for tool in haproxy nginx openssl taskset python3 protoc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y haproxy nginx openssl util-linux protobuf-compiler" >&2; exit 1; }
done
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/isthmus-release}"
if [ -n "${ISTHMUS_BIN:-}" ]; then
  cargo build --release -j2 --bench proxy >&2
  BIN=$(realpath "$ISTHMUS_BIN")
else
  cargo build --release -j2 --bin isthmus --bench proxy >&2
  BIN="$CARGO_TARGET_DIR/release/isthmus"
fi
LOAD=$(ls -t "$CARGO_TARGET_DIR"/release/deps/proxy-* | grep -v '\.d$' | head -1)
# HAProxy binds with SO_REUSEPORT: a chain left running by an earlier run would silently share
# these ports (and answer with its own, different certificates).
for port in 18080 18081 19080 19081 19443 20080 20081 20443; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "port $port is already in use: stop the earlier bench's servers first (pgrep -af 'haproxy|nginx')" >&2
    exit 1
  fi
done
OUT=${OUT:-$(mktemp -d /tmp/isthmus-proxy-bench.XXXX)}
mkdir -p "$OUT"
# nginx workers run as an unprivileged user: they must be able to read the bodies.
chmod 755 "$OUT"
ulimit -n 65536 2>/dev/null || true
echo "working in $OUT" >&2
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
# `exec` so that `$!` of `on_server ... &` is the server's own pid (for CPU and RSS readings).
on_server() { exec taskset -c "$SERVER_CPU" "$@"; }

# --- certificates for the reference chains (the same curve and key sizes Isthmus uses) -------
cd "$OUT"
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=bench-ca -days 2 -out ca.pem 2>/dev/null
for who in server client; do
  openssl ecparam -name prime256v1 -genkey -noout -out $who.key 2>/dev/null
  openssl req -new -key $who.key -subj /CN=hop2 -out $who.csr 2>/dev/null
  printf 'subjectAltName=DNS:hop2\n' > $who.ext
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext -out $who.pem 2>/dev/null
  cat $who.pem $who.key > $who.bundle.pem
done
for size in 19 1024 16384; do head -c $size /dev/zero | tr '\0' x > body-$size; done

# --- backend: nginx, HTTP/1.1 on 18080, h2c on 18081 -----------------------------------------
mkdir -p tmp
common_http="access_log off; client_body_temp_path $OUT/tmp; proxy_temp_path $OUT/tmp; fastcgi_temp_path $OUT/tmp; uwsgi_temp_path $OUT/tmp; scgi_temp_path $OUT/tmp; keepalive_requests 10000000; keepalive_timeout 300s;"
cat > backend.conf <<EOF
worker_processes 1; pid $OUT/backend.pid; error_log $OUT/backend.err;
events { worker_connections 4000; }
http { $common_http
  server { listen 127.0.0.1:18080; listen 127.0.0.1:18081 http2; root $OUT;
    location = /19 { try_files /body-19 =404; } location = /1k { try_files /body-1024 =404; }
    location = /16k { try_files /body-16384 =404; } }
}
EOF
on_server nginx -c "$OUT/backend.conf" -g 'daemon off;' & PIDS+=($!)

# --- HAProxy two-hop chain: 19080 (h1) / 19081 (h2c) -> mTLS h2 -> 19443 -> backend --------
haproxy_common="global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always"
cat > haproxy1.cfg <<EOF
$haproxy_common
frontend hop1
  bind 127.0.0.1:19080
  bind 127.0.0.1:19081 proto h2
  default_backend hop2
backend hop2
  server s1 127.0.0.1:19443 ssl crt $OUT/client.bundle.pem ca-file $OUT/ca.pem verify required alpn h2 sni str(hop2)
EOF
cat > haproxy2.cfg <<EOF
$haproxy_common
frontend hop2
  bind 127.0.0.1:19443 ssl crt $OUT/server.bundle.pem ca-file $OUT/ca.pem verify required alpn h2
  default_backend be
backend be
  server b 127.0.0.1:18080
EOF
on_server haproxy -db -f haproxy2.cfg & PIDS+=($!); HA2=$!
on_server haproxy -db -f haproxy1.cfg & PIDS+=($!); HA1=$!

# --- nginx two-hop chain: 20080 (h1) / 20081 (h2c) -> mTLS HTTP/1.1 keep-alive -> 20443 ------
cat > nginx1.conf <<EOF
worker_processes 1; pid $OUT/nginx1.pid; error_log $OUT/nginx1.err;
events { worker_connections 4000; }
http { $common_http
  upstream hop2 { server 127.0.0.1:20443; keepalive 256; }
  server { listen 127.0.0.1:20080; listen 127.0.0.1:20081 http2;
    location / { proxy_pass https://hop2; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_ssl_certificate $OUT/client.pem; proxy_ssl_certificate_key $OUT/client.key;
      proxy_ssl_trusted_certificate $OUT/ca.pem; proxy_ssl_verify on; proxy_ssl_name hop2;
      proxy_ssl_session_reuse on; } }
}
EOF
cat > nginx2.conf <<EOF
worker_processes 1; pid $OUT/nginx2.pid; error_log $OUT/nginx2.err;
events { worker_connections 4000; }
http { $common_http
  upstream be { server 127.0.0.1:18080; keepalive 256; }
  server { listen 127.0.0.1:20443 ssl; ssl_certificate $OUT/server.pem; ssl_certificate_key $OUT/server.key;
    ssl_client_certificate $OUT/ca.pem; ssl_verify_client on;
    location / { proxy_pass http://be; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
EOF
on_server nginx -c "$OUT/nginx2.conf" -g 'daemon off;' & PIDS+=($!); NG2=$!
on_server nginx -c "$OUT/nginx1.conf" -g 'daemon off;' & PIDS+=($!); NG1=$!

# --- Isthmus: east (client side) and west (exports the backend) ------------------------------
# One chain per tracing setting: off (`isthmus`), 1 % (`isthmus-t1`) and 100 % (`isthmus-t100`),
# the traced ones exporting to a local OTLP receiver (the e2e tests' receiver, counting only).
# start_chain TAG EAST_INDEX TRACING_YAML: federations and gateways on 127.0.<i>.1 (west: i+1).
start_chain() {
  local tag=$1 ei=$2 tracing=$3 dir
  for c in east:$ei west:$((ei + 1)); do
    local name=${c%%:*} i=${c##*:}
    dir="$OUT/$tag/$name"
    mkdir -p "$dir"
    "$BIN" ca kek > "$dir/kek"; chmod 600 "$dir/kek"
    if [ "$name" = west ]; then
      printf 'exports:\n  - namespace: bench\n    name: web\n    ports: [{port: 8080, protocol: http}]\n    endpoints: [{address: "127.0.0.1:18080"}]\nimports: []\n' > "$dir/catalog.yaml"
    else
      printf 'exports: []\nimports:\n  - peer: "*"\n    namespaces: [bench]\n' > "$dir/catalog.yaml"
    fi
    cat > "$dir/federation.yaml" <<EOF
cluster: $name
region: r-$name
data_dir: $dir/data
listen:
  peering: { bind: "127.0.$i.1:0" }
  api: { bind: "127.0.$i.1:0" }
  admin: "127.0.$i.1:0"
vips: { ipv4: "127.$((200 + i)).0.0/24" }
catalog: { file: $dir/catalog.yaml }
ca: { kek_file: $dir/kek }
EOF
    on_server "$BIN" federation --config "$dir/federation.yaml" > "$dir/ready" 2> "$dir/federation.log" & PIDS+=($!)
    eval "FED_${tag//-/_}_${name}=$!"
  done
  for name in east west; do
    for _ in $(seq 100); do [ -s "$OUT/$tag/$name/ready" ] && break; sleep 0.1; done
  done
  local token
  token=$("$BIN" peering token --peer west --admin-socket "$(sock "$tag" east)")
  "$BIN" peering establish "$token" --admin-socket "$(sock "$tag" west)" >/dev/null
  for name in east west; do
    dir="$OUT/$tag/$name"
    "$BIN" gateway bootstrap --name gw-1 --out "$dir/gw.json" --admin-socket "$(sock "$tag" $name)" 2>/dev/null
    local i=$ei; [ $name = west ] && i=$((ei + 1))
    cat > "$dir/gateway.yaml" <<EOF
bootstrap_file: $dir/gw.json
access_log: false
listen:
  inbound: { bind: "127.0.$i.1:0" }
  proxy: "127.0.$i.1:0"
  admin: "127.0.$i.1:0"
$tracing
EOF
    on_server "$BIN" gateway run --config "$dir/gateway.yaml" > "$dir/gw.ready" 2> "$dir/gateway.log" & PIDS+=($!)
    eval "GW_${tag//-/_}_${name}=$!"
  done
  for name in east west; do
    for _ in $(seq 200); do [ -s "$OUT/$tag/$name/gw.ready" ] && break; sleep 0.1; done
  done
  local vip=""
  for _ in $(seq 100); do
    vip=$("$BIN" catalog --json --admin-socket "$(sock "$tag" east)" | python3 -c 'import json,sys; r=json.load(sys.stdin)["routes"].get("bench/web"); print(r["vips"]["v4"] if r and r["clusters"] and r["clusters"][0]["gateways"] else "")')
    [ -n "$vip" ] && break; sleep 0.2
  done
  [ -n "$vip" ] || { echo "Isthmus ($tag) did not converge; see $OUT/$tag/*/federation.log" >&2; exit 1; }
  eval "VIP_${tag//-/_}=$vip"
}
sock() { echo "$OUT/$1/$2/data/admin.sock"; }
TRACED=""
if [[ " $TARGETS " == *" isthmus "* ]] && [ -z "${NO_TRACING:-}${TRAIN_ONLY:-}" ]; then
  VENV_PY="$HOME/.cache/isthmus-venv/bin/python"
  if "$VENV_PY" -c 'import grpc, opentelemetry.proto' 2>/dev/null; then
    # The receiver shares the load tool's CPU: the gateways' CPU per request is read from
    # their own counters, whatever the receiver costs.
    taskset -c "$CLIENT_CPU" "$VENV_PY" "$OLDPWD/e2e/otel_traces/otlp_receiver.py" - > receiver.port & PIDS+=($!)
    for _ in $(seq 100); do [ -s receiver.port ] && break; sleep 0.1; done
    OTLP="http://127.0.0.1:$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' receiver.port)"
    TRACED="isthmus-t1 isthmus-t100"
  else
    echo "no opentelemetry-proto in $VENV_PY (deploy/test-deps installs it): tracing cases left out" >&2
  fi
fi
start_chain isthmus 1 ""
GW_east=$GW_isthmus_east; GW_west=$GW_isthmus_west; FED_east=$FED_isthmus_east; FED_west=$FED_isthmus_west
VIP=$VIP_isthmus
if [ -n "$TRACED" ]; then
  start_chain isthmus-t1 3 "tracing: { endpoint: \"$OTLP\", sampler: ratio, ratio: 0.01 }"
  start_chain isthmus-t100 5 "tracing: { endpoint: \"$OTLP\", sampler: always_on }"
  TARGETS="$TARGETS $TRACED"
fi
"$BIN" gateway bootstrap --name gw-bench --out "$OUT/bench-gw.json" --admin-socket "$(sock isthmus east)" 2>/dev/null
taskset -c "$CLIENT_CPU" "$LOAD" gateway-cert --bootstrap "$OUT/bench-gw.json" --out-dir "$OUT" >/dev/null
WEST_INBOUND=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ready"]["inbound"])' "$OUT/isthmus/west/gw.ready")
sleep 1
# Warm every path once (and fail early if one is broken).
for url in http://127.0.0.1:18080/19 http://127.0.0.1:19080/19 http://127.0.0.1:20080/19 "http://$VIP:8080/19" \
  ${TRACED:+"http://$VIP_isthmus_t1:8080/19" "http://$VIP_isthmus_t100:8080/19"}; do
  curl -sf -o /dev/null "$url" || { echo "warm-up failed for $url" >&2; exit 1; }
done

if [ -n "${SETUP_ONLY:-}" ]; then
  # For profiling by hand: everything stays up until Ctrl-C.
  echo "isthmus: http://$VIP:8080 (gateways $GW_east $GW_west)  haproxy: :19080/:19081 ($HA1 $HA2)  nginx: :20080/:20081 ($NG1 $NG2)  direct: :18080/:18081" >&2
  sleep infinity
fi
children() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
pids_of() {
  case $1 in
    direct) echo "" ;;
    isthmus) echo "$GW_east $GW_west" ;;
    isthmus-t1) echo "$GW_isthmus_t1_east $GW_isthmus_t1_west" ;;
    isthmus-t100) echo "$GW_isthmus_t100_east $GW_isthmus_t100_west" ;;
    haproxy) echo "$HA1 $HA2" ;;
    nginx) echo "$(children "$NG1") $(children "$NG2")" ;;
  esac
}
# CPU ticks of the processes in $1: utime + stime, or with `sys` stime alone (kernel mode: what
# the loopback TCP path itself costs, whoever proxies).
ticks() {
  local t=0 f='$14 + $15'
  [ "${2:-}" = sys ] && f='$15'
  for p in $1; do t=$((t + $(awk "{print $f}" "/proc/$p/stat"))); done
  echo $t
}
url_of() { # target proto path
  case $1:$2 in
    direct:h1) echo "http://127.0.0.1:18080$3" ;; direct:h2) echo "http://127.0.0.1:18081$3" ;;
    haproxy:h1) echo "http://127.0.0.1:19080$3" ;; haproxy:h2) echo "http://127.0.0.1:19081$3" ;;
    nginx:h1) echo "http://127.0.0.1:20080$3" ;; nginx:h2) echo "http://127.0.0.1:20081$3" ;;
    isthmus:*) echo "http://$VIP:8080$3" ;;
    isthmus-t1:*) echo "http://$VIP_isthmus_t1:8080$3" ;;
    isthmus-t100:*) echo "http://$VIP_isthmus_t100:8080$3" ;;
  esac
}
HZ=$(getconf CLK_TCK)
run() { # kind rep target proto path conns extra-args...
  local kind=$1 rep=$2 target=$3 proto=$4 path=$5 conns=$6; shift 6
  local pids; pids=$(pids_of "$target")
  local before; before=$(ticks "$pids")
  local sys_before; sys_before=$(ticks "$pids" sys)
  local out; out=$(taskset -c "$CLIENT_CPU" "$LOAD" load --url "$(url_of "$target" "$proto" "$path")" --proto "$proto" --conns "$conns" "$@")
  local after; after=$(ticks "$pids")
  local sys_after; sys_after=$(ticks "$pids" sys)
  echo "{\"kind\":\"$kind\",\"rep\":$rep,\"target\":\"$target\",\"proto\":\"$proto\",\"body\":\"$path\",\"conns\":$conns,\"cpu_ms\":$(( (after - before) * 1000 / HZ )),\"sys_ms\":$(( (sys_after - sys_before) * 1000 / HZ )),\"result\":$out}" | tee -a results.jsonl >&2
}

: > results.jsonl
for rep in $(seq "$REPS"); do
  for proto in h1 h2; do for path in /19 /1k /16k; do for conns in 16 64; do
    for target in $TARGETS; do
      run saturated "$rep" $target $proto $path $conns --seconds "$SECS"
    done
  done; done; done
done
for rep in $(seq "$LAT_REPS"); do
  for proto in h1 h2; do for target in $TARGETS; do
    run latency "$rep" $target $proto /1k 16 --seconds "$LAT_SECS" --rate "$RATE"
  done; done
done
for rep in $(seq "$HS_REPS"); do
  for t in "isthmus $WEST_INBOUND $OUT/cert.pem $OUT/key.pem" "haproxy 127.0.0.1:19443 $OUT/client.pem $OUT/client.key" "nginx 127.0.0.1:20443 $OUT/client.pem $OUT/client.key"; do
    set -- $t
    [[ " $TARGETS " == *" $1 "* ]] || continue
    pid=$GW_west; [ "$1" = haproxy ] && pid=$HA2; [ "$1" = nginx ] && pid="$(children "$NG2")"
    before=$(ticks "$pid")
    out=$(taskset -c "$CLIENT_CPU" "$LOAD" handshakes --addr "$2" --cert "$3" --key "$4" --seconds "$HS_SECS" --parallel 16)
    after=$(ticks "$pid")
    echo "{\"kind\":\"handshakes\",\"rep\":$rep,\"target\":\"$1\",\"cpu_ms\":$(( (after - before) * 1000 / HZ )),\"result\":$out}" | tee -a results.jsonl >&2
  done
done
if [ -n "${TRAIN_ONLY:-}" ]; then
  # A process writes its profile when it exits normally: SIGTERM, then wait for the drain.
  ISTHMUS_PIDS="$GW_east $GW_west $FED_east $FED_west"
  kill -TERM $ISTHMUS_PIDS
  for _ in $(seq 300); do
    alive=0
    for p in $ISTHMUS_PIDS; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && exit 0
    sleep 0.1
  done
  echo "Isthmus did not stop within 30 s of SIGTERM" >&2
  exit 1
fi
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
base=$(rss "$GW_west")
taskset -c "$CLIENT_CPU" "$LOAD" idle --addr "$WEST_INBOUND" --cert "$OUT/cert.pem" --key "$OUT/key.pem" --count 1000 --hold 8 > idle.out &
IDLE=$!
sleep 6
held=$(rss "$GW_west")
wait $IDLE
echo "{\"kind\":\"idle\",\"target\":\"isthmus\",\"rss_kib_before\":$base,\"rss_kib_with_1000\":$held,\"result\":$(head -1 idle.out)}" | tee -a results.jsonl >&2

python3 "$OLDPWD/e2e/bench/proxy_report.py" results.jsonl
