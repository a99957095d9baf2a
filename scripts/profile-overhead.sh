#!/usr/bin/env bash
# Where the gateway's CPU goes on the request path: `perf record` (cpu-clock
# sampling, so it works without hardware counters) on the release gateway while wrk
# drives it at 8 connections against the instant upstream of bench-overhead.sh.
# Prints the hottest symbols (self time) and the share of kernel time.
#
#   scripts/profile-overhead.sh               (CONFIG=bare|pii-audit|governed, DURATION=15s)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
CONFIG=${CONFIG:-bare}
TOP=${TOP:-60}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
need perf linux-perf

build_gateway
start_instant_upstream "$UPSTREAM_PORT"
start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT" "$(config_toml "$CONFIG")"
write_post_lua "$(body_for "$CONFIG")" "$(bench_key "$CONFIG" "$GATEWAY_PORT")"

# Warm up, then sample the gateway alone while the load runs.
wrk -t2 -c8 -d3s -s "$work/post.lua" "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" >/dev/null
wrk -t2 -c8 -d"$DURATION" -s "$work/post.lua" "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" >"$work/wrk.out" &
load=$!
sleep 1
perf record -q -e cpu-clock -F 4999 -p "$ragway_pid" -o "$work/perf.data" -- sleep $((${DURATION%s} - 2)) 2>/dev/null
wait "$load"
grep -E "Requests/sec" "$work/wrk.out"
echo "by thread:"
perf report -i "$work/perf.data" --stdio --sort comm 2>/dev/null | grep -E '^\s+[0-9.]+%' | head -8
echo "kernel share of the gateway's samples:"
perf report -i "$work/perf.data" --stdio --sort dso 2>/dev/null | grep -E '^\s+[0-9.]+%' | head -8
echo "hottest symbols (self):"
perf report -i "$work/perf.data" --stdio --no-children --sort sym 2>/dev/null |
  grep -E '^\s+[0-9.]+%' | head -"$TOP"
