#!/usr/bin/env bash
# Installs what dpskit's build and tests need on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add riscv32imac-unknown-none-elf >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
# PostgreSQL's server for the shared-ledger tests and benchmark: each starts a throw-away
# cluster (initdb + pg_ctl in a temporary folder, Unix socket only). Installed only if missing;
# the Debian package's own cluster is not used (nor started by this script).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
fi
