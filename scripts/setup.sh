#!/usr/bin/env bash
# Installs what dpskit's build and tests need on a fresh machine. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target add riscv32imac-unknown-none-elf >/dev/null
python3 -m pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
