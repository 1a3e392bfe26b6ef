#!/usr/bin/env bash
# The test command the README gives: install what the tests need, then run pytest.
#   bash tests/run.sh [PYTEST ARGS...]     install (when missing) and test
#   bash tests/run.sh --install-only       install only (.ci/run lints in between)
# The tests drive real peers: systemd-socket-activate (Debian package systemd), curl, nginx.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v curl >/dev/null || need+=(curl)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}"
    else
        echo "the tests need these Debian packages: ${need[*]}; install them and run again" >&2
        exit 1
    fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

if [ "${1:-}" = "--install-only" ]; then
    exit 0
fi
exec .venv/bin/python -m pytest "$@"
