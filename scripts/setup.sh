#!/usr/bin/env bash
# Installs what dpskit's build and tests need on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add riscv32imac-unknown-none-elf >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
# The Python SDK test takes a network namespace of its own when run as root (the SDK only
# uses port 8883): `unshare` (util-linux) makes it, `ip` (iproute2) brings its loopback up.
if [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq iproute2 >/dev/null
fi
# PostgreSQL's server for the shared-ledger tests and benchmark: each starts a throw-away
# cluster (initdb + pg_ctl in a temporary folder, Unix socket only). Installed only if missing;
# the Debian package's own cluster is not used (nor started by this script).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
