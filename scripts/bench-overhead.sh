#!/usr/bin/env bash
# Gateway overhead: wrk against an upstream that answers instantly (nginx serving a
# canned chat.completion), once directly and once through ragway, at concurrency 1,
# 8 and 64. Prints a Markdown table: RPS, p50/p99 latency, the overhead (through
# minus direct), and ragway's RSS idle and under load.
#
#   scripts/bench-overhead.sh            (DURATION=10s by default)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
UPSTREAM_PORT=${UPSTREAM_PORT:-18081}
GATEWAY_PORT=${GATEWAY_PORT:-18080}
CONCURRENCY=${CONCURRENCY:-"1 8 64"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
command -v oha >/dev/null 2>&1 || cargo install oha --locked >&2

cargo build --release --locked --bin ragway >&2

# --- the instant upstream and the gateway in front of it ---------------------------
start_instant_upstream "$UPSTREAM_PORT"
start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT"
body='{"model":"bench","messages":[{"role":"user","content":"Hello, who are you?"}]}'
# The gateway answers, and assembles the streamed answer correctly.
curl -sf -H 'content-type: application/json' -d "$body" \
  "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" |
  python3 -c 'import json,sys; c=json.load(sys.stdin)["choices"][0]["message"]["content"]; \
assert c == "Hello! How can I help you today?", c' >&2
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$ragway_pid/status"; }
idle_rss=$(rss_kb)

cat >"$work/post.lua" <<EOF
wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"
EOF

# wrk's latency figures, in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit);
    if (unit == "us") n /= 1000; else if (unit == "s") n *= 1000; else if (unit == "m") n *= 60000;
    printf "%.3f", n }'
}
measure() { # url concurrency → "rps p50 p99"
  local threads=$(($2 < 2 ? 1 : 2))
  local out
  out=$(wrk -t"$threads" -c"$2" -d"$DURATION" --latency -s "$work/post.lua" "$1")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}

peak_rss=$idle_rss
sample_rss() {
  while kill -0 "$ragway_pid" 2>/dev/null; do
    rss_kb >>"$work/rss.samples" 2>/dev/null || true
    sleep 0.2
  done
}
sample_rss &
pids+=($!)

echo "| concurrency | direct RPS | direct p50 ms | direct p99 ms | ragway RPS | ragway p50 ms | ragway p99 ms | overhead p50 ms | overhead p99 ms |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CONCURRENCY; do
  read -r d_rps d_p50 d_p99 < <(measure "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" "$c")
  read -r g_rps g_p50 g_p99 < <(measure "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" "$c")
  awk -v c="$c" -v a="$d_rps" -v b="$d_p50" -v d="$d_p99" -v e="$g_rps" -v f="$g_p50" -v g="$g_p99" \
    'BEGIN { printf "| %s | %.0f | %.3f | %.3f | %.0f | %.3f | %.3f | %.3f | %.3f |\n", c, a, b, d, e, f, g, f - b, g - d }'
done

# Open loop: a fixed request rate on 64 connections, so latency is what each request
# pays rather than queueing behind a saturated CPU (coordinated omission corrected).
RATES=${RATES:-"2000 10000"}
open_loop() { # url rate → "p50 p99" in ms
  oha -z "$DURATION" -c 64 -q "$2" --latency-correction --no-tui --output-format json \
    -m POST -H 'content-type: application/json' -d "$body" "$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); p=r["latencyPercentiles"]; s=r["summary"]; \
assert s["successRate"] == 1.0, s; print("%.3f %.3f %.0f" % (p["p50"]*1e3, p["p99"]*1e3, s["requestsPerSec"]))'
}
echo
echo "| open loop, 64 connections | direct p50 ms | direct p99 ms | ragway p50 ms | ragway p99 ms | overhead p50 ms | overhead p99 ms |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for rate in $RATES; do
  read -r d_p50 d_p99 _ < <(open_loop "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" "$rate")
  read -r g_p50 g_p99 g_rps < <(open_loop "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" "$rate")
  awk -v r="$rate" -v b="$d_p50" -v d="$d_p99" -v f="$g_p50" -v g="$g_p99" \
    'BEGIN { printf "| %s req/s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", r, b, d, f, g, f - b, g - d }'
done

peak_rss=$(sort -n "$work/rss.samples" | tail -1)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$ragway_pid/status")
echo
echo "ragway RSS: idle $((idle_rss / 1024)) MiB, under load (sampled peak) $((peak_rss / 1024)) MiB, high-water mark $((hwm / 1024)) MiB"
