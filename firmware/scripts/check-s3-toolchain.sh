#!/usr/bin/env bash
# Checks what the ESP32-S3 build needs before cargo starts, and says what is missing and how
# to get it, instead of failing deep inside mbedtls-rs-sys's build script.
#
# The route (the fewest extra tools): `espup install --targets esp32s3` gives the `esp` Rust
# toolchain, the Xtensa GCC (`xtensa-esp32s3-elf-gcc`, which compiles mbedTLS through the
# `use-gcc` feature) and Espressif's libclang (bindgen); `. ~/export-esp.sh` puts them on PATH
# and sets LIBCLANG_PATH. mbedtls-rs-sys also needs cmake >= 3.19 and make (or ninja).
set -uo pipefail
missing=0
say() { printf '%-28s %s\n' "$1" "$2"; }
need() { say "$1" "MISSING: $2"; missing=1; }

if rustup toolchain list 2>/dev/null | grep -q '^esp'; then
  say "esp Rust toolchain" "ok ($(rustc +esp --version 2>/dev/null))"
else
  need "esp Rust toolchain" "cargo install espup && espup install --targets esp32s3"
fi
gcc=$(command -v xtensa-esp32s3-elf-gcc || command -v xtensa-esp-elf-gcc || true)
if [ -n "$gcc" ]; then
  say "Xtensa GCC" "ok ($gcc)"
else
  need "Xtensa GCC" "installed by espup; run . ~/export-esp.sh in this shell"
fi
if [ -n "${LIBCLANG_PATH:-}" ] && ls "$LIBCLANG_PATH"/libclang* >/dev/null 2>&1; then
  say "libclang (bindgen)" "ok ($LIBCLANG_PATH)"
else
  need "libclang (bindgen)" "LIBCLANG_PATH must point at espup's esp-clang/lib; run . ~/export-esp.sh"
fi
if command -v cmake >/dev/null; then
  v=$(cmake --version | head -1 | awk '{print $3}')
  if printf '3.19\n%s\n' "$v" | sort -V -C; then say "cmake >= 3.19" "ok ($v)"
  else need "cmake >= 3.19" "found $v; install a newer cmake (pip install cmake)"; fi
else
  need "cmake >= 3.19" "apt-get install cmake (Debian/Ubuntu), brew install cmake, or pip install cmake"
fi
if command -v make >/dev/null || command -v ninja >/dev/null; then
  say "make or ninja" "ok"
else
  need "make or ninja" "apt-get install make (or ninja-build)"
fi
command -v rustfmt >/dev/null && say "rustfmt" "ok" || need "rustfmt" "rustup component add rustfmt"
if command -v espflash >/dev/null; then say "espflash (to flash)" "ok"
else say "espflash (to flash)" "not found (cargo install espflash); or write a full image with dpskit image"; fi

if [ "$missing" = 0 ]; then
  echo
  echo "ready: cargo +esp build --release --target xtensa-esp32s3-none-elf --features esp32s3"
fi
exit "$missing"
