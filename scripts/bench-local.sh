#!/usr/bin/env bash
# Local model speed: ragway's decoder, candle's implementation and llama.cpp on the
# same GGUF, prompt, token count and thread count, interleaved, ROUNDS times each,
# for SmolLM2 and Gemma 3; prints a Markdown table of medians. Then the embedder.
#
#   scripts/bench-local.sh          (ROUNDS=3, THREADS="1 2" by default)
#
# llama.cpp comes from llama-cpp-python, built from source into .bench-venv on the
# first run (a few minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 2"}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/ragway/target}
SMOLLM=models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=models/gemma-3-270m-q4_k_m.gguf

scripts/fetch-models.sh
cargo build --release --locked -p ragway-engine --example bench >&2
BENCH="$CARGO_TARGET_DIR/release/examples/bench"
venv=.bench-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$venv/bin/pip" install -q llama-cpp-python==0.3.36 >&2
fi
LLAMA="$venv/bin/python scripts/bench-llamacpp.py"

out=$(mktemp)
trap 'rm -f "$out"' EXIT
for model in $SMOLLM $GEMMA; do
  for prompt in "" --long; do
    for threads in $THREADS; do
      for _ in $(seq "$ROUNDS"); do
        echo "ragway $($BENCH "$model" "$threads" $prompt)" >>"$out"
        # candle's gemma3 prefills at ~30 tokens/s: the long prompt would take minutes.
        if [ "$model" != "$GEMMA" ] || [ -z "$prompt" ]; then
          echo "candle $($BENCH "$model" "$threads" $prompt --candle)" >>"$out"
        fi
        echo "llama.cpp $($LLAMA "$model" "$threads" $prompt 2>/dev/null | tail -n 1)" >>"$out"
      done
    done
  done
done
python3 - "$out" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    engine, rest = line.split(" ", 1)
    fields = dict(re.findall(r"(\w+)=(\S+)", rest))
    key = (fields["model"], fields["prompt_tokens"], engine, fields["threads"])
    rows.setdefault(key, []).append(fields)
print("| model | prompt tokens | engine | threads | load s | prompt tok/s | generation tok/s | peak RSS MiB |")
print("|---|---:|---|---:|---:|---:|---:|---:|")
order = lambda kv: (kv[0][0], int(kv[0][1]), kv[0][3], kv[0][2])
for (model, tokens, engine, threads), runs in sorted(rows.items(), key=order):
    med = lambda f: statistics.median(float(r[f]) for r in runs)
    print(f"| {model} | {tokens} | {engine} | {threads} | {med('load_s'):.2f} | {med('pp_tok_s'):.0f} | "
          f"{med('gen_tok_s'):.1f} | {med('peak_rss_mib'):.0f} |")
PY
for threads in $THREADS; do
  $BENCH --embed models/all-MiniLM-L6-v2 "$threads"
  $BENCH --embed models/e5-small-q4.bin "$threads"
done
