#!/usr/bin/env bash
# Proxy benchmark (not a test, not in CI). One run on one machine, interleaved and repeated:
#   direct   client -> backend
#   isthmus  client -> Isthmus outbound -> mTLS HTTP/2 -> Isthmus inbound -> backend
#   isthmus-tcp  the same Isthmus chain, to a second export of the backend whose port is `tcp`:
#            bytes carried in an HTTP/2 CONNECT stream, no HTTP parsed (what ztunnel does)
#   haproxy  client -> HAProxy -> mTLS HTTP/2 -> HAProxy -> backend
#   nginx    client -> nginx -> mTLS HTTP/1.1 keep-alive -> nginx -> backend
#   isthmus-pgo, isthmus-pgo-tcp   with ISTHMUS_PGO_BIN=path/to/isthmus: a second Isthmus chain
#            running that binary (deploy/build-pgo's), beside the one running ISTHMUS_BIN
#   isthmus-t1, isthmus-t100   the Isthmus chain with tracing at 1 % and at 100 %, exporting to a
#            local OTLP receiver (left out with NO_TRACING=1, or without the e2e venv's
#            opentelemetry-proto)
#   ztunnel  client -> ztunnel -> HBONE (mTLS HTTP/2 CONNECT) -> ztunnel -> backend: Istio
#            ambient's data plane, in two network namespaces joined by a veth (its hops cross
#            the veth, the others' loopback). Needs root, ip and nft, and the binary at
#            $ZTUNNEL_BIN (default ~/.cache/bench-peers/ztunnel, built by
#            e2e/bench/ztunnel-build.sh); left out with a message otherwise, or with NO_ZTUNNEL=1.
#            Not in the handshake and idle-connection cases.
# The backend is nginx serving static 19 B / 1 KiB / 16 KiB files (HTTP/1.1 keep-alive to every
# proxy; h2c for direct HTTP/2 runs). Servers are pinned to CPU 0, the load tool to CPU 1.
# Access logs are off everywhere; HAProxy, nginx and ztunnel run one worker each. Results:
# $OUT/results.jsonl and a Markdown summary on stdout.
#
#   e2e/bench/proxy.sh                # full run (~25 min)
#   REPS=1 LAT_REPS=1 SECS=2 e2e/bench/proxy.sh   # quick look
#   ISTHMUS_BIN=path/to/isthmus e2e/bench/proxy.sh  # a binary built elsewhere (deploy/build-pgo)
#   ISTHMUS_PGO_BIN=$(deploy/build-pgo) e2e/bench/proxy.sh  # the plain and the PGO build side by side
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
TARGETS="direct isthmus isthmus-tcp haproxy nginx"
if [ -n "${TRAIN_ONLY:-}" ]; then
  # deploy/build-pgo's training: every Isthmus case below once, briefly.
  TARGETS="isthmus isthmus-tcp" REPS=1 SECS=2 LAT_REPS=1 LAT_SECS=3 HS_REPS=1 HS_SECS=2
fi
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
for tool in haproxy nginx openssl taskset python3 protoc; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y haproxy nginx openssl util-linux protobuf-compiler" >&2; exit 1; }
done
ZTUNNEL_BIN=${ZTUNNEL_BIN:-$HOME/.cache/bench-peers/ztunnel}
if [ -z "${TRAIN_ONLY:-}${NO_ZTUNNEL:-}" ]; then
  if [ ! -x "$ZTUNNEL_BIN" ]; then
    echo "ztunnel left out: no $ZTUNNEL_BIN (build it with e2e/bench/ztunnel-build.sh <istio/ztunnel git dir>)" >&2
  elif [ "$(id -u)" != 0 ]; then
    echo "ztunnel left out: its two nodes are network namespaces, which need root" >&2
  elif ! command -v ip >/dev/null || ! command -v nft >/dev/null; then
    echo "ztunnel left out: it needs ip and nft (apt-get install -y iproute2 nftables)" >&2
  else
    TARGETS="$TARGETS ztunnel"
  fi
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/isthmus-release}"
if [ -n "${ISTHMUS_BIN:-}" ]; then
  cargo build --release -j2 --bench proxy >&2
  BIN=$(realpath "$ISTHMUS_BIN")
else
  cargo build --release -j2 --bin isthmus --bench proxy >&2
  BIN="$CARGO_TARGET_DIR/release/isthmus"
fi
LOAD=$(find "$CARGO_TARGET_DIR/release/deps" -maxdepth 1 -name 'proxy-*' ! -name '*.d' -printf '%T@ %p\n' | sort -rn | head -1 | cut -d' ' -f2-)
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
ZT_A=isthmus-bench-zt-a ZT_B=isthmus-bench-zt-b
# Deleting a namespace also deletes its veth end and nftables table.
remove_zt_namespaces() {
  for ns in $ZT_A $ZT_B; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 1
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  if [[ " $TARGETS " == *" ztunnel "* ]]; then remove_zt_namespaces; fi
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
backend_conf() { # name address: the backend's config (ztunnel's chain has its own backend)
  cat <<EOF
worker_processes 1; pid $OUT/$1.pid; error_log $OUT/$1.err;
events { worker_connections 4000; }
http { $common_http
  server { listen $2:18080; listen $2:18081 http2; root $OUT;
    location = /19 { try_files /body-19 =404; } location = /1k { try_files /body-1024 =404; }
    location = /16k { try_files /body-16384 =404; } }
}
EOF
}
backend_conf backend 127.0.0.1 > backend.conf
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

# --- ztunnel two-hop chain: node a (client) -> HBONE on 15008 -> node b (server) -------------
# ztunnel binds fixed ports on the wildcard address and always dials <destination>:15008, so each
# instance is a "node" of its own: a network namespace, joined to the other by a veth carrying
# 127.70.0.0/16 (route_localnet, and no 127.0.0.0/8 local route, let 127.x leave the namespace).
# Node a (127.70.1.1) holds ztunnel a and the load tool, whose connections to the backend's
# ports are redirected (nftables) to ztunnel's outbound listener, 15001. Node b (127.70.2.1)
# holds ztunnel b and a backend of its own, with the same bodies and ports as the one above.
# Both ztunnels are `dedicated` (one workload each), read their workloads from a file and get
# certificates from the built-in fake CA: no istiod.
if [[ " $TARGETS " == *" ztunnel "* ]]; then
  remove_zt_namespaces
  ip netns add $ZT_A
  ip netns add $ZT_B
  ip link add isthmus-zt-va netns $ZT_A type veth peer name isthmus-zt-vb netns $ZT_B
  for node in "$ZT_A isthmus-zt-va 127.70.1.1 127.70.2.1" "$ZT_B isthmus-zt-vb 127.70.2.1 127.70.1.1"; do
    read -r ns veth addr peer <<< "$node"
    ip -n "$ns" link set lo up
    for dev in all default "$veth"; do
      ip netns exec "$ns" sysctl -qw "net.ipv4.conf.$dev.route_localnet=1" "net.ipv4.conf.$dev.rp_filter=0"
    done
    ip -n "$ns" addr add "$addr/32" dev "$veth"
    ip -n "$ns" link set "$veth" up
    ip -n "$ns" route del table local local 127.0.0.0/8 dev lo
    ip -n "$ns" route add "$peer/32" dev "$veth" src "$addr"
  done
  ip netns exec $ZT_A nft -f - <<EOF
table ip isthmus_bench {
  chain out {
    type nat hook output priority -100; policy accept;
    ip daddr 127.70.2.1 tcp dport { 18080, 18081 } redirect to :15001
  }
}
EOF
  backend_conf zt-backend 127.70.2.1 > zt-backend.conf
  ip netns exec $ZT_B taskset -c "$SERVER_CPU" nginx -c "$OUT/zt-backend.conf" -g 'daemon off;' & PIDS+=($!)
  cat > zt-workloads.yaml <<EOF
# Both workloads speak HBONE: a -> b is tunnelled in mTLS HTTP/2 CONNECT to b's 15008.
workloads:
- {uid: cluster1//v1/Pod/default/client, name: client, namespace: default, serviceAccount: client,
   workloadIps: ["127.70.1.1"], protocol: HBONE, node: node-a, network: "", services: {}}
- {uid: cluster1//v1/Pod/default/server, name: server, namespace: default, serviceAccount: server,
   workloadIps: ["127.70.2.1"], protocol: HBONE, node: node-b, network: "", services: {}}
policies: []
services: []
EOF
  zt_env=(FAKE_CA=true XDS_ADDRESS= CA_ADDRESS= LOCAL_XDS_PATH="$OUT/zt-workloads.yaml" PROXY_MODE=dedicated
    ENABLE_ORIG_SRC=false ZTUNNEL_WORKER_THREADS=1 RUST_LOG=warn)
  # `ip netns exec`, env and taskset each exec the next: `$!` is ztunnel's own pid.
  ip netns exec $ZT_B env "${zt_env[@]}" PROXY_WORKLOAD_INFO=default/server/server NODE_NAME=node-b \
    taskset -c "$SERVER_CPU" "$ZTUNNEL_BIN" proxy > zt-b.log 2>&1 & PIDS+=($!); ZT2=$!
  ip netns exec $ZT_A env "${zt_env[@]}" PROXY_WORKLOAD_INFO=default/client/client NODE_NAME=node-a \
    taskset -c "$SERVER_CPU" "$ZTUNNEL_BIN" proxy > zt-a.log 2>&1 & PIDS+=($!); ZT1=$!
fi

# --- Isthmus: east (client side) and west (exports the backend) ------------------------------
# One chain per tracing setting: off (`isthmus`), 1 % (`isthmus-t1`) and 100 % (`isthmus-t100`),
# the traced ones exporting to a local OTLP receiver (the e2e tests' receiver, counting only).
# start_chain TAG EAST_INDEX TRACING_YAML [BINARY]: federations and gateways on 127.0.<i>.1
# (west: i+1).
start_chain() {
  local tag=$1 ei=$2 tracing=$3 bin=${4:-$BIN} dir
  for c in east:$ei west:$((ei + 1)); do
    local name=${c%%:*} i=${c##*:}
    dir="$OUT/$tag/$name"
    mkdir -p "$dir"
    "$bin" ca kek > "$dir/kek"; chmod 600 "$dir/kek"
    if [ "$name" = west ]; then
      # web: HTTP requests; web-tcp and web-tcp-h2: the backend's HTTP/1.1 and h2c ports as
      # byte tunnels (isthmus-tcp).
      cat > "$dir/catalog.yaml" <<EOF
exports:
  - {namespace: bench, name: web, ports: [{port: 8080, protocol: http}], endpoints: [{address: "127.0.0.1:18080"}]}
  - {namespace: bench, name: web-tcp, ports: [{port: 8080, protocol: tcp}], endpoints: [{address: "127.0.0.1:18080"}]}
  - {namespace: bench, name: web-tcp-h2, ports: [{port: 8080, protocol: tcp}], endpoints: [{address: "127.0.0.1:18081"}]}
imports: []
EOF
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
    on_server "$bin" federation --config "$dir/federation.yaml" > "$dir/ready" 2> "$dir/federation.log" & PIDS+=($!)
    eval "FED_${tag//-/_}_${name}=$!"
  done
  for name in east west; do
    for _ in $(seq 100); do [ -s "$OUT/$tag/$name/ready" ] && break; sleep 0.1; done
  done
  local token
  token=$("$bin" peering token --peer west --admin-socket "$(sock "$tag" east)")
  "$bin" peering establish "$token" --admin-socket "$(sock "$tag" west)" >/dev/null
  for name in east west; do
    dir="$OUT/$tag/$name"
    "$bin" gateway bootstrap --name gw-1 --out "$dir/gw.json" --admin-socket "$(sock "$tag" $name)" 2>/dev/null
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
    on_server "$bin" gateway run --config "$dir/gateway.yaml" > "$dir/gw.ready" 2> "$dir/gateway.log" & PIDS+=($!)
    eval "GW_${tag//-/_}_${name}=$!"
  done
  for name in east west; do
    for _ in $(seq 200); do [ -s "$OUT/$tag/$name/gw.ready" ] && break; sleep 0.1; done
  done
  # VIP_<tag> for web, VIP_<tag>_tcp and VIP_<tag>_tcp_h2 for the byte tunnels.
  local svc vip var
  for svc in web web-tcp web-tcp-h2; do
    vip=""
    for _ in $(seq 100); do
      vip=$("$bin" catalog --json --admin-socket "$(sock "$tag" east)" | python3 -c 'import json,sys; r=json.load(sys.stdin)["routes"].get("bench/" + sys.argv[1]); print(r["vips"]["v4"] if r and r["clusters"] and r["clusters"][0]["gateways"] else "")' "$svc")
      [ -n "$vip" ] && break; sleep 0.2
    done
    [ -n "$vip" ] || { echo "Isthmus ($tag, bench/$svc) did not converge; see $OUT/$tag/*/federation.log" >&2; exit 1; }
    var="VIP_${tag}${svc#web}"
    eval "${var//-/_}=$vip"
  done
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
GW_east=${GW_isthmus_east:?} GW_west=${GW_isthmus_west:?} FED_east=${FED_isthmus_east:?} FED_west=${FED_isthmus_west:?}
VIP=${VIP_isthmus:?} VIP_TCP=${VIP_isthmus_tcp:?} VIP_TCP_H2=${VIP_isthmus_tcp_h2:?}
if [ -n "${ISTHMUS_PGO_BIN:-}" ] && [ -z "${TRAIN_ONLY:-}" ]; then
  start_chain isthmus-pgo 7 "" "$(realpath "$ISTHMUS_PGO_BIN")"
  TARGETS="$TARGETS isthmus-pgo isthmus-pgo-tcp"
fi
if [ -n "$TRACED" ]; then
  start_chain isthmus-t1 3 "tracing: { endpoint: \"$OTLP\", sampler: ratio, ratio: 0.01 }"
  start_chain isthmus-t100 5 "tracing: { endpoint: \"$OTLP\", sampler: always_on }"
  TARGETS="$TARGETS $TRACED"
fi
"$BIN" gateway bootstrap --name gw-bench --out "$OUT/bench-gw.json" --admin-socket "$(sock isthmus east)" 2>/dev/null
taskset -c "$CLIENT_CPU" "$LOAD" gateway-cert --bootstrap "$OUT/bench-gw.json" --out-dir "$OUT" >/dev/null
WEST_INBOUND=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ready"]["inbound"])' "$OUT/isthmus/west/gw.ready")
sleep 1
children() { echo "$1 $(pgrep -P "$1" | tr '\n' ' ')"; }
# shellcheck disable=SC2154 # GW_* are set by start_chain (eval)
pids_of() {
  case $1 in
    direct) echo "" ;;
    isthmus|isthmus-tcp) echo "$GW_east $GW_west" ;;
    isthmus-pgo|isthmus-pgo-tcp) echo "$GW_isthmus_pgo_east $GW_isthmus_pgo_west" ;;
    isthmus-t1) echo "$GW_isthmus_t1_east $GW_isthmus_t1_west" ;;
    isthmus-t100) echo "$GW_isthmus_t100_east $GW_isthmus_t100_west" ;;
    haproxy) echo "$HA1 $HA2" ;;
    nginx) echo "$(children "$NG1") $(children "$NG2")" ;;
    ztunnel) echo "$ZT1 $ZT2" ;;
  esac
}
# CPU ticks of the processes in $1: utime + stime, or with `sys` stime alone (kernel mode: what
# the TCP path itself costs, whoever proxies: loopback, and for ztunnel a veth).
ticks() {
  local t=0
  for p in $1; do t=$((t + $(awk -v only="${2:-}" '{print only == "sys" ? $15 : $14 + $15}' "/proc/$p/stat"))); done
  echo $t
}
# shellcheck disable=SC2154 # VIP_* are set by start_chain (eval)
url_of() { # target proto path
  case $1:$2 in
    direct:h1) echo "http://127.0.0.1:18080$3" ;; direct:h2) echo "http://127.0.0.1:18081$3" ;;
    haproxy:h1) echo "http://127.0.0.1:19080$3" ;; haproxy:h2) echo "http://127.0.0.1:19081$3" ;;
    nginx:h1) echo "http://127.0.0.1:20080$3" ;; nginx:h2) echo "http://127.0.0.1:20081$3" ;;
    isthmus:*) echo "http://$VIP:8080$3" ;;
    isthmus-tcp:h1) echo "http://$VIP_TCP:8080$3" ;; isthmus-tcp:h2) echo "http://$VIP_TCP_H2:8080$3" ;;
    ztunnel:h1) echo "http://127.70.2.1:18080$3" ;; ztunnel:h2) echo "http://127.70.2.1:18081$3" ;;
    isthmus-pgo:*) echo "http://$VIP_isthmus_pgo:8080$3" ;;
    isthmus-pgo-tcp:h1) echo "http://$VIP_isthmus_pgo_tcp:8080$3" ;;
    isthmus-pgo-tcp:h2) echo "http://$VIP_isthmus_pgo_tcp_h2:8080$3" ;;
    isthmus-t1:*) echo "http://$VIP_isthmus_t1:8080$3" ;;
    isthmus-t100:*) echo "http://$VIP_isthmus_t100:8080$3" ;;
  esac
}
# CLIENT_NS: what runs the load tool in the target's client namespace (ztunnel's client is on
# node a, the others on the host).
client_ns() { CLIENT_NS=(); if [ "$1" = ztunnel ]; then CLIENT_NS=(ip netns exec "$ZT_A"); fi; }
# Warm every path once (and fail early if one is broken). ztunnel a reaches b once both have
# their certificates from the fake CA: every path gets up to 10 s.
for target in $TARGETS; do
  client_ns "$target"
  for proto in h1 h2; do
    url=$(url_of "$target" "$proto" /19)
    opt=--http1.1; [ "$proto" = h2 ] && opt=--http2-prior-knowledge
    for _ in $(seq 100); do "${CLIENT_NS[@]}" curl -sf -o /dev/null "$opt" "$url" && break; sleep 0.1; done
    "${CLIENT_NS[@]}" curl -sf -o /dev/null "$opt" "$url" || { echo "warm-up failed for $target ($proto, $url)" >&2; exit 1; }
  done
done
if [[ " $TARGETS " == *" ztunnel "* ]]; then
  for p in $ZT1 $ZT2; do
    [ "$(cat "/proc/$p/comm")" = ztunnel ] || { echo "pid $p is not ztunnel: its CPU would be misread" >&2; exit 1; }
  done
fi

if [ -n "${SETUP_ONLY:-}" ]; then
  # For profiling by hand: everything stays up until Ctrl-C.
  echo "isthmus: http://$VIP:8080, tcp http://$VIP_TCP:8080, tcp h2c http://$VIP_TCP_H2:8080 (gateways $GW_east $GW_west)  haproxy: :19080/:19081 ($HA1 $HA2)  nginx: :20080/:20081 ($NG1 $NG2)  direct: :18080/:18081" >&2
  if [[ " $TARGETS " == *" ztunnel "* ]]; then
    echo "ztunnel: ip netns exec $ZT_A curl http://127.70.2.1:18080/19 (h2c: 18081) ($ZT1 $ZT2)" >&2
  fi
  sleep infinity
fi
HZ=$(getconf CLK_TCK)
run() { # kind rep target proto path conns extra-args...
  local kind=$1 rep=$2 target=$3 proto=$4 path=$5 conns=$6; shift 6
  local pids; pids=$(pids_of "$target")
  local before; before=$(ticks "$pids")
  local sys_before; sys_before=$(ticks "$pids" sys)
  client_ns "$target"
  local out; out=$("${CLIENT_NS[@]}" taskset -c "$CLIENT_CPU" "$LOAD" load --url "$(url_of "$target" "$proto" "$path")" --proto "$proto" --conns "$conns" "$@")
  local after; after=$(ticks "$pids")
  local sys_after; sys_after=$(ticks "$pids" sys)
  echo "{\"kind\":\"$kind\",\"rep\":$rep,\"target\":\"$target\",\"proto\":\"$proto\",\"body\":\"$path\",\"conns\":$conns,\"cpu_ms\":$(( (after - before) * 1000 / HZ )),\"sys_ms\":$(( (sys_after - sys_before) * 1000 / HZ )),\"result\":$out}" | tee -a results.jsonl >&2
}

: > results.jsonl
for rep in $(seq "$REPS"); do
  for proto in h1 h2; do for path in /19 /1k /16k; do for conns in 16 64; do
    for target in $TARGETS; do
      run saturated "$rep" "$target" "$proto" "$path" "$conns" --seconds "$SECS"
    done
  done; done; done
done
for rep in $(seq "$LAT_REPS"); do
  for proto in h1 h2; do for target in $TARGETS; do
    run latency "$rep" "$target" "$proto" /1k 16 --seconds "$LAT_SECS" --rate "$RATE"
  done; done
done
for rep in $(seq "$HS_REPS"); do
  for t in "isthmus $WEST_INBOUND $OUT/cert.pem $OUT/key.pem" "haproxy 127.0.0.1:19443 $OUT/client.pem $OUT/client.key" "nginx 127.0.0.1:20443 $OUT/client.pem $OUT/client.key"; do
    read -r server addr cert key <<< "$t"
    [[ " $TARGETS " == *" $server "* ]] || continue
    pid=$GW_west; [ "$server" = haproxy ] && pid=$HA2; [ "$server" = nginx ] && pid="$(children "$NG2")"
    before=$(ticks "$pid")
    out=$(taskset -c "$CLIENT_CPU" "$LOAD" handshakes --addr "$addr" --cert "$cert" --key "$key" --seconds "$HS_SECS" --parallel 16)
    after=$(ticks "$pid")
    echo "{\"kind\":\"handshakes\",\"rep\":$rep,\"target\":\"$server\",\"cpu_ms\":$(( (after - before) * 1000 / HZ )),\"result\":$out}" | tee -a results.jsonl >&2
  done
done
if [ -n "${TRAIN_ONLY:-}" ]; then
  # A process writes its profile when it exits normally: SIGTERM, then wait for the drain.
  ISTHMUS_PIDS=("$GW_east" "$GW_west" "$FED_east" "$FED_west")
  kill -TERM "${ISTHMUS_PIDS[@]}"
  for _ in $(seq 300); do
    alive=0
    for p in "${ISTHMUS_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
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
