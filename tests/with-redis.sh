#!/usr/bin/env bash
# Runs a command (make test's `cargo test`, make bench's benches) with a Redis for the tests:
#   - FULFILLD_TEST_REDIS_URL when it is set;
#   - otherwise the Redis at FULFILLD_TEST_REDIS_DEFAULT (127.0.0.1:6379) when one answers PING;
#   - otherwise a redis-server of its own on a free loopback port, with a throwaway directory and
#     no persistence, stopped (and its directory removed) when the command ends, however it ends.
# The command sees the chosen URL in FULFILLD_TEST_REDIS_URL. redis-server must be installed in
# every case: the outage tests start and stop their own.
# `tests/with-redis.sh --check` only checks that redis-server is installed (make test runs it
# before building anything, so a missing one stops it at once).
# Exit status: the command's; 1 when redis-server is missing or the own one does not start.
set -euo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: tests/with-redis.sh <command> [args...] | --check" >&2
  exit 2
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "make test needs redis-server on the PATH; install it: apt-get install redis-server (Debian/Ubuntu), dnf install redis (Fedora) or brew install redis (macOS)" >&2
  exit 1
fi
if [ "$1" = "--check" ]; then
  exit 0
fi

# True when host:port answers PING with PONG (bash's /dev/tcp: no redis-cli needed).
answers_ping() {
  local host=$1 port=$2 reply=""
  exec 3<>"/dev/tcp/$host/$port" || return 1
  printf 'PING\r\n' >&3
  IFS= read -r -t 2 reply <&3 || true
  exec 3>&- 3<&-
  [[ "$reply" == "+PONG"* ]]
}

if [ -n "${FULFILLD_TEST_REDIS_URL:-}" ]; then
  exec "$@"
fi

default="${FULFILLD_TEST_REDIS_DEFAULT:-127.0.0.1:6379}"
if answers_ping "${default%:*}" "${default##*:}" 2>/dev/null; then
  export FULFILLD_TEST_REDIS_URL="redis://$default"
  exec "$@"
fi

dir=$(mktemp -d "${TMPDIR:-/tmp}/fulfilld-test-redis.XXXXXX")
pid=""
stop() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port: try random ones until redis-server starts on one (another process may take a port
# between the check and the bind; redis-server then exits and the next port is tried).
for _ in 1 2 3 4 5 6 7 8 9 10; do
  port=$((20000 + RANDOM % 40000))
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    continue
  fi
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
    --daemonize no >"$dir/redis.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do
    if answers_ping 127.0.0.1 "$port" 2>/dev/null; then
      break 2
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  pid=""
done
if [ -z "$pid" ]; then
  echo "no Redis at $default and redis-server would not start on a free port; its log:" >&2
  cat "$dir/redis.log" >&2 2>/dev/null || true
  exit 1
fi

echo "no Redis at $default: started redis-server on 127.0.0.1:$port for this run (stopped afterwards; FULFILLD_TEST_REDIS_URL picks another)" >&2
export FULFILLD_TEST_REDIS_URL="redis://127.0.0.1:$port"
set +e
"$@"
status=$?
set -e
exit "$status"
