#!/usr/bin/env bash
# The test command README.md promises: set up, then run every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets
