#!/usr/bin/env bash
# Runtime libraries Espressif's QEMU (../shared/tools/esp-qemu, found through ESP_QEMU_DIR)
# needs and a fresh Debian machine lacks; the real-ROM tests and benchmark run it. Idempotent.
set -euo pipefail
missing=()
for p in libslirp0 libfdt1 libpixman-1-0 libglib2.0-0 libgcrypt20; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
