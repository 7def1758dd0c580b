//! The firmware's NVS side, run on the host: the esp-nvs driver the board uses, over an
//! in-memory flash holding real images (one written by the dpskit CLI, others generated the
//! same way as the CLI does).

use dpskit_core::config::{self, keys};
use dpskit_core::key::GroupKey;
use dpskit_core::{Action, Assignment, Event};
use dpskit_device::{AppSettings, DeviceApp};
use dpskit_firmware_glue::partitions::{DPS_CFG_OFFSET, DPS_CFG_SIZE, NVS_OFFSET, NVS_SIZE};
use dpskit_firmware_glue::store::{
    self, load_assignment, open_config_partition, read_config, store_assignment, ConfigReadError,
    StoredAssignment,
};
use esp_nvs::mem_flash::MemFlash;
use esp_nvs::Nvs;
use esp_nvs_partition_tool::{DataValue, NvsEntry, NvsPartition};

/// The throw-away group key the CLI image was made with (tests/data/README.md).
const TEST_GROUP_KEY: &str =
    "dGVzdC1vbmx5LWdyb3VwLWtleS1mb3ItZmlybXdhcmUtZ2x1ZS10ZXN0cy0wMDAwMDAwMDAwMDAwMA==";
const CLI_IMAGE: &[u8] = include_bytes!("data/bench-board-007.dps_cfg.bin");

/// A flash chip large enough for the partition table's layout, with `image` at `dps_cfg`.
fn chip_with_config(image: &[u8]) -> MemFlash {
    let mut bytes = vec![0xFF; DPS_CFG_OFFSET + DPS_CFG_SIZE];
    bytes[DPS_CFG_OFFSET..DPS_CFG_OFFSET + image.len()].copy_from_slice(image);
    MemFlash::from_bytes(bytes)
}

fn read(image: &[u8]) -> Result<dpskit_core::DeviceConfig, ConfigReadError> {
    let mut nvs = open_config_partition(chip_with_config(image), DPS_CFG_OFFSET, DPS_CFG_SIZE)?;
    read_config(&mut nvs)
}

/// Entries as the CLI writes them, with `edit` applied, as a 0x6000 image.
fn image(edit: impl FnOnce(&mut Vec<(&'static str, DataValue)>)) -> Vec<u8> {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let key = GroupKey::parse(TEST_GROUP_KEY, "group key")
        .unwrap()
        .derive("board-1");
    let mut entries = vec![
        (keys::SCHEMA, DataValue::U8(config::SCHEMA_VERSION)),
        (keys::ID_SCOPE, DataValue::String("0ne00ABCDEF".into())),
        (keys::REGISTRATION_ID, DataValue::String("board-1".into())),
        (keys::DEVICE_KEY, DataValue::String(key.to_base64())),
        (
            keys::DPS_HOST,
            DataValue::String(config::DEFAULT_DPS_HOST.into()),
        ),
        (keys::ROOT_CA, DataValue::String(pem.into())),
    ];
    edit(&mut entries);
    NvsPartition {
        entries: entries
            .into_iter()
            .map(|(k, v)| NvsEntry::new_data(config::NAMESPACE.into(), k.into(), v))
            .collect(),
    }
    .generate_partition(DPS_CFG_SIZE)
    .unwrap()
}

#[test]
fn decodes_the_image_the_cli_wrote() {
    let chip = chip_with_config(CLI_IMAGE).into_inner();
    let mut nvs = open_config_partition(
        MemFlash::from_bytes(chip.clone()),
        DPS_CFG_OFFSET,
        DPS_CFG_SIZE,
    )
    .unwrap();
    let cfg = read_config(&mut nvs).unwrap();
    assert_eq!(cfg.id_scope.as_str(), "0ne00ABCDEF");
    assert_eq!(cfg.registration_id.as_str(), "bench-board-007");
    assert_eq!(cfg.dps_host, config::DEFAULT_DPS_HOST);
    assert_eq!(cfg.wifi_ssid.as_deref(), Some("factory-floor"));
    assert_eq!(cfg.wifi_password.as_deref(), Some("factory-pass-1"));
    // The derived key, not the group key: the same HMAC the CLI ran.
    let expected = GroupKey::parse(TEST_GROUP_KEY, "group key")
        .unwrap()
        .derive("bench-board-007");
    assert!(cfg.device_key.ct_eq(&expected));
    assert_eq!(
        cfg.root_ca_pem
            .matches("-----BEGIN CERTIFICATE-----")
            .count(),
        2
    );
    // Reading changed nothing on the chip.
    assert!(
        nvs.into_inner().0.into_inner() == chip,
        "reading dps_cfg modified the flash"
    );
}

#[test]
fn an_erased_partition_says_not_provisioned() {
    let e = read(&vec![0xFF; DPS_CFG_SIZE]).unwrap_err();
    assert_eq!(e, ConfigReadError::NotProvisioned);
    let text = e.to_string();
    assert!(
        text.contains("not provisioned") && text.contains("dpskit write-config"),
        "{text}"
    );
}

#[test]
fn generated_image_round_trips_and_missing_keys_are_named() {
    let cfg = read(&image(|_| {})).unwrap();
    assert_eq!(cfg.registration_id.as_str(), "board-1");
    assert_eq!(cfg.wifi_ssid, None);

    let e = read(&image(|e| e.retain(|(k, _)| *k != keys::DEVICE_KEY))).unwrap_err();
    assert_eq!(
        e,
        ConfigReadError::Invalid(config::ConfigError::Missing(keys::DEVICE_KEY))
    );
    assert!(e.to_string().contains("device_key"), "{e}");
}

#[test]
fn the_usual_mistakes_are_explained() {
    // A SAS token pasted where the device key belongs.
    let e = read(&image(|e| {
        e.retain(|(k, _)| *k != keys::DEVICE_KEY);
        e.push((
            keys::DEVICE_KEY,
            DataValue::String("SharedAccessSignature sr=x&sig=y&se=1".into()),
        ));
    }))
    .unwrap_err();
    assert!(e.to_string().contains("SAS token"), "{e}");
    // The schema stored as a string instead of a u8.
    let e = read(&image(|e| {
        e.retain(|(k, _)| *k != keys::SCHEMA);
        e.push((keys::SCHEMA, DataValue::String("1".into())));
    }))
    .unwrap_err();
    assert_eq!(
        e,
        ConfigReadError::Invalid(config::ConfigError::WrongType(keys::SCHEMA))
    );
    // A config from a newer dpskit.
    let e = read(&image(|e| {
        e.retain(|(k, _)| *k != keys::SCHEMA);
        e.push((keys::SCHEMA, DataValue::U8(9)));
    }))
    .unwrap_err();
    assert_eq!(
        e,
        ConfigReadError::Invalid(config::ConfigError::UnsupportedSchema(9))
    );
}

#[test]
fn garbage_is_reported_and_left_alone() {
    // Not an NVS image at all: pseudo-random bytes.
    let mut x: u32 = 0x1234_5678;
    let junk: Vec<u8> = (0..DPS_CFG_SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let chip = chip_with_config(&junk).into_inner();
    let result = open_config_partition(
        MemFlash::from_bytes(chip.clone()),
        DPS_CFG_OFFSET,
        DPS_CFG_SIZE,
    )
    .and_then(|mut nvs| {
        let r = read_config(&mut nvs);
        assert!(
            nvs.into_inner().0.into_inner() == chip,
            "garbage was rewritten"
        );
        r
    });
    let e = result.unwrap_err();
    assert!(
        matches!(
            e,
            ConfigReadError::Unreadable(_) | ConfigReadError::NotProvisioned
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("dpskit write-config"), "{e}");
}

fn own_nvs(bytes: Vec<u8>) -> Nvs<MemFlash> {
    Nvs::new(NVS_OFFSET, NVS_SIZE, MemFlash::from_bytes(bytes)).unwrap()
}

#[test]
fn assignment_cache_survives_a_reboot() {
    let cfg = read(CLI_IMAGE).unwrap();
    let mut nvs = own_nvs(vec![0xFF; NVS_OFFSET + NVS_SIZE]);
    assert_eq!(load_assignment(&mut nvs), Ok(None));
    let a = StoredAssignment::new(
        &cfg,
        &Assignment {
            assigned_hub: "factory-hub.azure-devices.net".into(),
            device_id: "bench-board-007".into(),
            substatus: Some("initialAssignment".into()),
            payload: None,
            operation_id: "op".into(),
        },
    );
    store_assignment(&mut nvs, &a).unwrap();
    // "Reboot": a new driver over the same flash bytes.
    let mut nvs = own_nvs(nvs.into_inner().into_inner());
    let back = load_assignment(&mut nvs).unwrap().unwrap();
    assert_eq!(back, a);
    // It is for this config only: DeviceApp checks that with `mismatch`.
    assert_eq!(back.mismatch(&cfg), None);
    // And the app goes straight to the cached hub.
    let mut app =
        DeviceApp::new(cfg.clone(), AppSettings::new("0.1.0"), Some(back.clone())).unwrap();
    let actions = app.handle(1_800_000_000_000, Event::Start);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Connect(p) if p.host == "factory-hub.azure-devices.net")),
        "{actions:?}"
    );
    let other = read(&image(|_| {})).unwrap();
    assert!(back.mismatch(&other).is_some());
    // The cache lives in its own namespace, never the config's.
    assert_ne!(store::CACHE_NAMESPACE, config::NAMESPACE);
}

#[test]
fn an_unreadable_cache_is_reported_not_fatal() {
    let mut nvs = own_nvs(vec![0xFF; NVS_OFFSET + NVS_SIZE]);
    nvs.set::<&[u8]>(
        &esp_nvs::Key::from_str(store::CACHE_NAMESPACE),
        &esp_nvs::Key::from_str(store::ASSIGNMENT_KEY),
        b"not json".as_slice(),
    )
    .unwrap();
    let e = load_assignment(&mut nvs).unwrap_err();
    assert!(e.contains("stored assignment"), "{e}");
}
