#!/usr/bin/env bash
# What the Windows stage (scripts/test-windows.sh) needs: the Rust target, Debian's mingw-w64
# cross linker and 64-bit Wine to run the Windows test binaries. Installs only what is missing.
set -euo pipefail
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || missing+=(gcc-mingw-w64-x86-64)
[ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target add x86_64-pc-windows-gnu >/dev/null
