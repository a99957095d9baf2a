#!/usr/bin/env bash
# What translating a dialect costs: the same question through /v1/chat/completions,
# /v1/responses and /v1/messages, whole and streamed, against an upstream that
# answers instantly (nginx serving a canned streamed answer), with wrk at
# concurrency 1 and 64. Prints a Markdown table: RPS, p50/p99 latency and the
# gateway's CPU time per request, each dialect beside chat's own figures measured
# in the same run. With INSTRUCTIONS=1, instead: the gateway's user-space
# instructions per request under callgrind (one wrk thread, 4 connections), which
# repeat where CPU time on a shared host does not.
#
#   scripts/bench-dialects.sh            (DURATION=10s by default; RAGWAY_BIN=path
#                                         measures that binary instead of a fresh build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONCURRENCY=${CONCURRENCY:-"1 64"}

source scripts/lib/bench.sh
need wrk wrk
need nginx nginx-light
build_gateway
start_instant_upstream "$UPSTREAM_PORT"
[ -n "${INSTRUCTIONS:-}" ] || start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT"

question="Hello, who are you?"
body() { # dialect stream
  case $1 in
    chat) echo "{\"model\":\"bench\",\"stream\":$2,\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}]}" ;;
    responses) echo "{\"model\":\"bench\",\"stream\":$2,\"input\":\"$question\"}" ;;
    messages) echo "{\"model\":\"bench\",\"stream\":$2,\"max_tokens\":256,\"messages\":[{\"role\":\"user\",\"content\":\"$question\"}]}" ;;
  esac
}
path() {
  case $1 in
    chat) echo /v1/chat/completions ;;
    responses) echo /v1/responses ;;
    messages) echo /v1/messages ;;
  esac
}
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; unit = v; sub(/^[0-9.]+/, "", unit);
    if (unit == "us") n /= 1000; else if (unit == "s") n *= 1000; else if (unit == "m") n *= 60000;
    printf "%.3f", n }'
}
measure() { # dialect stream concurrency → "rps p50 p99 cpu-µs-per-request"
  local out before after threads=$(($3 < 2 ? 1 : 2))
  write_post_lua "$(body "$1" "$2")"
  # Each dialect answers, with the upstream's text, before it is timed.
  curl -sf -H 'content-type: application/json' -d "$(body "$1" "$2")" \
    "http://127.0.0.1:$GATEWAY_PORT$(path "$1")" | grep -q "How can I help you today" ||
    { echo "$1 (stream $2) did not answer with the upstream's text" >&2; exit 1; }
  before=$(cpu_ticks "$ragway_pid")
  out=$(wrk -t"$threads" -c"$3" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$GATEWAY_PORT$(path "$1")")
  after=$(cpu_ticks "$ragway_pid")
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
  awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" \
    -v rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" \
    -v n="$(awk '/requests in/ {print $1}' <<<"$out")" \
    -v p50="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")" \
    -v p99="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")" \
    'BEGIN { printf "%.0f %.3f %.3f %.0f\n", rps, p50, p99, t / hz / n * 1e6 }'
}

if [ -n "${INSTRUCTIONS:-}" ]; then
  need valgrind valgrind
  echo "| answer | dialect | requests counted | instructions per request | vs chat |"
  echo "|---|---|---:|---:|---:|"
  for stream in false true; do
    answer=whole; [ "$stream" = true ] && answer=streamed
    chat=
    for dialect in chat responses messages; do
      GATEWAY_WRAP="valgrind --tool=callgrind --callgrind-out-file=$work/callgrind.$dialect.$stream" \
        start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT"
      write_post_lua "$(body "$dialect" "$stream")"
      url="http://127.0.0.1:$GATEWAY_PORT$(path "$dialect")"
      wrk -t1 -c4 -d5s -s "$work/post.lua" "$url" >/dev/null
      callgrind_control -z "$ragway_pid" >/dev/null 2>&1
      out=$(wrk -t1 -c4 -d"${SECONDS_COUNTED:-10}s" -s "$work/post.lua" "$url")
      callgrind_control -d "$ragway_pid" >/dev/null 2>&1
      stop_gateway
      if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx responses: $out" >&2; exit 1; fi
      requests=$(grep -oE '[0-9]+ requests in' <<<"$out" | cut -d' ' -f1)
      dump=$(ls -tr "$work"/callgrind."$dialect.$stream"* | grep -v "callgrind.$dialect.$stream\$" | tail -1)
      per=$(awk -v n="$requests" '/^(summary|totals):/ {printf "%.0f", $2 / n; exit}' "$dump")
      [ -z "$chat" ] && chat=$per
      awk -v a="$answer" -v d="$dialect" -v n="$requests" -v p="$per" -v c="$chat" \
        'BEGIN { printf "| %s | %s | %d | %d | %+.1f%% |\n", a, d, n, p, (p - c) / c * 100 }'
    done
  done
  exit 0
fi

echo "| answer | concurrency | dialect | RPS | p50 ms | p99 ms | gateway CPU µs/request | CPU vs chat |"
echo "|---|---:|---|---:|---:|---:|---:|---:|"
for stream in false true; do
  answer=whole; [ "$stream" = true ] && answer=streamed
  for c in $CONCURRENCY; do
    chat_cpu=
    for dialect in chat responses messages; do
      read -r rps p50 p99 cpu < <(measure "$dialect" "$stream" "$c")
      [ -z "$chat_cpu" ] && chat_cpu=$cpu
      awk -v a="$answer" -v c="$c" -v d="$dialect" -v r="$rps" -v p="$p50" -v q="$p99" -v u="$cpu" -v b="$chat_cpu" \
        'BEGIN { printf "| %s | %s | %s | %s | %s | %s | %s | %+.0f%% |\n", a, c, d, r, p, q, u, (u - b) / b * 100 }'
    done
  done
done
