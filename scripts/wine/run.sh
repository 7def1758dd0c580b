#!/usr/bin/env bash
# Cargo's runner for x86_64-pc-windows-gnu test binaries (scripts/test-windows.sh): runs them
# with Wine's 64-bit loader. The runner variable is dropped first: assert_cmd reads it and would
# otherwise start `dpskit.exe` through the Linux loader from inside the Windows program.
unset CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER
exec /usr/lib/wine/wine64 "$@"
