#!/usr/bin/env python3
"""Size and descriptor check of a built firmware ELF (no tools beyond Python needed).

Prints static RAM (.data + .bss), RAM taken by code (.rwtext, .trap), the reclaimed heap, and
the flash the app image needs; checks the app descriptor `dpskit inspect` reads. Exits 1 when
static RAM or flash is over budget or the descriptor is wrong.

usage: size-check.py [ELF] [--ram-budget BYTES] [--flash-budget BYTES]
"""
import argparse
import pathlib
import re
import struct
import sys

HERE = pathlib.Path(__file__).resolve().parent
FIRMWARE = HERE.parent
DEFAULT_ELF = FIRMWARE / "target/riscv32imac-unknown-none-elf/release/dpskit-firmware"
APP_DESC_MAGIC = 0xABCD5432
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHT_PROGBITS, SHT_NOBITS = 1, 8


def sections(data):
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        sys.exit("size-check: not a little-endian 32-bit ELF (the firmware is riscv32 or xtensa)")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)
    raw = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = raw[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    out = []
    for name_off, typ, flags, addr, off, size, *_ in raw:
        name = names[name_off:names.index(b"\0", name_off)].decode()
        out.append(dict(name=name, type=typ, flags=flags, addr=addr, off=off, size=size))
    return out


def cargo_package(field):
    text = (FIRMWARE / "Cargo.toml").read_text()
    package = text.split("[package]", 1)[1].split("\n[", 1)[0]
    return re.search(rf'^{field}\s*=\s*"([^"]+)"', package, re.M).group(1)


def partition_size(label):
    """Size of a partition in templates/partitions.csv (the app slots)."""
    csv = (FIRMWARE.parent / "templates/partitions.csv").read_text()
    for line in csv.splitlines():
        cols = [c.strip() for c in line.split("#")[0].split(",")]
        if cols and cols[0] == label:
            return int(cols[4], 0)
    sys.exit(f"size-check: no partition {label!r} in templates/partitions.csv")


def cstr(b):
    return b.split(b"\0", 1)[0].decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("elf", nargs="?", default=str(DEFAULT_ELF))
    ap.add_argument("--ram-budget", type=int, default=96 * 1024,
                    help="static RAM (.data + .bss) budget in bytes (default 96 KiB)")
    ap.add_argument("--flash-budget", type=int, default=None,
                    help="app image budget in bytes (default: the ota_0 partition)")
    a = ap.parse_args()
    path = pathlib.Path(a.elf)
    if not path.is_file():
        sys.exit(f"size-check: {path} not found; build it first (see firmware/README.md)")
    data = path.read_bytes()
    secs = [s for s in sections(data) if s["flags"] & SHF_ALLOC and s["size"]]

    def total(pred):
        return sum(s["size"] for s in secs if pred(s))

    is_data = lambda s: s["name"].startswith(".data")
    is_bss = lambda s: s["name"].startswith(".bss")
    data_b, bss_b = total(is_data), total(is_bss)
    static_ram = data_b + bss_b
    ram_code = total(lambda s: s["name"].startswith((".rwtext", ".trap", ".iram")))
    reclaimed = total(lambda s: s["name"] == ".dram2_uninit")
    # What the image carries: every allocated section with contents (code and rodata run
    # from flash; .data and RAM code are copied out of it at boot).
    in_image = [s for s in secs if s["type"] == SHT_PROGBITS]
    flash = sum(s["size"] for s in in_image)
    # esp_image_header (24) + a segment header (8) per section + checksum/SHA-256 padding (48).
    image = flash + 24 + 8 * len(in_image) + 48
    flash_budget = a.flash_budget or partition_size("ota_0")

    print(f"firmware ELF: {path}")
    for s in secs:
        print(f"  {s['name']:<22} {s['size']:>9,} B  @ {s['addr']:#010x}")
    print(f"static RAM (.data + .bss): {static_ram:,} B = {static_ram / 1024:.1f} KiB "
          f"(.data {data_b:,}, .bss {bss_b:,}; budget {a.ram_budget / 1024:.0f} KiB)")
    print(f"RAM for code (.rwtext, .trap): {ram_code:,} B; reclaimed bootloader RAM used as heap: {reclaimed:,} B")
    print(f"flash (app image contents): {flash:,} B = {flash / 1024:.1f} KiB; "
          f"image ~{image:,} B of {flash_budget:,} B (ota_0), {100 * image / flash_budget:.1f} %")

    failures = []
    if static_ram > a.ram_budget:
        failures.append(f"static RAM {static_ram:,} B is over the budget of {a.ram_budget:,} B")
    if image > flash_budget:
        failures.append(f"app image ~{image:,} B does not fit ota_0 ({flash_budget:,} B)")

    desc = next((s for s in secs if s["name"] == ".flash.appdesc"), None)
    if desc is None or desc["size"] < 256:
        failures.append("no .flash.appdesc section: esp_app_desc!() is missing; espflash refuses such an ELF")
    else:
        d = data[desc["off"]:desc["off"] + 256]
        magic, = struct.unpack_from("<I", d, 0)
        version, project = cstr(d[0x10:0x30]), cstr(d[0x30:0x50])
        print(f"app descriptor: project {project!r}, version {version!r}, "
              f"built {cstr(d[0x60:0x70])} {cstr(d[0x50:0x60])}, idf_ver {cstr(d[0x70:0x90])!r}")
        want = (cargo_package("name"), cargo_package("version"))
        if magic != APP_DESC_MAGIC:
            failures.append(f"app descriptor magic {magic:#x}, expected {APP_DESC_MAGIC:#x}")
        if (project, version) != want:
            failures.append(f"app descriptor says {project} {version}, Cargo.toml {want[0]} {want[1]}")
        # The descriptor must open the first flash-data segment (image offset 0x20), where
        # the bootloader and `dpskit inspect` look for it.
        first_drom = min((s for s in in_image if not s["flags"] & SHF_EXECINSTR
                          and not s["flags"] & SHF_WRITE and s["addr"] >= 0x3C000000),
                         key=lambda s: s["addr"], default=None)
        if first_drom is not None and first_drom["name"] != ".flash.appdesc":
            failures.append(f"{first_drom['name']} precedes the descriptor in flash data")

    for f in failures:
        print(f"size-check: FAIL: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print("size-check: ok")


if __name__ == "__main__":
    main()
