#!/usr/bin/env bash
# The firmware end to end: builds the ESP32-C3 firmware for Espressif's QEMU (network:
# QEMU's OpenCores Ethernet; a slice of RAM stands in for PSRAM), then runs
# tests/firmware_qemu.rs inside a private network namespace with only loopback, where the
# emulator owns ports 8883 and 123 and the emulated board reaches them as 10.0.2.2.
#
# Needs: ESP_QEMU_DIR (Espressif's QEMU with bin/qemu-system-riscv32 and rom/), root (for
# `unshare --net`; CI runs as root) and QEMU's runtime libraries (scripts/setup-firmware.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ESP_QEMU_DIR:-}" ] || [ ! -x "$ESP_QEMU_DIR/bin/qemu-system-riscv32" ]; then
  echo "test-firmware: ESP_QEMU_DIR must point at Espressif's QEMU (bin/qemu-system-riscv32, rom/); got '${ESP_QEMU_DIR:-}'" >&2
  exit 1
fi
ESP_QEMU_DIR=$(cd "$ESP_QEMU_DIR" && pwd)
export ESP_QEMU_DIR
if [ "$(id -u)" != 0 ]; then
  echo "test-firmware: run as root (unshare --net needs it)" >&2
  exit 1
fi
(cd firmware && cargo build --release --locked --target riscv32imc-unknown-none-elf \
  --no-default-features --features esp32c3,openeth,emulated-psram)
export DPSKIT_FIRMWARE_ELF="$PWD/firmware/target/riscv32imc-unknown-none-elf/release/dpskit-firmware"
cargo test --features firmware-e2e --test firmware_qemu --no-run
# Inside the namespace cargo must not reach for the network; everything is built above.
exec unshare --net -- sh -c 'ip link set lo up && exec cargo test --offline --features firmware-e2e --test firmware_qemu -- --test-threads=1'
