//! The chip driven directly: bytes in, frames out.

use super::rom::SYNC_PAYLOAD_HEAD;
use super::*;
use crate::sim::efuse::{ChipKind, Security};
use crate::sim::flash::MemFlash;
use md5::{Digest, Md5};
use std::io::Write;

fn device() -> VirtualChip {
    device_with(EfuseProfile::default(), Faults::default())
}

fn device_with(profile: EfuseProfile, faults: Faults) -> VirtualChip {
    let cfg = ChipProfile {
        profile,
        jedec_id: [0xEF, 0x40, 0x16],
        reset: ResetBehaviour {
            banner: false,
            ..Default::default()
        },
        faults,
        timing: None,
    };
    VirtualChip::new(cfg, Box::new(MemFlash::erased(4 << 20)))
}

fn cmd(op: u8, data: &[u8], chk: u32) -> Vec<u8> {
    let mut p = vec![0, op];
    p.extend_from_slice(&(data.len() as u16).to_le_bytes());
    p.extend_from_slice(&chk.to_le_bytes());
    p.extend_from_slice(data);
    slip::encode(&p)
}

fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn data_cmd(op: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut d = words(&[payload.len() as u32, seq, 0, 0]);
    d.extend_from_slice(payload);
    cmd(op, &d, u32::from(checksum(payload)))
}

/// Sends bytes, returns the decoded frames that came back.
fn exchange(d: &mut VirtualChip, bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut dec = slip::Decoder::new();
    let mut frames = Vec::new();
    for o in d.feed(bytes, Instant::now()) {
        if let Output::Send(b) = o {
            frames.extend(dec.feed(&b));
        }
    }
    frames
}

fn one(d: &mut VirtualChip, bytes: &[u8]) -> Vec<u8> {
    let mut f = exchange(d, bytes);
    assert_eq!(f.len(), 1, "expected one reply, got {f:02x?}");
    f.remove(0)
}

fn value(r: &[u8]) -> u32 {
    u32::from_le_bytes(r[4..8].try_into().unwrap())
}

fn sync_payload() -> Vec<u8> {
    let mut s = SYNC_PAYLOAD_HEAD.to_vec();
    s.extend([0x55; 32]);
    s
}

#[test]
fn checksum_is_xor_seeded_with_ef() {
    assert_eq!(checksum(&[]), 0xEF);
    assert_eq!(checksum(&[0xEF]), 0x00);
    assert_eq!(checksum(&[0x01, 0x02, 0x04]), 0xEF ^ 0x07);
}

#[test]
fn rom_sync_answers_eight_times_with_nonzero_value() {
    let mut d = device();
    let replies = exchange(&mut d, &cmd(op::SYNC, &sync_payload(), 0));
    assert_eq!(replies.len(), 8);
    for r in replies {
        assert_eq!(&r[..4], &[0x01, op::SYNC, 4, 0]);
        assert_ne!(value(&r), 0);
        assert_eq!(&r[8..], &[0, 0, 0, 0]);
    }
}

#[test]
fn read_reg_efuse_magic_and_security_info() {
    let mut d = device();
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
    assert_eq!(r.len(), 12);
    assert_eq!(value(&r), 9);
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x6000_7044]), 0));
    assert_eq!(value(&r), 0x1800_0001);
    let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
    assert_eq!(r.len(), 8 + 20 + 4);
    assert_eq!(u16::from_le_bytes([r[2], r[3]]), 24);
    assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 9);
}

#[test]
fn jedec_probe_through_spi_registers() {
    let mut d = device();
    let wr = |a: u32, v: u32| cmd(op::WRITE_REG, &words(&[a, v, 0xFFFF_FFFF, 0]), 0);
    one(&mut d, &wr(reg::SPI_USR, 0x9000_0000));
    one(&mut d, &wr(reg::SPI_USR2, 0x7000_009F));
    one(&mut d, &wr(reg::SPI_MISO_DLEN, 23));
    one(&mut d, &wr(reg::SPI_W0, 0));
    one(&mut d, &wr(reg::SPI_CMD, reg::SPI_CMD_USR));
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[reg::SPI_CMD]), 0));
    assert_eq!(value(&r) & reg::SPI_CMD_USR, 0, "busy bit clears");
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[reg::SPI_W0]), 0));
    assert_eq!(value(&r), 0x16_40EF);
}

#[test]
fn write_reg_honours_mask() {
    let mut d = device();
    one(
        &mut d,
        &cmd(
            op::WRITE_REG,
            &words(&[0x6000_8000, 0xFFFF_FFFF, 0x0000_00F0, 0]),
            0,
        ),
    );
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x6000_8000]), 0));
    assert_eq!(value(&r), 0xF0);
}

#[test]
fn rom_flash_write_erases_checks_and_persists() {
    let mut d = device();
    d.flash_mut().program(0x11000, &[0x00; 16]).unwrap();
    let r = one(
        &mut d,
        &cmd(op::FLASH_BEGIN, &words(&[0x2000, 2, 0x400, 0x11000, 0]), 0),
    );
    assert_eq!(&r[8..], &[0, 0, 0, 0]);
    assert_eq!(
        d.flash_mut().read_vec(0x11000, 16).unwrap(),
        vec![0xFF; 16],
        "erased at begin"
    );

    let block: Vec<u8> = (0..0x400u32).map(|i| (i * 7) as u8).collect();
    let r = one(&mut d, &data_cmd(op::FLASH_DATA, 0, &block));
    assert_eq!(&r[8..], &[0, 0, 0, 0]);
    // Wrong checksum: error 0x07, nothing written.
    let mut bad = data_cmd(op::FLASH_DATA, 1, &block);
    let n = bad.len();
    bad[n - 2] ^= 0x01; // flip a payload byte (not a SLIP special)
    let r = one(&mut d, &bad);
    assert_eq!(&r[8..], &[1, rom_err::INVALID_CRC, 0, 0]);
    let r = one(&mut d, &data_cmd(op::FLASH_DATA, 1, &block));
    assert_eq!(&r[8..], &[0, 0, 0, 0]);
    assert_eq!(d.flash_mut().read_vec(0x11400, 0x400).unwrap(), block);

    let r = one(
        &mut d,
        &cmd(op::SPI_FLASH_MD5, &words(&[0x11000, 0x800, 0, 0]), 0),
    );
    assert_eq!(r.len(), 44);
    let mut both = block.clone();
    both.extend(&block);
    assert_eq!(&r[8..40], hex::encode(Md5::digest(&both)).as_bytes());

    // FLASH_END: reply, then silence until the jig resets the board.
    let r = one(&mut d, &cmd(op::FLASH_END, &words(&[0]), 0));
    assert_eq!(r[1], op::FLASH_END);
    assert_eq!(d.state(), BoardState::App);
    assert!(exchange(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0)).is_empty());
    let later = Instant::now() + Duration::from_secs(1);
    d.tick(later);
    assert_eq!(d.state(), BoardState::Rom);
}

#[test]
fn rom_read_slow_returns_64_byte_buffer() {
    let mut d = device();
    d.flash_mut().program(0x1000, b"abcdef").unwrap();
    let r = one(&mut d, &cmd(op::READ_FLASH_SLOW, &words(&[0x1000, 4]), 0));
    assert_eq!(r.len(), 8 + 64 + 4);
    assert_eq!(&r[8..12], b"abcd");
    assert_eq!(&r[12..72], &[0u8; 60][..]);
    let r = one(&mut d, &cmd(op::READ_FLASH_SLOW, &words(&[0x1000, 65]), 0));
    assert_eq!(&r[8..], &[1, rom_err::READ_LENGTH, 0, 0]);
}

#[test]
fn unknown_and_stub_only_commands_in_rom() {
    let mut d = device();
    for op in [0x42u8, op::ERASE_REGION, op::READ_FLASH] {
        let r = one(&mut d, &cmd(op, &[], 0));
        assert_ne!(r[1], op, "op must not be echoed");
        assert_eq!(&r[8..10], &[1, rom_err::INVALID_MESSAGE]);
    }
}

fn upload_stub(d: &mut VirtualChip) {
    let text = vec![0x11u8; 0x30];
    one(
        d,
        &cmd(op::MEM_BEGIN, &words(&[0x30, 1, 0x1800, 0x4037_8000]), 0),
    );
    one(d, &data_cmd(op::MEM_DATA, 0, &text));
    let f = exchange(d, &cmd(op::MEM_END, &words(&[0, 0x4037_8010]), 0));
    assert_eq!(f.len(), 2);
    assert_eq!(f[1], OHAI.to_vec());
    assert_eq!(d.state(), BoardState::Stub);
}

#[test]
fn stub_upload_then_two_status_bytes_and_zero_sync() {
    let mut d = device();
    upload_stub(&mut d);
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
    assert_eq!(r.len(), 10);
    let replies = exchange(&mut d, &cmd(op::SYNC, &sync_payload(), 0));
    assert_eq!(replies.len(), 8);
    assert!(replies.iter().all(|r| value(r) == 0 && r.len() == 10));
    let r = one(&mut d, &cmd(op::SPI_ATTACH, &[0; 8], 0));
    assert_eq!(&r[8..], &[stub_err::BAD_DATA_LEN, 0]);
    let r = one(&mut d, &cmd(0x42, &[], 0));
    assert_eq!((r[1], r[8]), (0x42, stub_err::CMD_NOT_IMPLEMENTED));
}

#[test]
fn mem_end_into_nowhere_crashes() {
    let mut d = device();
    one(
        &mut d,
        &cmd(op::MEM_BEGIN, &words(&[4, 1, 0x1800, 0x4037_8000]), 0),
    );
    one(&mut d, &data_cmd(op::MEM_DATA, 0, &[1, 2, 3, 4]));
    one(&mut d, &cmd(op::MEM_END, &words(&[0, 0x4000_0000]), 0));
    assert_eq!(d.state(), BoardState::Crashed);
    d.reset_to_download();
    assert_eq!(d.state(), BoardState::Rom);
}

#[test]
fn stub_deflate_write_read_flash_and_reboot() {
    let mut d = device();
    upload_stub(&mut d);
    let data: Vec<u8> = (0..0x6000u32).map(|i| (i % 251) as u8).collect();
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data).unwrap();
    let z = enc.finish().unwrap();
    d.flash_mut().program(0x11000, &[0u8; 0x7000]).unwrap();
    let r = one(
        &mut d,
        &cmd(
            op::FLASH_DEFL_BEGIN,
            &words(&[0x6000, 1, 0x4000, 0x11000]),
            0,
        ),
    );
    assert_eq!(&r[8..], &[0, 0]);
    let r = one(&mut d, &data_cmd(op::FLASH_DEFL_DATA, 0, &z));
    assert_eq!(&r[8..], &[0, 0]);
    assert_eq!(d.flash_mut().read_vec(0x11000, 0x6000).unwrap(), data);
    assert_eq!(
        d.flash_mut().read_vec(0x17000, 4).unwrap(),
        vec![0; 4],
        "no erase past the region"
    );

    let r = one(
        &mut d,
        &cmd(op::SPI_FLASH_MD5, &words(&[0x11000, 0x6000, 0, 0]), 0),
    );
    assert_eq!(r.len(), 26);
    assert_eq!(&r[8..24], Md5::digest(&data).as_slice());

    // READ_FLASH: window of 64 bytes means one 4 KiB packet per ack.
    let f = exchange(
        &mut d,
        &cmd(op::READ_FLASH, &words(&[0x11000, 0x2000, 0x1000, 64]), 0),
    );
    assert_eq!(f.len(), 2, "reply + first packet");
    assert_eq!(f[1], data[..0x1000]);
    let f = exchange(&mut d, &slip::encode(&0x1000u32.to_le_bytes()));
    assert_eq!(f, vec![data[0x1000..0x2000].to_vec()]);
    let f = exchange(&mut d, &slip::encode(&0x2000u32.to_le_bytes()));
    assert_eq!(f, vec![Md5::digest(&data[..0x2000]).to_vec()]);

    let r = one(&mut d, &cmd(op::FLASH_DEFL_END, &words(&[1]), 0));
    assert_eq!(&r[8..], &[0, 0]);
    assert_eq!(
        d.state(),
        BoardState::Stub,
        "FLASH_DEFL_END(1) keeps the stub"
    );
    one(&mut d, &cmd(op::FLASH_BEGIN, &words(&[0, 0, 0x400, 0]), 0));
    one(&mut d, &cmd(op::FLASH_END, &words(&[0]), 0));
    assert_eq!(d.state(), BoardState::Rebooting);
    d.tick(Instant::now() + Duration::from_secs(1));
    assert_eq!(d.state(), BoardState::Rom);
}

#[test]
fn stub_flash_end_before_all_data_is_an_error() {
    let mut d = device();
    upload_stub(&mut d);
    one(
        &mut d,
        &cmd(op::FLASH_BEGIN, &words(&[0x1000, 1, 0x4000, 0x20000]), 0),
    );
    let r = one(&mut d, &cmd(op::FLASH_END, &words(&[1]), 0));
    assert_eq!(&r[8..], &[stub_err::NOT_ENOUGH_DATA, 0]);
}

#[test]
fn faults_stall_corrupt_and_drop() {
    let rr = cmd(op::READ_REG, &words(&[0x4000_1000]), 0);
    let mut d = device_with(
        EfuseProfile::default(),
        Faults {
            stall_after_commands: Some(2),
            ..Default::default()
        },
    );
    one(&mut d, &rr);
    one(&mut d, &rr);
    assert!(exchange(&mut d, &rr).is_empty());
    assert_eq!(d.state(), BoardState::Stalled);

    let mut d = device_with(
        EfuseProfile::default(),
        Faults {
            stall_at_command: Some(op::SPI_FLASH_MD5),
            ..Default::default()
        },
    );
    one(&mut d, &rr);
    assert!(exchange(&mut d, &cmd(op::SPI_FLASH_MD5, &words(&[0, 16, 0, 0]), 0)).is_empty());
    assert!(exchange(&mut d, &rr).is_empty());

    let mut d = device_with(
        EfuseProfile::default(),
        Faults {
            corrupt_reply: Some(CorruptReply { nth: 2, offset: 4 }),
            corrupt_md5: true,
            ..Default::default()
        },
    );
    assert_eq!(value(&one(&mut d, &rr)), 9);
    assert_eq!(value(&one(&mut d, &rr)), 9 ^ 0xFF);
    assert_eq!(value(&one(&mut d, &rr)), 9);
    let r = one(&mut d, &cmd(op::SPI_FLASH_MD5, &words(&[0, 16, 0, 0]), 0));
    let good = hex::encode(Md5::digest([0xFFu8; 16]));
    let got = std::str::from_utf8(&r[8..40]).unwrap();
    assert_ne!(got, good);
    assert!(got.chars().all(|c| c.is_ascii_hexdigit()));

    let mut d = device_with(
        EfuseProfile::default(),
        Faults {
            drop_after_bytes: Some(5),
            ..Default::default()
        },
    );
    let out = d.feed(&rr, Instant::now());
    assert_eq!(out, vec![Output::DropLine]);
    assert_eq!(d.state(), BoardState::LineDropped);
}

#[test]
fn impersonation_and_secure_download_mode() {
    let mut d = device_with(
        EfuseProfile {
            chip: ChipKind::Esp32c3,
            ..Default::default()
        },
        Faults::default(),
    );
    let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
    assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 5);
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
    assert_eq!(value(&r), 0x1B31_506F);

    let mut d = device_with(
        EfuseProfile {
            security: Security {
                secure_download: true,
                ..Default::default()
            },
            ..Default::default()
        },
        Faults::default(),
    );
    let r = one(&mut d, &cmd(op::READ_REG, &words(&[0x4000_1000]), 0));
    assert_ne!(r[1], op::READ_REG);
    let r = one(&mut d, &cmd(op::GET_SECURITY_INFO, &[], 0));
    assert_eq!(u32::from_le_bytes(r[8..12].try_into().unwrap()) & 4, 4);
}

#[test]
fn change_baud_replies_first_then_switches() {
    let mut d = device();
    let out = d.feed(
        &cmd(op::CHANGE_BAUDRATE, &words(&[921_600, 0]), 0),
        Instant::now(),
    );
    assert!(matches!(out[0], Output::Send(_)));
    assert_eq!(out[1], Output::SetBaud(921_600));
    assert_eq!(d.baud(), 921_600);
}

#[test]
fn opcode_names_parse() {
    assert_eq!(op::parse("FLASH_DATA").unwrap(), 0x03);
    assert_eq!(op::parse("spi-flash-md5").unwrap(), 0x13);
    assert_eq!(op::parse("0xd2").unwrap(), 0xD2);
    assert!(op::parse("nope").is_err());
    assert_eq!(op::name(0x0A), "READ_REG");
}
