#!/usr/bin/env bash
# The dashboard's browser tests drive the system's Chromium (Debian's package `chromium`); install it when
# it is missing and this runs as root, otherwise say how.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Chromium for the browser tests (apt-get install chromium)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  exit 0
fi
echo "the browser tests need Chromium: run 'sudo apt-get install chromium' (Debian/Ubuntu), or put a" >&2
echo "chromium binary on PATH, then run 'make test' again" >&2
exit 1
