#!/usr/bin/env bash
# The test command README.md promises: set up, then run every test — the workspace (unit,
# integration, examples, benchmarks in test mode), the firmware's host-testable glue, and the
# stages on Espressif's QEMU: dpskit against the ESP32-S3's real ROM loader, and the firmware
# itself booted on an emulated ESP32-C3 against the local emulator.
#
# ESP_QEMU_DIR must name Espressif's QEMU (bin/, rom/; CI points it at ../shared/tools/esp-qemu):
# the QEMU stages fail without it, they are never skipped. They run as root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ESP_QEMU_DIR:-}" ] || [ ! -d "$ESP_QEMU_DIR/bin" ]; then
  echo "test.sh: set ESP_QEMU_DIR to Espressif's QEMU (bin/ and rom/), e.g. ESP_QEMU_DIR=../shared/tools/esp-qemu scripts/test.sh" >&2
  exit 1
fi
ESP_QEMU_DIR=$(cd "$ESP_QEMU_DIR" && pwd)
export ESP_QEMU_DIR
scripts/setup.sh
scripts/setup-firmware.sh
cargo test --workspace --all-targets
cargo test --manifest-path firmware/glue/Cargo.toml --locked
# dpskit against the S3's real ROM loader (write-config, inspect), about half a minute.
cargo test --features real-rom --test real_rom
# The firmware in QEMU against `dpskit emulate`, inside a private network namespace.
scripts/test-firmware.sh
