#!/usr/bin/env bash
# Tracing's cost in throughput, measured in pairs: two gateways of one build on
# the instant upstream of bench-overhead.sh, one tracing every request (100 %
# sampled, to the OTLP sink of bench-overhead.sh, OTLP_SINK picks it) and one
# not, loaded in turn for SLICE seconds each, ROUNDS times, at CONCURRENCY
# connections (which goes first alternates). On a shared host whose speed drifts
# by several per cent within a minute, a run of one after a run of the other
# measures the drift as much as the tracing; slices this short fall on both
# alike. Prints each round's traced ÷ untraced, their median and quartiles, the
# totals, and each gateway's CPU time per request (the sink's too).
#
#   scripts/bench-tracing.sh      (ROUNDS=20, SLICE=3, CONCURRENCY=64;
#                                  RAGWAY_BIN=path measures that binary)
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-20}
SLICE=${SLICE:-3}
CONCURRENCY=${CONCURRENCY:-64}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light

build_gateway
start_instant_upstream "$UPSTREAM_PORT"
start_otlp_sink "$OTLP_PORT"
bare_port=$GATEWAY_PORT
traced_port=$((GATEWAY_PORT + 10))
start_gateway "$bare_port" "$UPSTREAM_PORT"
bare_pid=$ragway_pid
start_gateway "$traced_port" "$UPSTREAM_PORT" "$(config_toml traced)"
traced_pid=$ragway_pid
write_post_lua "$(body_for bare)"

requests() { # port → requests answered in one slice
  local out
  out=$(wrk -t2 -c"$CONCURRENCY" -d"${SLICE}s" -s "$work/post.lua" "http://127.0.0.1:$1/v1/chat/completions")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  awk '/requests in/ {print $1}' <<<"$out"
}
requests "$bare_port" >/dev/null # warm-up: connections, pools
requests "$traced_port" >/dev/null

# CPU time (user and system, all threads) a process has used, in clock ticks.
cpu() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
cpu_before=("$(cpu "$bare_pid")" "$(cpu "$traced_pid")" "$(cpu "$otlp_pid")")
bare_total=0
traced_total=0
ratios=()
for round in $(seq "$ROUNDS"); do
  if ((round % 2)); then
    bare=$(requests "$bare_port")
    traced=$(requests "$traced_port")
  else
    traced=$(requests "$traced_port")
    bare=$(requests "$bare_port")
  fi
  bare_total=$((bare_total + bare))
  traced_total=$((traced_total + traced))
  ratios+=("$(awk -v t="$traced" -v b="$bare" 'BEGIN { printf "%.4f", t / b }')")
done

echo "rounds: $ROUNDS of ${SLICE} s each way, $CONCURRENCY connections, sink: $OTLP_SINK"
echo "traced ÷ untraced by round: ${ratios[*]}"
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END {
  n = NR
  printf "median %+.1f %%, quartiles %+.1f %% and %+.1f %%\n",
    (r[int((n + 1) / 2)] + r[int(n / 2) + 1]) / 2 * 100 - 100,
    r[int(n / 4) + 1] * 100 - 100, r[int(3 * n / 4) + 1] * 100 - 100 }'
awk -v b="$bare_total" -v t="$traced_total" -v s="$((ROUNDS * SLICE))" \
  'BEGIN { printf "untraced %.0f RPS, traced %.0f RPS: %+.1f %%\n", b / s, t / s, (t / b - 1) * 100 }'
# Where the difference goes: each gateway's CPU time per request it answered,
# and the sink's per traced request (a collector elsewhere would not share
# these cores).
awk -v b="$bare_total" -v t="$traced_total" -v hz="$(getconf CLK_TCK)" \
  -v b0="${cpu_before[0]}" -v t0="${cpu_before[1]}" -v s0="${cpu_before[2]}" \
  -v b1="$(cpu "$bare_pid")" -v t1="$(cpu "$traced_pid")" -v s1="$(cpu "$otlp_pid")" \
  'BEGIN { ub = (b1 - b0) / hz / b * 1e6; ut = (t1 - t0) / hz / t * 1e6
    printf "CPU per request: untraced gateway %.2f µs, traced gateway %.2f µs (%+.2f µs, %+.1f %%), the sink %.2f µs\n",
      ub, ut, ut - ub, (ut / ub - 1) * 100, (s1 - s0) / hz / t * 1e6 }'
echo "traces: $(curl -sf "http://127.0.0.1:$traced_port/metrics" |
  grep -E '^ragway_trace(s_dropped|_export_failures)_total ' | tr '\n' ' ')"
