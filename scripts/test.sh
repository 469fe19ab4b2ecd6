#!/usr/bin/env bash
# Runs every test. The browser client's tests drive Debian's Chromium: it
# is installed here when missing and this runs as root (no browser
# download works in CI); elsewhere install it yourself, or those tests
# skip (and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium (Debian, without recommends)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
  else
    echo "note: chromium is not installed; the browser tests will skip" >&2
    echo "      (sudo apt-get install --no-install-recommends chromium)" >&2
  fi
fi

go test -race "$@" ./...
