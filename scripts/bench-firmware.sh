#!/usr/bin/env bash
# The firmware's figures: boot → first telemetry and the heap peaks in Espressif's QEMU
# (benches/firmware.rs, inside a private network namespace), and the static RAM and flash of
# the ESP32-C3 (QEMU) and ESP32-C6 (Wi-Fi) builds. Usage: scripts/bench-firmware.sh [ROUNDS]
# Needs ESP_QEMU_DIR and root, as scripts/test-firmware.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ESP_QEMU_DIR:?set ESP_QEMU_DIR to the Espressif QEMU folder (bin/, rom/)}"
ESP_QEMU_DIR=$(cd "$ESP_QEMU_DIR" && pwd); export ESP_QEMU_DIR
export FIRMWARE_BENCH_ROUNDS="${1:-5}"
(cd firmware && cargo build --release --locked --target riscv32imc-unknown-none-elf \
    --no-default-features --features esp32c3,openeth,emulated-psram \
  && cargo build --release --locked --target riscv32imac-unknown-none-elf --features esp32c6)
export DPSKIT_FIRMWARE_ELF="$PWD/firmware/target/riscv32imc-unknown-none-elf/release/dpskit-firmware"
echo "== ESP32-C3 (QEMU build: open_eth, 96 KB of RAM standing in for PSRAM)"
firmware/scripts/size-check.sh "$DPSKIT_FIRMWARE_ELF" --ram-budget 200000 | grep -E "static RAM|flash \(app"
echo "== ESP32-C6 (Wi-Fi build)"
firmware/scripts/size-check.sh | grep -E "static RAM|flash \(app"
cargo bench --features firmware-e2e --bench firmware --no-run
unshare --net -- sh -c 'ip link set lo up && exec cargo bench --offline --features firmware-e2e --bench firmware'
