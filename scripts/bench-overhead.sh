#!/usr/bin/env bash
# Gateway overhead: wrk against an upstream that answers instantly (nginx serving a
# canned streamed answer), once directly and once through ragway per configuration,
# at concurrency 1, 8 and 64. Prints Markdown tables: RPS (and its share of the
# direct figure), p50/p99 latency, the gateway's CPU time per request (from
# /proc/PID/stat over each run), an open-loop run, and ragway's RSS.
#
# Configurations (CONFIGS): `bare` is one route and nothing else on (the PII scan
# runs, as always, over a question with no personal data; no cache hit, retrieval or
# audit); `pii-audit` asks with a mobile number in the question (a placeholder goes
# upstream, the answer is restored) and writes every call to the Postgres audit table;
# `governed` admits and settles every call against a managed key's and its tenant's
# limits and budgets; `traced` exports every request's trace (100 % sampled) to an
# OTLP collector on loopback (OTLP_SINK: nginx by default, or python, the grpcio
# sink; either shares these cores, and its CPU per request is printed, with the
# traces dropped or not exported), and `traced-down` to an address where none
# listens.
#
#   scripts/bench-overhead.sh            (DURATION=10s by default; RAGWAY_BIN=path
#                                         measures that binary instead of a fresh build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-"1 8 64"}
CONFIGS=${CONFIGS:-"bare pii-audit"}
RATES=${RATES-"2000 10000"}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
if [ -n "$RATES" ]; then command -v oha >/dev/null 2>&1 || cargo install oha --locked >&2; fi

build_gateway

# --- the instant upstream ------------------------------------------------------------
start_instant_upstream "$UPSTREAM_PORT"
# wrk's latency figures, in milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit);
    if (unit == "us") n /= 1000; else if (unit == "s") n *= 1000; else if (unit == "m") n *= 60000;
    printf "%.3f", n }'
}
measure() { # url concurrency [pid] → "rps p50 p99 cpu-µs-per-request" (cpu 0 without a pid)
  local threads=$(($2 < 2 ? 1 : 2))
  local out before=0 after=0
  if [ -n "${3:-}" ]; then before=$(cpu_ticks "$3"); fi
  out=$(wrk -t"$threads" -c"$2" -d"$DURATION" --latency -s "$work/post.lua" "$1")
  if [ -n "${3:-}" ]; then after=$(cpu_ticks "$3"); fi
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  local rps p50 p99 requests cpu
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$requests" \
    'BEGIN { printf "%.0f", t / hz / n * 1e6 }')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu"
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$ragway_pid/status"; }

# --- closed loop: the direct baseline once, then each configuration --------------------
declare -A direct
write_post_lua "$(body_for bare)"
for c in $CONCURRENCY; do
  direct[$c]=$(measure "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" "$c")
done

echo "| configuration | concurrency | direct RPS | ragway RPS | ragway ÷ direct | direct p50 ms | ragway p50 ms | ragway p99 ms | overhead p50 ms | gateway CPU µs/request |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
rss_lines=()
sink_lines=()
audit_rows() { psql "$AUDIT_DATABASE" -Atc "SELECT count(*) FROM audit_log WHERE instance = 'bench'" 2>/dev/null || echo 0; }
for config in $CONFIGS; do
  [ "$config" = pii-audit ] && rows_before=$(audit_rows)
  [ "$config" = traced ] && start_otlp_sink "$OTLP_PORT"
  start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT" "$(config_toml "$config")"
  body=$(body_for "$config")
  key=$(bench_key "$config" "$GATEWAY_PORT")
  # The gateway answers, and assembles the streamed answer correctly.
  curl -sf -H 'content-type: application/json' ${key:+-H "authorization: Bearer $key"} -d "$body" \
    "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" |
    python3 -c 'import json,sys; c=json.load(sys.stdin)["choices"][0]["message"]["content"]; \
assert c == "Hello! How can I help you today?", c' >&2
  idle_rss=$(rss_kb)
  write_post_lua "$body" "$key"
  for c in $CONCURRENCY; do
    read -r d_rps d_p50 _ _ <<<"${direct[$c]}"
    [ "$config" = traced ] && sink_before=$(cpu_ticks "$otlp_pid")
    read -r g_rps g_p50 g_p99 g_cpu < <(measure "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" "$c" "$ragway_pid")
    if [ "$config" = traced ]; then
      # The collector shares these two cores: its CPU per request, and whether
      # every trace was sent.
      sink_lines+=("$(awk -v t=$(($(cpu_ticks "$otlp_pid") - sink_before)) -v hz="$(getconf CLK_TCK)" \
        -v n="$(awk -v r="$g_rps" -v d="${DURATION%s}" 'BEGIN { print r * d }')" -v c="$c" \
        -v sink="$OTLP_SINK" 'BEGIN { printf "traced at %s: the OTLP sink (%s) used %.1f µs of CPU per request", c, sink, t / hz / n * 1e6 }'); \
$(curl -sf "http://127.0.0.1:$GATEWAY_PORT/metrics" | grep -E '^ragway_trace(s_dropped|_export_failures)_total ' | tr '\n' ' ')\
$([ -f "$work/otlp/exports.log" ] && awk '{ n++; b += $1 } END { printf "; exports taken so far: %d, %.0f bytes", n, b }' "$work/otlp/exports.log")")
    fi
    awk -v k="$config" -v c="$c" -v a="$d_rps" -v b="$d_p50" -v e="$g_rps" -v f="$g_p50" -v g="$g_p99" -v u="$g_cpu" \
      'BEGIN { printf "| %s | %s | %.0f | %.0f | %.2f | %.3f | %.3f | %.3f | %.3f | %s |\n", k, c, a, e, e / a, b, f, g, f - b, u }'
  done
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$ragway_pid/status")
  rss_lines+=("ragway RSS ($config): idle $((idle_rss / 1024)) MiB, high-water mark $((hwm / 1024)) MiB")
  if [ "$config" = pii-audit ]; then
    sleep 2 # the writer's last batch
    rss_lines+=("audit rows written to Postgres by the pii-audit runs: $(($(audit_rows) - rows_before))")
  fi
  stop_gateway
done

# --- open loop: a fixed request rate on 64 connections, so latency is what each request
# pays rather than queueing behind a saturated CPU (coordinated omission corrected);
# RATES="" skips it ------------------------------------------------------------------
body=$(body_for bare)
[ -n "$RATES" ] && start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT"
open_loop() { # url rate → "p50 p99" in ms
  oha -z "$DURATION" -c 64 -q "$2" --latency-correction --no-tui --output-format json \
    -m POST -H 'content-type: application/json' -d "$body" "$1" |
    python3 -c 'import json,sys; r=json.load(sys.stdin); p=r["latencyPercentiles"]; s=r["summary"]; \
assert s["successRate"] == 1.0, s; print("%.3f %.3f" % (p["p50"]*1e3, p["p99"]*1e3))'
}
[ -n "$RATES" ] && echo
[ -n "$RATES" ] && echo "| open loop, 64 connections, bare | direct p50 ms | direct p99 ms | ragway p50 ms | ragway p99 ms | overhead p50 ms | overhead p99 ms |"
[ -n "$RATES" ] && echo "|---:|---:|---:|---:|---:|---:|---:|"
for rate in $RATES; do
  read -r d_p50 d_p99 < <(open_loop "http://127.0.0.1:$UPSTREAM_PORT/v1/chat/completions" "$rate")
  read -r g_p50 g_p99 < <(open_loop "http://127.0.0.1:$GATEWAY_PORT/v1/chat/completions" "$rate")
  awk -v r="$rate" -v b="$d_p50" -v d="$d_p99" -v f="$g_p50" -v g="$g_p99" \
    'BEGIN { printf "| %s req/s | %.3f | %.3f | %.3f | %.3f | %.3f | %.3f |\n", r, b, d, f, g, f - b, g - d }'
done
echo
printf '%s\n' "${rss_lines[@]}"
if [ ${#sink_lines[@]} -gt 0 ]; then printf '%s\n' "${sink_lines[@]}"; fi
