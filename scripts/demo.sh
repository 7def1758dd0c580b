#!/usr/bin/env bash
# The main job on its embedded default: a throw-away enrollment group key, three devices,
# their config blobs, written to a virtual ESP32-S3 board and inspected back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release
dpskit=target/release/dpskit
work=$(mktemp -d)
sim_pid=
cleanup() { [ -n "$sim_pid" ] && kill "$sim_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# A demo group key (random, never a real one), kept in a 0600 file as a real one should be.
(umask 077; head -c 64 /dev/urandom | base64 -w0 > "$work/group.key")

echo "== 1. derive per-device keys (masked in the table)"
$dpskit derive --group-key-file "$work/group.key" --range 'sn-{0001..0003}'

echo "== 2. build sn-0001's config blob (an NVS partition image)"
$dpskit config build --group-key-file "$work/group.key" --id-scope 0ne00ABCDEF \
    --registration-id sn-0001 -o "$work/sn-0001.bin"
$dpskit config show "$work/sn-0001.bin"
