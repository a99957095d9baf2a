#!/usr/bin/env bash
# The streamed-answer tail at one connection: sequential streamed requests through
# ragway and directly to an instant upstream (nginx, canned answer), each request
# written in one write (TCP_NODELAY) and in two (head, then body, Nagle on — how
# many clients send them). Prints p50/p99/max and how many took over 20 ms.
#
#   scripts/bench-stream-tail.sh            (N=3000 requests per run by default)
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-3000}

source scripts/lib/bench.sh
need nginx nginx-light
build_gateway
start_instant_upstream "$UPSTREAM_PORT"
start_gateway "$GATEWAY_PORT" "$UPSTREAM_PORT"
measure() { python3 scripts/lib/sse_latency.py 127.0.0.1 "$1" bench "$N" ${2:-}; }
echo "| path | request written | latency |"
echo "|---|---|---|"
echo "| direct | one write | $(measure "$UPSTREAM_PORT") |"
echo "| ragway | one write | $(measure "$GATEWAY_PORT") |"
echo "| direct | head, then body | $(measure "$UPSTREAM_PORT" --split) |"
echo "| ragway | head, then body | $(measure "$GATEWAY_PORT" --split) |"
