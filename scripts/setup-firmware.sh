#!/usr/bin/env bash
# What the firmware build needs beyond Rust: mbedtls-rs compiles mbedTLS from C when the
# certificate-date hook is on (cmake, clang, libclang for bindgen). Installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v clang >/dev/null 2>&1 || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target add riscv32imac-unknown-none-elf riscv32imc-unknown-none-elf >/dev/null
# Espressif's QEMU (ESP_QEMU_DIR) runs the real-ROM and firmware tests; its runtime libraries.
scripts/setup-qemu.sh
