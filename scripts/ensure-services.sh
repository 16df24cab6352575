#!/usr/bin/env bash
# Make sure the shared MariaDB (127.0.0.1:3306) and Redis (127.0.0.1:6379) the tests use are up:
# start them the way this machine's images do when they are down and we may, otherwise stop with
# one line saying how. Never stops, flushes or reconfigures a server that is already running.
set -euo pipefail

wait_for() {  # wait_for <what> <seconds> <command...>
    local what=$1 seconds=$2
    shift 2
    for _ in $(seq "$((seconds * 10))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "services: $what did not come up" >&2
    return 1
}

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping; }
mariadb_up() { mariadb-admin -h 127.0.0.1 -u root ping; }

# A run pointed at other servers (the tests' environment variables) checks nothing here.
if [ -n "${SA_REDIS_CACHE_REDIS_URL:-}" ] && [ -n "${SA_REDIS_CACHE_TEST_MYSQL_URL:-}" ]; then
    exit 0
fi

if ! redis_up >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v redis-server >/dev/null; then
        echo "services: starting Redis on 127.0.0.1:6379"
        mkdir -p /var/lib/redis /var/log/redis
        redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
            --dir /var/lib/redis --logfile /var/log/redis/ci.log
    else
        echo "services: Redis is not answering on 127.0.0.1:6379; start it with" \
            "'redis-server --port 6379 --save \"\" --daemonize yes'" >&2
        exit 1
    fi
fi
wait_for Redis 30 redis_up

if ! mariadb_up >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && [ -x /usr/sbin/mariadbd ]; then
        echo "services: starting MariaDB on 127.0.0.1:3306"
        # by its pid file: a throwaway mariadbd of a test (same executable) must not pass for it
        start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/mysqld.pid \
            --exec /usr/sbin/mariadbd
    else
        echo "services: MariaDB is not answering on 127.0.0.1:3306 (user root, no password); start" \
            "it (Debian: 'service mariadb start') or point SA_REDIS_CACHE_TEST_MYSQL_URL at one" >&2
        exit 1
    fi
fi
wait_for MariaDB 60 mariadb_up
