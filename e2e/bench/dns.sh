#!/usr/bin/env bash
# Global DNS benchmark: Isthmus (`isthmus dns` serving a saved catalog) vs Knot DNS and NSD
# serving the same names from an equivalent zone file, measured by dnsperf in the same run.
# Not a test and not run in CI: results go to BENCHMARKS.md ("Global DNS").
#
#   cargo build --release --bin isthmus
#   e2e/bench/dns.sh                       # 10,000 and 100,000 names
#   SIZES="1000" SECONDS_PER_RUN=5 e2e/bench/dns.sh
#   SIZES=100000 MIXES="nxdomain" ROUNDS=5 e2e/bench/dns.sh   # one cell again
#   SERVERS=isthmus ISTHMUS_BIN=path/to/isthmus e2e/bench/dns.sh  # Isthmus alone, another build
#
# The three servers run side by side, each pinned to CPU 0 (`taskset -c 0`; only the one being
# measured is busy); dnsperf is pinned to CPU 1. For each size and query mix the servers take
# turns (isthmus, knot, nsd), ROUNDS times, so that the machine's noise falls on all of them
# alike; each cell is the median over the rounds of: the maximum QPS dnsperf gets (200 queries
# outstanding), the server's CPU time per answered query (utime+stime from /proc, descendants
# included), and the latency percentiles at a fixed 30,000 QPS (from dnsperf -v, one line per
# query).
#
# Needs: dnsperf, knot (knotd), nsd, python3, taskset; root is not needed.
set -euo pipefail
cd "$(dirname "$0")/../.."

SIZES=${SIZES:-"10000 100000"}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
ROUNDS=${ROUNDS:-3}
RATE=${RATE:-30000}
MIXES=${MIXES:-"hits hit90-nx10 nxdomain nodata"}
SERVERS=${SERVERS:-"isthmus knot nsd"}
BIN=${ISTHMUS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/isthmus-release}/release/isthmus}
[[ -x $BIN ]] || BIN=target/release/isthmus
tools="dnsperf python3 taskset"
[[ " $SERVERS " == *" knot "* ]] && tools+=" knotd"
[[ " $SERVERS " == *" nsd "* ]] && tools+=" nsd"
for tool in $tools; do
  command -v $tool >/dev/null || { echo "missing $tool (apt-get install dnsperf knot nsd)" >&2; exit 1; }
done
[[ -x $BIN ]] || { echo "build first: cargo build --release --bin isthmus" >&2; exit 1; }

WORK=$(mktemp -d /tmp/isthmus-dns-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
RESULTS=$WORK/results.tsv
printf 'names\tserver\tmix\tround\tmax_qps\tcpu_us_per_query\tp50_us\tp99_us\tp999_us\tlost\n' >"$RESULTS"

ZONE=clusterset.local
PORT_ISTHMUS=15353
PORT_KNOT=15354
PORT_NSD=15355

# Names, zone file, Isthmus catalog snapshot and query files for N services.
generate() {
  local n=$1 dir=$2
  mkdir -p "$dir"
  python3 - "$n" "$dir" <<'PY'
import json, random, sys
n, d = int(sys.argv[1]), sys.argv[2]
zone = "clusterset.local"
ttl = 5
random.seed(7)
def vip(i, base):
    return f"{base}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
routes = {}
z = [f"$ORIGIN {zone}.", f"$TTL {ttl}",
     f"@ SOA ns.{zone}. hostmaster.{zone}. 1 14400 3600 1209600 {ttl}",
     f"@ NS ns.{zone}.", "ns A 127.0.0.1"]
for i in range(n):
    svc, ns = f"svc-{i}", f"ns-{i % 100}"
    key = f"{ns}/{svc}"
    summary = {"key": key, "ports": [{"name": "http", "port": 8080, "protocol": "http"}],
               "zones": {"us-east": 1}, "weight": 100, "metadata": {}, "headless": False,
               "exported_at_ms": 1}
    routes[key] = {
        "key": key, "defined_by": "east", "ports": summary["ports"], "headless": False,
        "clusters": [{"place": {"cluster": "east", "trust_domain": "east.mesh", "region": "us-east"},
                      "local": True, "stale": False, "summary": summary}],
        "conflicts": [], "vips": {"v4": vip(i, "10")},
        "cluster_vips": [["east", {"v4": vip(i, "11")}]],
    }
    z.append(f"{svc}.{ns}.svc A {vip(i, '10')}")
    z.append(f"east.{svc}.{ns}.svc A {vip(i, '11')}")
    z.append(f"_http._tcp.{svc}.{ns}.svc SRV 0 100 8080 {svc}.{ns}.svc.{zone}.")
json.dump({"version": 1, "me": {"cluster": "east", "trust_domain": "east.mesh", "region": "us-east"},
           "routes": routes}, open(f"{d}/catalog.json", "w"))
open(f"{d}/{zone}.zone", "w").write("\n".join(z) + "\n")
q = 200000
hit = lambda: f"svc-{(i := random.randrange(n))}.ns-{i % 100}.svc.{zone} A"
miss = lambda: f"nosuch-{random.randrange(10**9)}.ns-{random.randrange(100)}.svc.{zone} A"
nodata = lambda: f"svc-{(i := random.randrange(n))}.ns-{i % 100}.svc.{zone} AAAA"
mixes = {"hits": lambda: hit(), "hit90-nx10": lambda: hit() if random.random() < 0.9 else miss(),
         "nxdomain": miss, "nodata": nodata}
for name, f in mixes.items():
    open(f"{d}/q-{name}.txt", "w").write("\n".join(f() for _ in range(q)) + "\n")
PY
}

# CPU ticks (user + system) of a process and all its descendants (NSD serves from forked
# children).
cpu_ticks() {
  local total p
  # Fields after "pid (comm) ": comm may hold spaces ("nsd: main").
  total=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}')
  total=${total:-0}
  for p in $(pgrep -P "$1" || true); do
    total=$((total + $(cpu_ticks "$p")))
  done
  echo "$total"
}

start_isthmus() {
  local dir=$1
  cat >"$dir/federation.yaml" <<EOF
cluster: east
region: us-east
data_dir: $dir/data
listen: {peering: {bind: 127.0.0.1:0}}
vips: {ipv4: 10.0.0.0/8}
dns:
  bind: 127.0.0.1:$PORT_ISTHMUS
  udp_workers: 1
  rate_limit: {responses_per_second: 0}
EOF
  ISTHMUS_LOG=warn taskset -c 0 "$BIN" dns --config "$dir/federation.yaml" --snapshot "$dir/catalog.json" \
    --poll-ms 60000 >"$dir/isthmus.out" 2>"$dir/isthmus.log" &
  echo $!
}

start_knot() {
  local dir=$1
  mkdir -p "$dir/knot"
  cat >"$dir/knot/knot.conf" <<EOF
server:
  rundir: "$dir/knot"
  listen: 127.0.0.1@$PORT_KNOT
  udp-workers: 1
  tcp-workers: 1
  background-workers: 1
database:
  storage: "$dir/knot"
zone:
  - domain: $ZONE
    file: "$dir/$ZONE.zone"
    journal-content: none
    zonefile-load: whole
log:
  - target: stderr
    any: warning
EOF
  taskset -c 0 knotd -c "$dir/knot/knot.conf" >"$dir/knot.out" 2>"$dir/knot.log" &
  echo $!
}

start_nsd() {
  local dir=$1
  mkdir -p "$dir/nsd"
  cat >"$dir/nsd/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$PORT_NSD
  server-count: 1
  username: ""
  zonesdir: "$dir"
  database: ""
  pidfile: "$dir/nsd/nsd.pid"
  xfrdfile: "$dir/nsd/xfrd.state"
  zonelistfile: "$dir/nsd/zone.list"
  logfile: "$dir/nsd.log"
  verbosity: 0
  hide-version: yes
  # NSD's response-rate limiting is on by default (200/s): off, like Knot's and Isthmus' here.
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: $ZONE
  zonefile: "$ZONE.zone"
EOF
  taskset -c 0 nsd -d -c "$dir/nsd/nsd.conf" >"$dir/nsd.out" 2>>"$dir/nsd.log" &
  echo $!
}

wait_ready() {
  local port=$1 name=$2
  for _ in $(seq 1 300); do
    if dig +time=1 +tries=1 -p "$port" @127.0.0.1 "svc-0.ns-0.svc.$ZONE" A +short 2>/dev/null | grep -q '^10\.'; then
      return 0
    fi
    sleep 0.2
  done
  echo "$name did not answer on port $port" >&2
  return 1
}

# Percentiles (µs) of the per-query latencies dnsperf -v printed.
percentiles() {
  python3 - "$1" <<'PY'
import sys
lat = []
for line in open(sys.argv[1], errors="replace"):
    p = line.split()
    if len(p) >= 2 and p[0] == ">" :
        try:
            lat.append(float(p[-1]) * 1e6)
        except ValueError:
            pass
lat.sort()
def q(x):
    return lat[min(len(lat) - 1, int(x * len(lat)))] if lat else float("nan")
print(f"{q(0.5):.0f}\t{q(0.99):.0f}\t{q(0.999):.0f}")
PY
}

# One measurement: max QPS + CPU per query, then latency at $RATE.
measure() {
  local n=$1 dir=$2 server=$3 port=$4 pid=$5 mix=$6 round=$7
  local qf="$dir/q-$mix.txt" out="$dir/$server-$mix-$round"
  local before after completed qps hz cpu_us lost
  before=$(cpu_ticks "$pid")
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -l "$SECONDS_PER_RUN" -c 4 -q 200 >"$out.max" 2>&1
  after=$(cpu_ticks "$pid")
  completed=$(awk '/Queries completed:/ {print $3}' "$out.max")
  qps=$(awk '/Queries per second:/ {print $4}' "$out.max")
  hz=$(getconf CLK_TCK)
  cpu_us=$(python3 -c "print(f'{($after - $before) / $hz * 1e6 / max(1, $completed):.2f}')")
  taskset -c 1 dnsperf -s 127.0.0.1 -p "$port" -d "$qf" -l "$SECONDS_PER_RUN" -c 4 -q 200 -Q "$RATE" -v >"$out.rate" 2>&1
  lost=$(awk '/Queries lost:/ {print $3}' "$out.rate")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$server" "$mix" "$round" "${qps%.*}" "$cpu_us" "$(percentiles "$out.rate")" "$lost" >>"$RESULTS"
  tail -1 "$RESULTS"
}

for n in $SIZES; do
  dir=$WORK/$n
  echo "== $n names: generating"
  generate "$n" "$dir"
  declare -A PID PORT
  PORT[isthmus]=$PORT_ISTHMUS; PORT[knot]=$PORT_KNOT; PORT[nsd]=$PORT_NSD
  for server in $SERVERS; do
    PID[$server]=$(start_$server "$dir")
    PIDS+=("${PID[$server]}")
  done
  for server in $SERVERS; do
    wait_ready "${PORT[$server]}" "$server"
  done
  sleep 2
  for server in $SERVERS; do
    echo "== $n names: $server pid ${PID[$server]}, rss $(awk '/VmRSS/ {print $2 $3}' /proc/"${PID[$server]}"/status)"
  done
  for mix in $MIXES; do
    for round in $(seq 1 "$ROUNDS"); do
      for server in $SERVERS; do
        measure "$n" "$dir" "$server" "${PORT[$server]}" "${PID[$server]}" "$mix" "$round"
      done
    done
  done
  for server in $SERVERS; do kill "${PID[$server]}" 2>/dev/null || true; done
  for server in $SERVERS; do
    # Gone before the next size starts (and, for a profiling build, its profile written).
    for _ in $(seq 100); do kill -0 "${PID[$server]}" 2>/dev/null || break; sleep 0.1; done
  done
done

# Medians over the rounds.
python3 - "$RESULTS" <<'PY' | tee "$WORK/summary.tsv"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
keys = []
for r in rows:
    k = (r["names"], r["mix"], r["server"])
    if k not in keys:
        keys.append(k)
print("names\tmix\tserver\tmax_qps\tcpu_us_per_query\tp50_us\tp99_us\tp999_us\tlost")
for k in sorted(keys, key=lambda k: (int(k[0]), ["hits", "hit90-nx10", "nxdomain", "nodata"].index(k[1]), k[2])):
    rs = [r for r in rows if (r["names"], r["mix"], r["server"]) == k]
    med = lambda f: statistics.median(float(r[f]) for r in rs)
    print(f"{k[0]}\t{k[1]}\t{k[2]}\t{med('max_qps'):.0f}\t{med('cpu_us_per_query'):.2f}\t{med('p50_us'):.0f}\t{med('p99_us'):.0f}\t{med('p999_us'):.0f}\t{sum(int(r['lost'] or 0) for r in rs)}")
PY
echo "raw output: $WORK (results.tsv: every round; summary.tsv: medians)"
