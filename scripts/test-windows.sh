#!/usr/bin/env bash
# The Windows stage: cross-compile dpskit for x86_64-pc-windows-gnu and run the Windows test
# binaries of everything that needs no pseudo-terminal under Wine (64-bit loader directly).
# Needs what scripts/setup-windows.sh installs; FAILS (never skips) when any of it is missing.
#
# What runs as Windows programs: dpskit-factory's unit tests (keys and key sources, config
# images and root CAs, station-file validation, port discovery, the SQLite ledger), the
# emulator's unit tests, and the CLI tests for derive / verify (PowerShell's UTF-16 CSVs) /
# sas, config build / show, the emulator with virtual devices and `dpskit cloud`, the device
# commands, and the portable checks (ports, admin token, the Unix-only notice).
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-pc-windows-gnu
wine=/usr/lib/wine/wine64

fail() { echo "test-windows: $*; run scripts/setup-windows.sh" >&2; exit 1; }
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || fail "x86_64-w64-mingw32-gcc (gcc-mingw-w64-x86-64) is missing"
[ -x "$wine" ] || fail "$wine (wine64) is missing"
rustup target list --installed | grep -qx "$target" || fail "the Rust target $target is missing"

# A throw-away Wine prefix inside target/, created once (~10 s), with the test-only
# bcryptprimitives.dll shim (see scripts/wine/bcryptprimitives-shim.c) in its system32.
export WINEPREFIX="$PWD/target/wine-prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  "$wine" wineboot --init >/dev/null 2>&1 || true
  "$wine" wineserver -w 2>/dev/null || /usr/lib/wine/wineserver -w || true
fi
[ -d "$WINEPREFIX/drive_c/windows/system32" ] || fail "the Wine prefix $WINEPREFIX was not created"
x86_64-w64-mingw32-gcc -shared -O2 -o "$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll" \
  scripts/wine/bcryptprimitives-shim.c -ladvapi32

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/scripts/wine/run.sh"

start=$(date +%s)
# The product builds on its own, without the rehearsal tools, and so does the factory-only CLI.
cargo build --target "$target" -p dpskit-factory
cargo build --target "$target" --bin dpskit --no-default-features
# Then the tests, as Windows programs.
cargo test --target "$target" -p dpskit-factory --lib
cargo test --target "$target" -p dpskit-rehearsal --lib
cargo test --target "$target" -p dpskit \
  --test keys_cli --test config_build --test emulator_happy --test device_e2e \
  --test device_cli --test portable_cli
echo "test-windows: Windows stage passed in $(( $(date +%s) - start )) s (plus Wine prefix set-up)"
