//! The real espflash library against virtual boards over real pseudo-terminals: ROM and stub
//! connections, device info, eFuse decoding, security info, writes, MD5, reads, and faults.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

use std::path::Path;
use std::time::{Duration, Instant};

use dpskit_rehearsal::sim::efuse::format_mac;
use dpskit_rehearsal::sim::protocol::op;
use dpskit_rehearsal::sim::{
    spawn_batch, BoardState, ChipKind, CorruptReply, EfuseProfile, EmbeddedFlash, Faults,
    FlashVendor, PsramSize, PsramVendor, ResetBehaviour, Revision, Security, SimBoardConfig,
    VirtualBoard,
};
use espflash::command::Command;
use espflash::connection::{Connection, ResetAfterOperation, ResetBeforeOperation};
use espflash::flasher::{FlashSize, Flasher};
use espflash::target::efuse::esp32s3;
use espflash::target::{Chip, ProgressCallbacks};
use md5::{Digest, Md5};
use serialport::{FlowControl, UsbPortInfo};

/// `dps_cfg` in templates/partitions.csv (asserted against the generated table below).
const DPS_CFG: u32 = 0x12000;

/// A CP210x bridge: espflash picks the classic reset strategies, which NoReset never runs.
fn uart_bridge() -> UsbPortInfo {
    UsbPortInfo {
        vid: 0x10c4,
        pid: 0xea60,
        serial_number: None,
        manufacturer: None,
        product: None,
    }
}

/// The S3's own USB-Serial/JTAG: espflash also disables the RTC watchdog before flashing.
fn usb_jtag() -> UsbPortInfo {
    UsbPortInfo {
        vid: 0x303a,
        pid: 0x1001,
        serial_number: None,
        manufacturer: None,
        product: None,
    }
}

fn open_connection(path: &Path, info: UsbPortInfo, stub: bool) -> Connection {
    let port = serialport::new(path.to_str().unwrap(), 115_200)
        .flow_control(FlowControl::None)
        .timeout(Duration::from_secs(1))
        .open_native()
        .expect("open pty");
    let after = if stub {
        ResetAfterOperation::NoResetNoStub
    } else {
        ResetAfterOperation::NoReset
    };
    Connection::new(port, info, after, ResetBeforeOperation::NoReset, 115_200)
}

fn connect(board: &VirtualBoard, stub: bool) -> Flasher {
    connect_with(board, uart_bridge(), stub)
}

fn connect_with(board: &VirtualBoard, info: UsbPortInfo, stub: bool) -> Flasher {
    let conn = open_connection(board.pty_path(), info, stub);
    Flasher::connect(conn, stub, true, false, Some(Chip::Esp32s3), None).expect("connect")
}

fn board(profile: EfuseProfile) -> VirtualBoard {
    VirtualBoard::spawn(SimBoardConfig {
        profile,
        ..Default::default()
    })
    .expect("spawn board")
}

/// 24 KiB that look like an NVS image: a few bytes of content, the rest erased.
fn nvs_like_image() -> Vec<u8> {
    let mut v = vec![0xFFu8; 0x6000];
    for (i, b) in v.iter_mut().take(0x700).enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0];
    }
    v
}

#[derive(Default)]
struct Progress {
    total: usize,
    last: usize,
    verified: bool,
    finished: bool,
}

impl ProgressCallbacks for Progress {
    fn init(&mut self, _addr: u32, total: usize) {
        self.total = total;
    }
    fn update(&mut self, current: usize) {
        self.last = current;
    }
    fn verifying(&mut self) {
        self.verified = true;
    }
    fn finish(&mut self, _skipped: bool) {
        self.finished = true;
    }
}

fn md5_u128(data: &[u8]) -> u128 {
    u128::from_be_bytes(Md5::digest(data).into())
}

#[test]
fn rom_device_info_matches_profile() {
    let b = VirtualBoard::spawn(
        SimBoardConfig {
            profile: EfuseProfile {
                mac: [0x34, 0x85, 0x18, 0xAA, 0xBB, 0xCC],
                revision: Revision { major: 0, minor: 2 },
                ..Default::default()
            },
            ..Default::default()
        }
        .with_flash_size(16 << 20)
        .unwrap(),
    )
    .unwrap();
    let mut f = connect(&b, false);
    let info = f.device_info().unwrap();
    assert_eq!(info.chip, Chip::Esp32s3);
    assert_eq!(info.revision, Some((0, 2)));
    assert_eq!(info.flash_size, FlashSize::_16Mb);
    assert_eq!(info.mac_address.as_deref(), Some("34:85:18:aa:bb:cc"));
    assert_eq!(info.features, vec!["WiFi", "BLE", "Embedded Flash"]);

    let si = f.security_info().unwrap();
    assert_eq!(si.chip_id, Some(9));
    assert_eq!(si.flags, 0);
    assert_eq!(si.flash_crypt_cnt, 0);
    assert_eq!(b.state(), BoardState::Rom);
}

#[test]
fn rom_revision_quirks_follow_the_efuses() {
    // v1.3 with BLK_VERSION 1.3: plain decoding.
    let b = board(EfuseProfile {
        revision: Revision { major: 1, minor: 3 },
        blk_version: (1, 3),
        ..Default::default()
    });
    assert_eq!(
        connect(&b, false).device_info().unwrap().revision,
        Some((1, 3))
    );
    // BLK_VERSION 1.1 is espflash's "ECO0" rule: major forced to 0, feature "Embedded PSRAM".
    let b = board(EfuseProfile {
        revision: Revision { major: 1, minor: 0 },
        blk_version: (1, 1),
        ..Default::default()
    });
    let info = connect(&b, false).device_info().unwrap();
    assert_eq!(info.revision, Some((0, 0)));
    assert!(info.features.iter().any(|f| f == "Embedded PSRAM"));
}

#[test]
fn psram_and_flash_efuse_fields_decode_per_profile() {
    let cases = [
        (PsramSize::None, PsramVendor::Ap3v3, 0u32, 0u32, 0u32),
        (PsramSize::Mb2, PsramVendor::Ap3v3, 2, 0, 1),
        (PsramSize::Mb8, PsramVendor::Ap3v3, 1, 0, 1),
        (PsramSize::Mb8, PsramVendor::Ap1v8, 1, 0, 2),
        (PsramSize::Mb16, PsramVendor::Ap1v8, 3, 0, 2),
        (PsramSize::Mb4, PsramVendor::Ap3v3, 0, 1, 1),
    ];
    for (psram, vendor, cap_lo, cap_hi, vendor_code) in cases {
        let b = board(EfuseProfile {
            psram,
            psram_vendor: vendor,
            ..Default::default()
        });
        let mut f = connect(&b, false);
        let chip = f.chip();
        let lo: u32 = chip
            .read_efuse_le(f.connection(), esp32s3::PSRAM_CAP)
            .unwrap();
        let hi: u32 = chip
            .read_efuse_le(f.connection(), esp32s3::PSRAM_CAP_3)
            .unwrap();
        let v: u32 = chip
            .read_efuse_le(f.connection(), esp32s3::PSRAM_VENDOR)
            .unwrap();
        assert_eq!(
            (lo, hi, v),
            (cap_lo, cap_hi, vendor_code),
            "{psram:?} {vendor:?}"
        );
    }

    let b = board(EfuseProfile {
        psram: PsramSize::None,
        embedded_flash: EmbeddedFlash::Mb8,
        embedded_flash_vendor: FlashVendor::Gd,
        pkg_version: 1,
        ..Default::default()
    });
    let mut f = connect(&b, false);
    let chip = f.chip();
    let cap: u32 = chip
        .read_efuse_le(f.connection(), esp32s3::FLASH_CAP)
        .unwrap();
    let vendor: u32 = chip
        .read_efuse_le(f.connection(), esp32s3::FLASH_VENDOR)
        .unwrap();
    let pkg: u32 = chip
        .read_efuse_le(f.connection(), esp32s3::PKG_VERSION)
        .unwrap();
    assert_eq!((cap, vendor, pkg), (1, 2, 1));
}

#[test]
fn security_info_reports_secure_boot_and_flash_encryption() {
    let b = board(EfuseProfile {
        security: Security {
            secure_boot: true,
            flash_encryption: true,
            ..Default::default()
        },
        ..Default::default()
    });
    let mut f = connect(&b, false);
    let si = f.security_info().unwrap();
    assert_eq!(si.flags & 1, 1, "SECURE_BOOT_EN");
    assert_eq!(si.flash_crypt_cnt, 1);
    let text = si.to_string();
    assert!(text.contains("Secure Boot: Enabled"), "{text}");
    assert!(text.contains("Flash Encryption: Enabled"), "{text}");
    let chip = f.chip();
    let sb: u32 = chip
        .read_efuse_le(f.connection(), esp32s3::SECURE_BOOT_EN)
        .unwrap();
    assert_eq!(sb, 1);
}

#[test]
fn rom_write_at_dps_cfg_verifies_and_lands_in_the_image_file() {
    let b = board(EfuseProfile::default());
    let (dps_off, dps_size) = b.layout().unwrap().dps_cfg.unwrap();
    assert_eq!((dps_off, dps_size), (DPS_CFG, 0x6000));
    let data = nvs_like_image();

    let mut f = connect(&b, false);
    // Reads and MD5 first: in ROM mode the write's FLASH_END ends the loader.
    assert_eq!(
        f.checksum_md5(dps_off, 0x6000).unwrap(),
        md5_u128(&[0xFF; 0x6000])
    );
    let mut p = Progress::default();
    f.write_bin_to_flash(dps_off, &data, &mut p).unwrap();
    assert_eq!(p.total, 24, "ROM writes 1 KiB blocks");
    assert_eq!(p.last, 24);
    assert!(p.verified && p.finished);
    assert_eq!(
        std::fs::read(b.flash_path()).unwrap()[dps_off as usize..][..0x6000],
        data[..]
    );
    assert_eq!(b.read_flash(dps_off, 0x6000).unwrap(), data);
    assert_eq!(b.state(), BoardState::App, "FLASH_END left download mode");
    assert!(b.stats().flash_bytes_programmed >= 0x6000);

    // The virtual jig puts the board back into download mode; a new session sees the data.
    drop(f);
    assert!(b.wait_for(BoardState::Rom, Duration::from_secs(2)));
    let mut f = connect(&b, false);
    assert_eq!(f.checksum_md5(dps_off, 0x6000).unwrap(), md5_u128(&data));
}

#[test]
fn rom_flash_end_leaves_the_loader_until_reset() {
    let b = VirtualBoard::spawn(SimBoardConfig {
        reset: ResetBehaviour {
            reenter_download_after: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let mut f = connect(&b, false);
    f.write_bin_to_flash(DPS_CFG, &[0x42; 0x1000], &mut Progress::default())
        .unwrap();
    assert_eq!(b.state(), BoardState::App);
    // Same connection: nothing answers any more.
    let conn = f.connection();
    conn.set_timeout(Duration::from_millis(200)).unwrap();
    let t = Instant::now();
    assert!(conn
        .command(Command::ReadReg {
            address: 0x4000_1000
        })
        .is_err());
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(f);
    // Still in the app after a while; a reset with BOOT held brings the loader back.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.state(), BoardState::App);
    b.reset_to_download();
    assert_eq!(b.state(), BoardState::Rom);
    let mut f = connect(&b, false);
    assert_eq!(
        f.checksum_md5(DPS_CFG, 0x1000).unwrap(),
        md5_u128(&[0x42; 0x1000])
    );
}

#[test]
fn usb_jtag_port_info_still_works_with_no_reset() {
    let b = board(EfuseProfile::default());
    let mut f = connect_with(&b, usb_jtag(), false);
    f.write_bin_to_flash(DPS_CFG, &nvs_like_image(), &mut Progress::default())
        .unwrap();
    assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), nvs_like_image());
}

#[test]
fn stub_write_md5_read_erase_and_baud() {
    let b = board(EfuseProfile::default());
    let data = nvs_like_image();
    let mut f = connect(&b, true);
    assert_eq!(b.state(), BoardState::Stub);
    assert_eq!(b.stats().stub_starts, 1);
    assert_eq!(f.security_info().unwrap().chip_id, Some(9));
    let info = f.device_info().unwrap();
    assert_eq!(info.chip, Chip::Esp32s3);
    assert_eq!(info.revision, Some((0, 2)));
    assert_eq!(info.flash_size, FlashSize::_4Mb);
    assert_eq!(info.mac_address.as_deref(), Some("34:85:18:00:00:01"));

    let mut p = Progress::default();
    f.write_bin_to_flash(DPS_CFG, &data, &mut p).unwrap();
    assert_eq!(p.total, 1, "stub: one compressed 16 KiB block");
    assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), data);
    assert_eq!(
        b.state(),
        BoardState::Stub,
        "FLASH_DEFL_END(1) keeps the stub"
    );

    // Further commands keep working on the same connection (NoResetNoStub).
    assert_eq!(f.checksum_md5(DPS_CFG, 0x6000).unwrap(), md5_u128(&data));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("read.bin");
    f.read_flash(DPS_CFG, 0x6000, 0x1000, 64, out.clone())
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);

    f.erase_region(DPS_CFG, 0x1000).unwrap();
    assert_eq!(b.read_flash(DPS_CFG, 0x1000).unwrap(), vec![0xFF; 0x1000]);
    assert_eq!(
        b.read_flash(DPS_CFG + 0x1000, 0x10).unwrap(),
        data[0x1000..0x1010]
    );

    // Incompressible data: espflash falls back to plain FLASH_BEGIN/FLASH_DATA with the stub.
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..0x2000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_bin_to_flash(DPS_CFG + 0x4000, &noise, &mut Progress::default())
        .unwrap();
    assert_eq!(b.read_flash(DPS_CFG + 0x4000, 0x2000).unwrap(), noise);
    assert_eq!(
        b.read_flash(DPS_CFG + 0x1000, 0x3000).unwrap(),
        data[0x1000..0x4000],
        "sectors before the write are untouched"
    );

    f.change_baud(921_600).unwrap();
    assert_eq!(b.baud(), 921_600);
    assert_eq!(
        f.checksum_md5(DPS_CFG + 0x4000, 0x2000).unwrap(),
        md5_u128(&noise)
    );
}

#[test]
fn rom_read_slow_with_raw_commands() {
    let b = board(EfuseProfile::default());
    let mut f = connect(&b, false);
    let expect = b.read_flash(0x8000, 0x80).unwrap();
    let mut got = Vec::new();
    for off in (0x8000..0x8080u32).step_by(64) {
        let resp: Vec<u8> = f
            .connection()
            .command(Command::ReadFlashSlow {
                offset: off,
                size: 64,
                block_size: 64,
                max_in_flight: 1,
            })
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(resp.len(), 64 + 4, "64-byte buffer + ROM status");
        got.extend_from_slice(&resp[..64]);
    }
    assert_eq!(got, expect);
    assert_eq!(&got[..2], &[0xAA, 0x50], "partition table magic");
}

#[test]
fn batch_boards_in_parallel_have_consecutive_macs() {
    let dir = tempfile::tempdir().unwrap();
    let template = SimBoardConfig {
        profile: EfuseProfile {
            mac: [0x34, 0x85, 0x18, 0x10, 0x00, 0xFE],
            ..Default::default()
        },
        ..Default::default()
    };
    let boards = spawn_batch(&template, 3, dir.path()).unwrap();
    let macs: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = boards
            .iter()
            .map(|b| {
                s.spawn(move || {
                    connect(b, false)
                        .device_info()
                        .unwrap()
                        .mac_address
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        macs,
        [
            "34:85:18:10:00:fe",
            "34:85:18:10:00:ff",
            "34:85:18:10:01:00"
        ]
    );
    for (i, b) in boards.iter().enumerate() {
        assert_eq!(b.flash_path(), dir.path().join(format!("board-{i}.bin")));
        assert_eq!(format_mac(&b.mac()), macs[i]);
    }
}

// ------------------------------------------------------------------ faults

#[test]
fn dropped_line_fails_the_write_quickly() {
    let b = board(EfuseProfile::default());
    let mut f = connect(&b, false);
    b.inject(Faults {
        drop_after_bytes: Some(5000),
        ..Default::default()
    });
    let t = Instant::now();
    let err = f
        .write_bin_to_flash(DPS_CFG, &nvs_like_image(), &mut Progress::default())
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(b.state(), BoardState::LineDropped);
    eprintln!("espflash error after line drop: {err}");
}

#[test]
fn stall_at_md5_is_a_timeout_not_a_hang() {
    let b = VirtualBoard::spawn(SimBoardConfig {
        faults: Faults {
            stall_at_command: Some(op::SPI_FLASH_MD5),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let mut f = connect(&b, false); // connecting does not use MD5
    let conn = f.connection();
    conn.set_timeout(Duration::from_millis(300)).unwrap();
    let t = Instant::now();
    let r = conn.command(Command::FlashMd5 {
        offset: DPS_CFG,
        size: 0x6000,
    });
    assert!(r.is_err());
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(b.state(), BoardState::Stalled);
}

#[test]
fn stall_after_n_commands() {
    let b = board(EfuseProfile::default());
    let mut f = connect(&b, false);
    b.inject(Faults {
        stall_after_commands: Some(1),
        ..Default::default()
    });
    let conn = f.connection();
    conn.set_timeout(Duration::from_millis(300)).unwrap();
    let rr = Command::ReadReg {
        address: 0x4000_1000,
    };
    let v: u32 = conn.command(rr).unwrap().try_into().unwrap();
    assert_eq!(v, 9);
    assert!(conn.command(rr).is_err());
    assert_eq!(b.state(), BoardState::Stalled);
    // A reset clears the hang; with the fault plan cleared the board answers again.
    b.inject(Faults::default());
    b.reset_to_download();
    drop(f);
    let mut f = connect(&b, false);
    assert!(f.device_info().is_ok());
}

#[test]
fn corrupted_md5_fails_verification() {
    for stub in [false, true] {
        let b = board(EfuseProfile::default());
        let mut f = connect(&b, stub);
        b.inject(Faults {
            corrupt_md5: true,
            ..Default::default()
        });
        let err = f
            .write_bin_to_flash(DPS_CFG, &nvs_like_image(), &mut Progress::default())
            .unwrap_err();
        assert!(
            matches!(err, espflash::Error::VerifyFailed),
            "stub={stub}: {err:?}"
        );
        // The data itself did land.
        assert_eq!(b.read_flash(DPS_CFG, 0x6000).unwrap(), nvs_like_image());
    }
}

#[test]
fn corrupted_reply_is_rejected() {
    let b = board(EfuseProfile::default());
    let mut f = connect(&b, false);
    let conn = f.connection();
    conn.set_timeout(Duration::from_millis(300)).unwrap();
    let rr = Command::ReadReg {
        address: 0x4000_1000,
    };
    // Op byte flipped: espflash does not take the reply for its command.
    b.inject(Faults {
        corrupt_reply: Some(CorruptReply { nth: 1, offset: 1 }),
        ..Default::default()
    });
    assert!(conn.command(rr).is_err());
    let v: u32 = conn.command(rr).unwrap().try_into().unwrap();
    assert_eq!(v, 9, "only the first reply was corrupted");
    // Value byte flipped: the client gets a wrong register value.
    b.inject(Faults {
        corrupt_reply: Some(CorruptReply { nth: 1, offset: 4 }),
        ..Default::default()
    });
    let v: u32 = conn.command(rr).unwrap().try_into().unwrap();
    assert_eq!(v, 9 ^ 0xFF);
}

#[test]
fn another_chip_is_refused() {
    let b = board(EfuseProfile {
        chip: ChipKind::Esp32c3,
        ..Default::default()
    });
    let conn = open_connection(b.pty_path(), uart_bridge(), false);
    let err = Flasher::connect(conn, false, true, false, Some(Chip::Esp32s3), None).unwrap_err();
    assert!(matches!(err, espflash::Error::ChipMismatch(..)), "{err:?}");
}

/// The stub's in-flight window is in bytes. espflash's `write_raw` flushes the input buffer
/// before every acknowledgement, so any window above one packet loses streamed data: dpskit must
/// call `read_flash(.., block, max_in_flight <= block)` (the CLI default of 64 is fine). The
/// same symptom was reported on hardware (esp-rs/espflash#697).
#[test]
fn stub_read_window_above_one_packet_trips_espflash() {
    let b = board(EfuseProfile::default());
    let mut f = connect(&b, true);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("read.bin");
    let t = Instant::now();
    let r = f.read_flash(0x0, 0x20000, 0x1000, 0x8000, out);
    assert!(
        matches!(r, Err(espflash::Error::CorruptData(0x1000, n)) if n < 0x1000),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

// ------------------------------------------------------------------ the CLI

/// Kills the child on drop, so a failing test leaves no simulator behind.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => continue,
            Err(e) => panic!("no line with {needle:?}: {e}"),
        }
    }
    panic!("no line with {needle:?} within 10 s")
}

#[test]
fn dpskit_sim_serves_boards_until_sigterm() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_dpskit"))
            .args([
                "sim",
                "--boards",
                "2",
                "--mac",
                "02:00:00:00:00:fe",
                "--psram",
                "2",
            ])
            .args(["--stay-in-app", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let out = lines_of(child.0.stdout.take().unwrap());
    let err = lines_of(child.0.stderr.take().unwrap());
    let first = wait_line(&out, "board 0:");
    let second = wait_line(&out, "board 1:");
    assert!(first.contains("mac 02:00:00:00:00:fe"), "{first}");
    assert!(second.contains("mac 02:00:00:00:00:ff"), "{second}");
    assert!(second.contains("PSRAM 2MB (AP_3v3)"), "{second}");
    let pty = second.split_whitespace().nth(2).unwrap().to_string();
    wait_line(&err, "download mode");

    let conn = open_connection(Path::new(&pty), uart_bridge(), false);
    let mut f = Flasher::connect(conn, false, true, false, Some(Chip::Esp32s3), None).unwrap();
    assert_eq!(
        f.device_info().unwrap().mac_address.as_deref(),
        Some("02:00:00:00:00:ff")
    );
    let chip = f.chip();
    let cap: u32 = chip
        .read_efuse_le(f.connection(), esp32s3::PSRAM_CAP)
        .unwrap();
    assert_eq!(cap, 2);
    f.write_bin_to_flash(DPS_CFG, &nvs_like_image(), &mut Progress::default())
        .unwrap();
    drop(f);

    // --stay-in-app: the board waits in the app; SIGUSR1 resets it into download mode.
    let pid = Pid::from_raw(child.0.id() as i32);
    kill(pid, Signal::SIGUSR1).unwrap();
    wait_line(&err, "reset 2 board(s)");
    let conn = open_connection(Path::new(&pty), uart_bridge(), false);
    let mut f = Flasher::connect(conn, false, true, false, Some(Chip::Esp32s3), None).unwrap();
    assert_eq!(
        f.checksum_md5(DPS_CFG, 0x6000).unwrap(),
        md5_u128(&nvs_like_image())
    );
    drop(f);

    kill(pid, Signal::SIGTERM).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < end, "dpskit sim did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
    // --dir images stay, holding what was written.
    let image = std::fs::read(dir.path().join("board-1.bin")).unwrap();
    assert_eq!(image.len(), 4 << 20);
    assert_eq!(image[DPS_CFG as usize..][..0x6000], nvs_like_image()[..]);
    assert!(dir.path().join("board-0.bin").exists());
}

#[test]
fn dpskit_sim_rejects_bad_input_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dpskit"))
        .args(["sim", "--flash-size", "2MB", "--dir"])
        .arg(&target)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("--flash-size"), "{text}");
    assert!(!target.exists(), "nothing written");
}
