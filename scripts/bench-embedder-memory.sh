#!/usr/bin/env bash
# The gateway's memory with each embedder: one `ragway` process per config (the
# test profile's binary, dependencies optimised: the heap is what differs between
# configs, not the code), `VmRSS` after start, after the load and its peak
# (`VmHWM`), from /proc, and the steady figure split into heap and mapped files
# (the binary, and the pages of a model file a text's pieces touched: clean pages
# the kernel can take back). Load: 20 `/v1/embeddings` calls of 23 passages (the
# labelled documents' paragraphs, up to ~200 tokens each), then 200 calls of two
# short questions; with retrieval, the 10 labelled documents posted first. Prints
# a Markdown table.
#
#   scripts/bench-embedder-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/bench.sh
cargo build --locked --bin ragway >&2
RAGWAY="$CARGO_TARGET_DIR/debug/ragway"

kib() { awk -v f="$1:" '$1 == f { printf "%d", $2 / 1024 }' "/proc/$2/status"; }

run() { # name embedder-model-or-empty retrieval(0|1)
  local port=18095 conf="$work/ragway.toml" pid
  rm -rf "$work/store"
  printf '[server]\nlisten = "127.0.0.1:%s"\n[log]\nlevel = "warn"\n' "$port" >"$conf"
  if [ -n "$2" ]; then printf '[embeddings]\nname = "bench"\nmodel = "%s"\n' "$2" >>"$conf"; fi
  if [ "$3" = 1 ]; then printf '[retrieval]\npath = "%s/store"\n' "$work" >>"$conf"; fi
  "$RAGWAY" serve --config "$conf" >"$work/ragway.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  local started; started=$(kib VmRSS "$pid")
  python3 - "$port" "$2" "$3" <<'PY'
import json, pathlib, sys, urllib.request
port, model, retrieval = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
def post(path, body):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
docs = sorted(pathlib.Path("tests/data/rag/docs").glob("*.md"))
if retrieval:
    for doc in docs:
        post("/v1/documents", {"id": doc.name, "text": doc.read_text()})
if model:
    paragraphs = [p.strip() for d in docs for p in d.read_text().split("\n\n") if len(p.strip()) > 200]
    for i in range(20):
        post("/v1/embeddings", {"model": "bench", "input": paragraphs[i:i + 23]})
    for i in range(200):
        post("/v1/embeddings", {"model": "bench", "input": ["How many days to return?", f"退货要几天？{i}"]})
PY
  echo "| $1 | $started MiB | $(kib VmRSS "$pid") MiB | $(kib VmHWM "$pid") MiB | $(kib RssAnon "$pid") MiB | $(kib RssFile "$pid") MiB |"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "| config | after start | steady (after the load) | peak | steady: heap (RssAnon) | steady: mapped files (RssFile) |"
echo "|---|---:|---:|---:|---:|---:|"
if [ -n "${ONLY_E5:-}" ]; then run "e5, \`/v1/embeddings\` only" "models/e5-small-q4.bin" 0; exit; fi
run "no embedder, no retrieval" "" 0
run "MiniLM, \`/v1/embeddings\` only" "models/all-MiniLM-L6-v2" 0
run "e5, \`/v1/embeddings\` only" "models/e5-small-q4.bin" 0
run "MiniLM with retrieval (store, BM25, jieba)" "models/all-MiniLM-L6-v2" 1
run "e5 with retrieval" "models/e5-small-q4.bin" 1
