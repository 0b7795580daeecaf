#!/usr/bin/env bash
# Restarts the two gateways of a chain left up by `SETUP_ONLY=1 OUT=dir e2e/bench/proxy.sh` with
# another isthmus binary, for measuring two builds interleaved on the same processes around them.
# Prints the new gateways' pids as "east,west" (for perf stat -p / /proc/<pid>/stat).
#
#   e2e/bench/swap-gateways.sh <OUT dir> <isthmus binary> [VIP url]
set -euo pipefail
OUT=${1:?OUT dir of the running chain}
BIN=$(realpath "${2:?isthmus binary}")
URL=${3:-http://127.201.0.1:8080/19}
SERVER_CPU=${SERVER_CPU:-0}
pid_of() { pgrep -f "gateway run --config $OUT/$1/gateway.yaml" || true; }
for name in east west; do
  pid=$(pid_of $name)
  [ -n "$pid" ] && kill $pid
done
for _ in $(seq 50); do [ -z "$(pid_of east)$(pid_of west)" ] && break; sleep 0.1; done
for name in east west; do
  : > "$OUT/$name/gw.ready"
  setsid taskset -c "$SERVER_CPU" "$BIN" gateway run --config "$OUT/$name/gateway.yaml" \
    > "$OUT/$name/gw.ready" 2>> "$OUT/$name/gateway.log" < /dev/null &
done
for name in east west; do
  for _ in $(seq 200); do [ -s "$OUT/$name/gw.ready" ] && break; sleep 0.1; done
done
# The west gateway's inbound port is new: wait until the east one routes through it again.
for _ in $(seq 100); do curl -sf -o /dev/null "$URL" && break; sleep 0.2; done
sleep 1
curl -sf -o /dev/null "$URL" || { echo "the chain does not answer through $URL after the swap" >&2; exit 1; }
echo "$(pid_of east),$(pid_of west)"
