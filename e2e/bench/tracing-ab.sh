#!/usr/bin/env bash
# Tracing off against 1 % and 100 % on the same running chains: both gateways' CPU per request
# for each chain in turn, four cases, interleaved rounds, then the medians of the per-case ratios.
# For the chains left up by `OUT=<dir> SETUP_ONLY=1 e2e/bench/proxy.sh` (with tracing cases, i.e.
# without NO_TRACING). Quicker than a whole proxy.sh run, and the processes stay the same between
# rounds.
#
#   e2e/bench/tracing-ab.sh <OUT dir of the SETUP_ONLY run> [rounds] [seconds]
set -euo pipefail
OUT=${1:?the OUT directory of a SETUP_ONLY=1 e2e/bench/proxy.sh run}
ROUNDS=${2:-3}
SECS=${3:-3}
CLIENT_CPU=${CLIENT_CPU:-1}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/isthmus-release}
BIN=$TARGET/release/isthmus
LOAD=$(find "$TARGET/release/deps" -maxdepth 1 -name 'proxy-*' ! -name '*.d' -printf '%T@ %p\n' | sort -rn | head -1 | cut -d' ' -f2-)
CHAINS="isthmus isthmus-t1 isthmus-t100"
declare -A PIDS VIPS
for chain in $CHAINS; do
  for side in east west; do
    pid=$(pgrep -f "gateway run --config $OUT/$chain/$side/gateway.yaml") ||
      { echo "no $chain $side gateway running from $OUT" >&2; exit 1; }
    PIDS[$chain]="${PIDS[$chain]:-} $pid"
  done
  VIPS[$chain]=$("$BIN" catalog --json --admin-socket "$OUT/$chain/east/data/admin.sock" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["routes"]["bench/web"]["vips"]["v4"])')
done
ticks() { local t=0 p; for p in $1; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
HZ=$(getconf CLK_TCK)
for round in $(seq "$ROUNDS"); do
  for case in "h1 /1k 16" "h1 /19 64" "h2 /1k 64" "h2 /19 16"; do
    read -r proto path conns <<< "$case"
    for chain in $CHAINS; do
      before=$(ticks "${PIDS[$chain]}")
      n=$(taskset -c "$CLIENT_CPU" "$LOAD" load --url "http://${VIPS[$chain]}:8080$path" --proto "$proto" \
        --conns "$conns" --seconds "$SECS" | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
      after=$(ticks "${PIDS[$chain]}")
      echo "$round $chain $proto $path $conns $(( (after - before) * 1000000 / HZ )) $n"
    done
  done
done | python3 -c '
import statistics as st, sys
cpu = {}
for line in sys.stdin:
    _, chain, proto, path, conns, us, n = line.split()
    cpu.setdefault((proto, path, conns), {}).setdefault(chain, []).append(int(us) / max(int(n), 1))
vs = {"isthmus-t1": [], "isthmus-t100": []}
for case, by in sorted(cpu.items()):
    off = st.median(by["isthmus"])
    cells = []
    for t in vs:
        x = st.median(by[t])
        vs[t].append(x / off - 1)
        cells.append(f"{t[8:]} {x:.1f} µs ({(x / off - 1) * 100:+.1f} %)")
    print(" ".join(case), f"off {off:.1f} µs,", ", ".join(cells))
print("median: " + ", ".join(f"{t[8:]} {st.median(r) * 100:+.1f} %" for t, r in vs.items()))
'
