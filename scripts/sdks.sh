#!/usr/bin/env bash
# The official client SDKs the suite drives the gateway with, in a venv outside the
# checkout (kept between runs, like the build): openai for Python, and LangChain's
# OpenAI integration, and anthropic for Python. Idempotent: a venv holding exactly
# these pins is kept.
set -euo pipefail

venv=${RAGWAY_SDK_VENV:-$HOME/.cache/ragway/sdk-venv}
pins=(openai==3.60.0 langchain-openai==1.8.1 anthropic==2.17.0)

if [ -f "$venv/pins" ] && [ "$(cat "$venv/pins")" = "${pins[*]}" ] && [ -x "$venv/bin/python" ]; then
  echo "sdks: $venv is ready"
  exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "sdks: installing python3-venv"
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq && $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq python3-venv >/dev/null
fi
echo "sdks: creating $venv (${pins[*]})"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
echo "${pins[*]}" >"$venv/pins"
echo "sdks: $venv is ready"
