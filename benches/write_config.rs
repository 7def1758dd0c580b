//! Time per board for `write-config` (connect → write → MD5 verified → read back → reset) on a
//! virtual ESP32-S3, with espflash's flasher stub and against the ROM loader directly; once at
//! CPU speed (dpskit's own cost) and once with the line paced like a real UART (115200 baud to
//! connect, then 921600), which is what decides the default on real boards.
use criterion::{criterion_group, criterion_main, Criterion};
use dpskit_core::config::DEFAULT_DPS_HOST;
use dpskit_core::{DeviceConfig, GroupKey, IdScope, RegistrationId};
use dpskit_factory::board::inspect::ConfigState;
use dpskit_factory::board::{write, After, Before, BoardLink, LinkOptions};
use dpskit_rehearsal::sim::{ResetBehaviour, SimBoardConfig, VirtualBoard};
use espflash::target::{Chip, DefaultProgressCallback};
use std::time::Duration;

fn image() -> Vec<u8> {
    let group = GroupKey::parse(&format!("{}==", "A".repeat(86)), "bench key").unwrap();
    let bundle = dpskit_factory::blob::roots::assemble(
        &dpskit_factory::blob::roots::RootSource::defaults(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let cfg = DeviceConfig {
        id_scope: IdScope::parse("0ne00ABCDEF").unwrap().0,
        registration_id: RegistrationId::parse("sn-0001", false).unwrap(),
        device_key: group.derive("sn-0001"),
        root_ca_pem: bundle.pem,
        dps_host: DEFAULT_DPS_HOST.into(),
        wifi_ssid: None,
        wifi_password: None,
        ntp_server: None,
        token_ttl_secs: None,
    };
    dpskit_factory::blob::nvs::build_image(&cfg, 0x6000).unwrap()
}

fn per_board(c: &mut Criterion) {
    let image = image();
    let mut g = c.benchmark_group("write_config_per_board");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (name, use_stub, paced) in [
        ("stub", true, false),
        ("rom", false, false),
        ("stub_line_rate_921600", true, true),
        ("rom_line_rate_921600", false, true),
    ] {
        let board = VirtualBoard::spawn(SimBoardConfig {
            reset: ResetBehaviour {
                reenter_download_after: Some(Duration::from_millis(1)),
                ..ResetBehaviour::default()
            },
            line_rate: paced,
            ..SimBoardConfig::default()
        })
        .unwrap();
        let opts = LinkOptions {
            port: board.pty_path().display().to_string(),
            baud: paced.then_some(921_600),
            before: Before::NoReset,
            after: After::NoReset,
            use_stub,
            chip: Some(Chip::Esp32s3),
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                // The ROM loader leaves download mode after a write; wait for the jig.
                std::thread::sleep(Duration::from_millis(5));
                let mut link = BoardLink::open(&opts).unwrap();
                let out = write::write_config(
                    &mut link,
                    0x8000,
                    "dps_cfg",
                    &image,
                    write::Proof::ReadBack,
                    &mut DefaultProgressCallback,
                )
                .unwrap();
                assert!(matches!(out.read_back, ConfigState::Present { .. }));
                link.finish().unwrap();
            })
        });
    }
    g.finish();
}

criterion_group!(benches, per_board);
criterion_main!(benches);
