#!/usr/bin/env bash
# Make sure redis-server is installed (the Redis transport's tests start private servers with it).
# Debian/Ubuntu: installs the distribution's redis-server package with apt-get when it is missing.
# Usage: bash scripts/ensure_redis.sh        (run as root, or with sudo available)
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  echo "redis-server: $(redis-server --version | head -n 1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "redis-server is missing and apt-get is not available: install Redis >= 6 by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "redis-server is missing: run this script as root to install it" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Only the server binary is needed; no service is started (the tests start their own servers).
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
# Some images start the packaged service on install; the tests never use it, so stop it if running.
if command -v service >/dev/null 2>&1; then $SUDO service redis-server stop >/dev/null 2>&1 || true; fi
echo "redis-server: $(redis-server --version | head -n 1)"
