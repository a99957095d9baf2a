#!/usr/bin/env bash
# The gateway's user-space instructions per request, counted by valgrind's callgrind
# (every thread of the gateway; the kernel's work is not counted). Unlike CPU time on
# a shared 2-core host, the count repeats within a fraction of a per cent, so two
# builds can be told apart by changes a timed run would lose in its noise.
#
#   scripts/bench-instructions.sh        (CONFIGS="bare pii-audit", SECONDS_COUNTED=20;
#                                         RAGWAY_BIN=path counts a given binary;
#                                         KEEP_DUMPS=dir keeps the profiles)
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIGS=${CONFIGS:-"bare pii-audit"}
SECONDS_COUNTED=${SECONDS_COUNTED:-20}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
need valgrind valgrind

build_gateway
start_instant_upstream "$UPSTREAM_PORT"
url="http://127.0.0.1:$GATEWAY_PORT"

echo "| configuration | requests counted | instructions | instructions per request |"
echo "|---|---:|---:|---:|"
for config in $CONFIGS; do
  [ "$config" = traced ] && start_otlp_sink "$OTLP_PORT"
  GATEWAY_WRAP="valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.$config" \
    start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT" "$(config_toml "$config")"
  write_post_lua "$(body_for "$config")"
  # Warm up (connections, pools, the detectors' automaton), then count from zero.
  wrk -t1 -c4 -d5s -s "$work/post.lua" "$url/v1/chat/completions" >/dev/null
  callgrind_control -z "$ragway_pid" >/dev/null 2>&1
  out=$(wrk -t1 -c4 -d"${SECONDS_COUNTED}s" -s "$work/post.lua" "$url/v1/chat/completions")
  callgrind_control -d "$ragway_pid" >/dev/null 2>&1
  stop_gateway
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  requests=$(grep -oE '[0-9]+ requests in' <<<"$out" | cut -d' ' -f1)
  # The dump taken after zeroing is the newest file (the exit writes another, later).
  dump=$(ls -tr "$work"/callgrind."$config"* | grep -v "callgrind.$config\$" | tail -1)
  instructions=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
  # KEEP_DUMPS=dir keeps the profile, for callgrind_annotate.
  if [ -n "${KEEP_DUMPS:-}" ]; then cp "$dump" "$KEEP_DUMPS/callgrind.$config"; fi
  awk -v k="$config" -v n="$requests" -v i="$instructions" \
    'BEGIN { printf "| %s | %d | %d | %.0f |\n", k, n, i, i / n }'
done
