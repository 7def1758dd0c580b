#!/usr/bin/env bash
# A step-by-step walkthrough of the single-board commands: a throw-away enrollment group key, three devices,
# their config blobs, written to a virtual ESP32-S3 board and inspected back.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
dpskit=target/debug/dpskit
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

echo "== 3. start a virtual ESP32-S3 board (ROM download mode on a pseudo-terminal)"
$dpskit sim --boards 1 --dir "$work/boards" > "$work/sim.out" 2>&1 &
sim_pid=$!
for _ in $(seq 50); do grep -q 'download mode' "$work/sim.out" 2>/dev/null && break; sleep 0.1; done
cat "$work/sim.out"
port=$(grep -o '/dev/pts/[0-9]*' "$work/sim.out" | head -1)

echo "== 4. write the blob into the board's dps_cfg partition (MD5-verified, read back)"
$dpskit write-config --port "$port" --before no-reset --after no-reset --image "$work/sn-0001.bin"

echo "== 5. inspect the board: is it ready for Azure?"
$dpskit inspect --port "$port" --before no-reset --after no-reset --expect-scope 0ne00ABCDEF
