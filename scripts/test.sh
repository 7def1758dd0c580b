#!/usr/bin/env bash
# The test command README.md promises: set up, then run every test — the workspace (unit,
# integration, examples, benchmarks in test mode) and the firmware's host-testable glue.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-firmware.sh
cargo test --workspace --all-targets
cargo test --manifest-path firmware/glue/Cargo.toml --locked
