#!/usr/bin/env bash
# Runs every test. The browser client's tests drive Debian's Chromium; the
# backplanes' tests talk to a real redis-server (127.0.0.1:6379), NATS
# with JetStream (127.0.0.1:4222) and PostgreSQL (127.0.0.1:5432, database
# test, trust auth on loopback). Each is installed (as root, on Debian)
# and started here when missing; elsewhere provide them yourself, or those
# tests skip (and fail under CI=true).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }
apt_updated=
install() { # install PACKAGE...: from Debian, without recommends
  as_root || return 1
  echo "== installing $* (Debian)"
  [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { # wait_for PORT NAME
  for _ in $(seq 100); do listening "$1" && return 0; sleep 0.1; done
  echo "note: $2 did not come up on 127.0.0.1:$1" >&2
}

if ! command -v chromium >/dev/null 2>&1; then
  install chromium || {
    echo "note: chromium is not installed; the browser tests will skip" >&2
    echo "      (sudo apt-get install --no-install-recommends chromium)" >&2
  }
fi

# Redis (REALTIME_REDIS_ADDR elsewhere).
if [ -z "${REALTIME_REDIS_ADDR:-}" ] && ! listening 6379; then
  command -v redis-server >/dev/null 2>&1 || install redis-server || true
  if command -v redis-server >/dev/null 2>&1; then
    echo "== starting redis-server on 127.0.0.1:6379"
    mkdir -p /tmp/realtime-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /tmp/realtime-redis --logfile /tmp/realtime-redis/redis.log
    wait_for 6379 redis-server
  else
    echo "note: no redis-server; the Redis backplane tests will skip" >&2
  fi
fi

# NATS with JetStream (REALTIME_NATS_URL elsewhere).
if [ -z "${REALTIME_NATS_URL:-}" ] && ! listening 4222; then
  command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || install nats-server || true
  nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ -x "$nats" ]; then
    echo "== starting nats-server on 127.0.0.1:4222"
    if [ "$(id -u)" = 0 ] && command -v start-stop-daemon >/dev/null 2>&1; then
      mkdir -p /var/lib/nats-server
      start-stop-daemon --start --oknodo --background --exec "$nats" -- \
        -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log
    else
      mkdir -p /tmp/realtime-nats
      nohup "$nats" -a 127.0.0.1 -p 4222 -js -sd /tmp/realtime-nats \
        -l /tmp/realtime-nats/nats.log >/dev/null 2>&1 &
    fi
    wait_for 4222 nats-server
  else
    echo "note: no nats-server; the NATS backplane tests will skip" >&2
  fi
fi

# PostgreSQL (REALTIME_PG_DSN elsewhere), for the custom backplane example.
if [ -z "${REALTIME_PG_DSN:-}" ] && ! listening 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    install postgresql || true
  fi
  if ls /etc/postgresql/*/main >/dev/null 2>&1 && as_root; then
    version=$(ls /etc/postgresql | sort -V | tail -n1)
    hba=/etc/postgresql/$version/main/pg_hba.conf
    # The tests connect as postgres over loopback without a password.
    if ! grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    echo "== starting PostgreSQL $version on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
    wait_for 5432 PostgreSQL
    su postgres -c "psql -h 127.0.0.1 -tAc \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 ||
      su postgres -c "createdb -h 127.0.0.1 test"
  else
    echo "note: no PostgreSQL; the PostgreSQL backplane example's tests will skip" >&2
  fi
fi

# The browser tests run after the others rather than beside them: the
# timing-sensitive tests (pings, pacing) should not share two cores with a
# browser.
go test -race "$@" $(go list ./... | grep -v /e2e)
go test -race "$@" ./e2e
