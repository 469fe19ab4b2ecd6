#!/usr/bin/env bash
# Runs every test. The browser client's tests drive Debian's Chromium and
# the Redis backplane's a real redis-server: each is installed (as root, on
# Debian) or started here when missing; elsewhere provide them yourself,
# or those tests skip (and fail under CI=true).
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

# The Redis backplane's tests talk to a real redis-server on 127.0.0.1:6379
# (REALTIME_REDIS_ADDR elsewhere); start one if none answers.
if [ -z "${REALTIME_REDIS_ADDR:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (Debian)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
  fi
  if command -v redis-server >/dev/null 2>&1; then
    echo "== starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/realtime-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/realtime-redis --logfile /tmp/realtime-redis/redis.log
    for _ in $(seq 50); do
      (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break
      sleep 0.1
    done
  else
    echo "note: no redis-server; the Redis backplane tests will skip" >&2
  fi
fi

# The browser tests run after the others rather than beside them: the
# timing-sensitive tests (pings, pacing) should not share two cores with a
# browser.
go test -race "$@" $(go list ./... | grep -v /e2e)
go test -race "$@" ./e2e
