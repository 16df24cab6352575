#!/usr/bin/env bash
# mysqlclient has no Linux wheel: pip builds it against the MariaDB client headers.
set -euo pipefail
if pkg-config --exists libmariadb 2>/dev/null || pkg-config --exists mysqlclient 2>/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libmariadb-dev pkg-config >/dev/null
else
    echo "Install the MariaDB client headers and pkg-config first (Debian: apt-get install libmariadb-dev pkg-config)" >&2
    exit 1
fi
