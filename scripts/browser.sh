#!/usr/bin/env bash
# Headless Chromium and ChromeDriver for the console's browser tests, from Debian's
# packages (with a CJK font, so Chinese pages render in screenshots). Idempotent:
# nothing is installed when both are there.
set -euo pipefail

if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
  && fc-list 2>/dev/null | grep -qi "wenquanyi\|noto sans cjk"; then
  echo "browser: $(chromium --version 2>/dev/null | head -1) is ready"
  exit 0
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "browser: installing chromium, chromium-driver and a CJK font"
$SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver fonts-wqy-zenhei >/dev/null
echo "browser: $(chromium --version 2>/dev/null | head -1) is ready"
