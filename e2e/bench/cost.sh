#!/usr/bin/env bash
# What one proxy chain costs per request under saturating load: both hops' user and kernel CPU
# (from /proc/<pid>/stat), syscalls and context switches (perf stat). For a chain left up by
# `SETUP_ONLY=1 e2e/bench/proxy.sh`; prints one line.
#
#   e2e/bench/cost.sh <url> <pid,pid,...> [h1|h2] [conns]
#   e.g. e2e/bench/cost.sh http://127.0.0.1:19080/19 "$(pgrep -d, haproxy)"
set -euo pipefail
URL=${1:?url}
PIDS=${2:?comma-separated pids}
PROTO=${3:-h1}
CONNS=${4:-16}
CLIENT_CPU=${CLIENT_CPU:-1}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/isthmus-release}
LOAD=$(ls -t "$TARGET"/release/deps/proxy-* | grep -v '\.d$' | head -1)
command -v perf >/dev/null || { echo "missing perf: apt-get install -y linux-perf" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
ticks() {
  local user=0 sys=0 p
  for p in ${PIDS//,/ }; do
    read -r u s < <(awk '{print $14, $15}' "/proc/$p/stat")
    user=$((user + u)); sys=$((sys + s))
  done
  echo "$user $sys"
}
# 10 s of load; the middle 6 s are measured.
taskset -c "$CLIENT_CPU" "$LOAD" load --url "$URL" --proto "$PROTO" --conns "$CONNS" --seconds 10 > "$TMP/load.json" &
load=$!
sleep 2
read -r u0 s0 < <(ticks)
perf stat -x, -e raw_syscalls:sys_enter -e context-switches -p "$PIDS" -- sleep 6 2> "$TMP/stat"
read -r u1 s1 < <(ticks)
wait $load
python3 - "$TMP" "$((u1 - u0))" "$((s1 - s0))" "$(getconf CLK_TCK)" <<'PY'
import json, sys
tmp, user, sys_, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rps = json.load(open(f"{tmp}/load.json"))["rps"]
counts = {}
for line in open(f"{tmp}/stat"):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].isdigit():
        counts[f[2]] = int(f[0])
requests = rps * 6
us = 1e6 / hz / requests
print(f"req/s {rps:.0f}  user {user * us:.1f} µs/req  kernel {sys_ * us:.1f} µs/req  "
      f"syscalls {counts.get('raw_syscalls:sys_enter', 0) / requests:.2f}/req  "
      f"switches {counts.get('context-switches', 0) / requests:.2f}/req")
PY
