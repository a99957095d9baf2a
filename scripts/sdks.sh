#!/usr/bin/env bash
# The official client SDKs the suite drives the gateway with, each in its own
# place outside the checkout (kept between runs, like the build):
#   $root/openai      a venv with the openai Python SDK
#   $root/anthropic   a venv with the anthropic Python SDK
#   $root/langchain   a venv with LangChain's OpenAI integration (and the openai
#                     SDK it depends on, at the same pin as above)
#   $root/node        node_modules with the openai Node SDK
# Idempotent: a place holding exactly its pins is kept.
set -euo pipefail

root=${RAGWAY_SDKS:-$HOME/.cache/ragway/sdks}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_install() {
  echo "sdks: installing $*"
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null
}

ready() { [ -f "$1/pins" ] && [ "$(cat "$1/pins")" = "$2" ]; }

python_sdk() {
  local name=$1; shift
  local venv=$root/$name
  if ready "$venv" "$*" && [ -x "$venv/bin/python" ]; then
    echo "sdks: $venv is ready"
    return
  fi
  echo "sdks: creating $venv ($*)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$*" >"$venv/pins"
}

node_sdk() {
  local dir=$root/node
  if ready "$dir" "$*" && [ -d "$dir/node_modules" ]; then
    echo "sdks: $dir is ready"
    return
  fi
  # The openai Node SDK pinned here runs on Node 20 and later.
  if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
    apt_install nodejs npm
  fi
  echo "sdks: creating $dir ($*)"
  rm -rf "$dir"
  mkdir -p "$dir"
  echo '{"private": true, "type": "module"}' >"$dir/package.json"
  (cd "$dir" && npm install --silent --no-audit --no-fund --save-exact "$@")
  echo "$*" >"$dir/pins"
}

if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi
mkdir -p "$root"
python_sdk openai openai==3.60.0
python_sdk anthropic anthropic==2.17.0
python_sdk langchain langchain-openai==1.8.1 openai==3.60.0
node_sdk openai@6.49.0
