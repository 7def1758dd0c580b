//! `dpskit derive`, `verify` and `sas` through the real binary: Microsoft's vectors, the
//! mistakes people make, and every bad input (non-zero exit, named field, nothing written).

use assert_cmd::Command;
use predicates::prelude::*;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

const V1_GROUP: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const V1_ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const V1_KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
const V2_GROUP: &str =
    "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";

fn dpskit() -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env_remove("DPSKIT_GROUP_KEY");
    c
}

fn with_key(key: &str) -> Command {
    let mut c = dpskit();
    c.env("DPSKIT_GROUP_KEY", key);
    c
}

#[test]
fn derive_reproduces_microsoft_vectors_from_every_key_source() {
    let out = with_key(V1_GROUP)
        .args(["derive", "--id", V1_ID, "--format", "csv"])
        .assert()
        .success();
    out.stdout(predicate::str::contains(format!("{V1_ID},{V1_KEY}")));

    let dir = TempDir::new().unwrap();
    let keyfile = dir.path().join("group.key");
    std::fs::write(&keyfile, format!("{V2_GROUP}\n")).unwrap();
    dpskit()
        .args([
            "derive",
            "--id",
            "contoso-simdevice-east",
            "--id",
            "contoso-simdevice-west",
            "--format",
            "json",
        ])
        .arg("--group-key-file")
        .arg(&keyfile)
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "p3w2DQr9WqEGBLUSlFi1jPQ7UWQL4siAGy75HFTFbf8=",
        ))
        .stdout(predicate::str::contains(
            "J5n4NY2GiBYy7Mp4lDDa5CbEe6zDU/c62rhjCuFWxnc=",
        ));

    dpskit()
        .args([
            "derive",
            "--group-key-stdin",
            "--id",
            V1_ID,
            "--format",
            "csv",
        ])
        .write_stdin(format!("{V1_GROUP}\r\n"))
        .assert()
        .success()
        .stdout(predicate::str::contains(V1_KEY));
}

#[test]
fn table_output_masks_keys_unless_asked() {
    let masked = with_key(V1_GROUP)
        .args(["derive", "--id", V1_ID])
        .assert()
        .success();
    let text = String::from_utf8(masked.get_output().stdout.clone()).unwrap();
    assert!(!text.contains(V1_KEY), "{text}");
    assert!(text.contains("Jsm0…"), "{text}");
    with_key(V1_GROUP)
        .args(["derive", "--id", V1_ID, "--show-keys"])
        .assert()
        .success()
        .stdout(predicate::str::contains(V1_KEY));
}

#[test]
fn output_file_is_private_and_never_holds_the_group_key() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("keys.json");
    let run = with_key(V1_GROUP)
        .args(["derive", "--range", "sn-{0001..0100}", "-o"])
        .arg(&out)
        .assert()
        .success();
    let all = [
        run.get_output().stdout.clone(),
        run.get_output().stderr.clone(),
    ]
    .concat();
    assert!(!String::from_utf8_lossy(&all).contains(V1_GROUP));
    #[cfg(unix)]
    {
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let keys: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 100);
    assert_eq!(keys[0]["registration_id"], "sn-0001");
    assert!(!std::fs::read_to_string(&out).unwrap().contains(V1_GROUP));
}

/// Runs a derive that must fail: exit 2, the message names `field`, and no file appears.
fn derive_refused(key: Option<&str>, args: &[&str], field: &str) {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("keys.csv");
    let mut cmd = match key {
        Some(k) => with_key(k),
        None => dpskit(),
    };
    cmd.arg("derive").args(args).arg("-o").arg(&out);
    let assert = cmd.assert().code(2);
    let err = String::from_utf8(assert.get_output().stderr.clone()).unwrap();
    assert!(err.contains(field), "expected {field:?} in: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error expected: {err}"
    );
    assert!(!out.exists(), "nothing may be written on bad input");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp files left"
    );
}

#[test]
fn bad_group_keys_are_refused() {
    derive_refused(Some("not base64!!"), &["--id", "a"], "group key");
    derive_refused(
        Some("AAECAwQFBgcICQoLDA0ODw"),
        &["--id", "a"],
        "not valid base64",
    );
    derive_refused(
        Some("AAECAwQFBgcICQoLDA0O"),
        &["--id", "a"],
        "expected 16 to 64",
    );
    let long = base64_of(65);
    derive_refused(Some(&long), &["--id", "a"], "65 bytes");
    derive_refused(
        Some("SharedAccessSignature sr=0ne%2Fregistrations%2Fa&sig=abc%3D&se=1"),
        &["--id", "a"],
        "SAS token",
    );
    derive_refused(
        Some("HostName=h.azure-devices.net;DeviceId=a;SharedAccessKey=abc="),
        &["--id", "a"],
        "connection string",
    );
    derive_refused(None, &["--id", "a"], "group key: none given");
}

fn base64_of(n: usize) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(vec![1u8; n])
}

#[test]
fn bad_registration_ids_are_refused() {
    derive_refused(Some(V1_GROUP), &["--id", ""], "registration ID: empty");
    let long = "a".repeat(129);
    derive_refused(Some(V1_GROUP), &["--id", &long], "at most 128");
    derive_refused(Some(V1_GROUP), &["--id", "dev/1"], "contains '/'");
    derive_refused(Some(V1_GROUP), &["--id", "Dev-1"], "upper-case");
    derive_refused(
        Some(V1_GROUP),
        &["--id", "dev-1", "--id", "DEV-1", "--allow-uppercase"],
        "appears twice",
    );
    derive_refused(Some(V1_GROUP), &["--range", "sn-{9..1}"], "--range");
    with_key(V1_GROUP)
        .args(["derive", "--id", "Dev-1", "--allow-uppercase"])
        .assert()
        .success();
}

#[test]
fn group_key_is_never_a_plain_argument() {
    dpskit()
        .args(["derive", "--id", "a", "--group-key", V1_GROUP])
        .assert()
        .code(2);
}

#[test]
fn verify_explains_each_known_mistake() {
    let dir = TempDir::new().unwrap();
    let csv = dir.path().join("keys.csv");
    let utf16 = "DBzRsEgMO0MerNnWeyhKIe40H5Mn2TSmjmq6YQEZxUw=";
    let newline = "9xk+A3Y29nEzASjuakJUhcmNyb4ZjibgUKRXPMBArUU=";
    let upper = "9GWVnYuoOLXlHc346XjhLRb9pKgIOrKSwxDRSOgnvXo=";
    let v2_secondary = {
        use base64::Engine;
        use hmac_free::hmac;
        let k = base64::engine::general_purpose::STANDARD
            .decode(V2_GROUP)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(hmac(&k, V1_ID.as_bytes()))
    };
    let body = format!(
        "\u{feff}#TYPE System.Management.Automation.PSCustomObject\r\n\"RegistrationId\",\"DeviceKey\"\r\n\
         \"{V1_ID}\",\"{V1_KEY}\"\r\n\
         {V1_ID}, {newline} \r\n\
         {V1_ID},{utf16}\r\n\
         {V1_ID},{upper}\r\n\
         {V1_ID},{V1_GROUP}\r\n\
         {V1_ID},\"SharedAccessSignature sr=x&sig=y&se=1\"\r\n\
         {V1_ID},{v2_secondary}\r\n"
    );
    std::fs::write(&csv, body).unwrap();
    let secondary = dir.path().join("secondary.key");
    std::fs::write(&secondary, V2_GROUP).unwrap();
    let out = with_key(V1_GROUP)
        .args(["verify", "--input"])
        .arg(&csv)
        .arg("--secondary-key-file")
        .arg(&secondary)
        .assert()
        .code(1);
    let text = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    for expected in [
        "ok        line    3",
        "trailing newline",
        "UTF-16",
        "spelled \"SN-007",
        "group primary key itself",
        "SAS token",
        "secondary key",
        "1 of 7 keys match",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert!(!text.contains(V1_GROUP));

    let good = dir.path().join("good.csv");
    std::fs::write(
        &good,
        format!("registration_id,device_key\n{V1_ID},\"{V1_KEY}\"\n"),
    )
    .unwrap();
    with_key(V1_GROUP)
        .args(["verify", "--input"])
        .arg(&good)
        .assert()
        .success();
}

#[test]
fn verify_reads_utf16_export_csv() {
    let dir = TempDir::new().unwrap();
    let csv = dir.path().join("keys.csv");
    let text = format!("\"RegistrationId\",\"DeviceKey\"\r\n\"{V1_ID}\",\"{V1_KEY}\"\r\n");
    let mut bytes = vec![0xFF, 0xFE];
    bytes.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    std::fs::write(&csv, bytes).unwrap();
    with_key(V1_GROUP)
        .args(["verify", "--input"])
        .arg(&csv)
        .assert()
        .success();
}

#[test]
fn verify_bad_input_is_exit_2() {
    let dir = TempDir::new().unwrap();
    let csv = dir.path().join("keys.csv");
    std::fs::write(&csv, "registration_id,device_key\n").unwrap();
    with_key(V1_GROUP)
        .args(["verify", "--input"])
        .arg(&csv)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no rows"));
    std::fs::write(&csv, "only-one-field\n").unwrap();
    with_key(V1_GROUP)
        .args(["verify", "--input"])
        .arg(&csv)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 1"));
    with_key(V1_GROUP)
        .args(["verify", "--input", "/nonexistent.csv"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--input"));
}

#[test]
fn sas_tokens_generate_and_inspect() {
    let dir = TempDir::new().unwrap();
    let key = dir.path().join("device.key");
    std::fs::write(&key, V1_KEY).unwrap();
    let out = dpskit()
        .args([
            "sas",
            "dps",
            "--id-scope",
            "0ne00000000",
            "--registration-id",
            V1_ID,
            "--ttl",
            "2h",
            "--device-key-file",
        ])
        .arg(&key)
        .assert()
        .success();
    let token = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    assert!(token.starts_with("SharedAccessSignature sr=0ne00000000%2Fregistrations%2Fsn-007"));
    assert!(token.trim_end().ends_with("&skn=registration"));
    // The same token from the group key + ID (derivation happens inside).
    dpskit()
        .args(["sas", "inspect", token.trim(), "--device-key-file"])
        .arg(&key)
        .assert()
        .success()
        .stdout(predicate::str::contains("valid for the given device key"))
        .stdout(predicate::str::contains("in 119 min").or(predicate::str::contains("in 2 h")));

    let hub = with_key(V1_GROUP)
        .args([
            "sas",
            "hub",
            "--hub",
            "myhub.azure-devices.net",
            "--device-id",
            V1_ID,
        ])
        .assert()
        .success();
    let hub_token = String::from_utf8(hub.get_output().stdout.clone()).unwrap();
    assert!(hub_token.contains("sr=myhub.azure-devices.net%2Fdevices%2F"));
    assert!(!hub_token.contains("skn="));

    // The docs' published hub token: expired long ago, and the key is not ours.
    let docs = "SharedAccessSignature sr=MyExampleHub.azure-devices.net%2Fdevices%2Fmy-symkey-device&sig=f%2BwW8XOKeJOtiPc9Iwjc4OpExvPM7NlhM9qxN2a1aAM%3D&se=1663119026";
    dpskit()
        .args(["sas", "inspect", docs, "--device-key-file"])
        .arg(&key)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("2022-09-14 01:30:26 UTC (EXPIRED"))
        .stdout(predicate::str::contains("INVALID"));
}

#[test]
fn sas_bad_input() {
    dpskit()
        .args([
            "sas",
            "dps",
            "--id-scope",
            "0ne00000000",
            "--registration-id",
            "a",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("signing key: none given"));
    with_key(V1_GROUP)
        .args([
            "sas",
            "dps",
            "--id-scope",
            "0ne/000",
            "--registration-id",
            "a",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("ID scope"));
    with_key(V1_GROUP)
        .args([
            "sas",
            "dps",
            "--id-scope",
            "0ne00000000",
            "--registration-id",
            "a",
            "--ttl",
            "0",
        ])
        .assert()
        .code(2);
    dpskit()
        .args(["sas", "inspect", "sr=a&sig=b&se=1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("SharedAccessSignature"));
    let dir = TempDir::new().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, V1_GROUP).unwrap();
    dpskit()
        .args([
            "sas",
            "hub",
            "--hub",
            "h.azure-devices.net",
            "--device-id",
            "a",
            "--device-key-file",
        ])
        .arg(&key)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("enrollment group key"));
}

/// A tiny HMAC-SHA256 for the secondary-key row, independent of dpskit's own code.
mod hmac_free {
    use sha2::{Digest, Sha256};
    pub fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        let mut k = [0u8; 64];
        if key.len() > 64 {
            k[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            k[..key.len()].copy_from_slice(key);
        }
        let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
        let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
        let inner = Sha256::new()
            .chain_update(&ipad)
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(&opad)
            .chain_update(inner)
            .finalize()
            .into()
    }
}

/// `sas inspect` runs the emulator's diagnosis: given the group key, a bad signature is
/// explained by the mistake that made it, not just "INVALID".
#[test]
fn sas_inspect_explains_a_bad_signature_with_the_group_key() {
    use base64::Engine;
    use dpskit_core::sas::dps_resource;
    use dpskit_core::{GroupKey, SasToken};
    let group = GroupKey::parse(V1_GROUP, "g").unwrap();
    let se = 4_102_444_800; // 2100-01-01
                            // Signed with the group key itself, as a device flashed with the wrong key does.
    let sr = dpskit_core::topic::encode_component(&dps_resource("0ne00000000", V1_ID));
    let sig = base64::engine::general_purpose::STANDARD.encode(
        group
            .derive_bytes(format!("{sr}\n{se}").as_bytes())
            .as_bytes(),
    );
    let token = format!(
        "SharedAccessSignature sr={sr}&sig={}&se={se}&skn=registration",
        dpskit_core::topic::encode_component(&sig)
    );
    with_key(V1_GROUP)
        .args(["sas", "inspect", &token])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "INVALID for the key derived from the group key: signed with the enrollment group primary key itself",
        ));
    // A key derived from the ID plus a newline (`echo` without -n), from standard input.
    let newline = group.derive(&format!("{V1_ID}\n"));
    let token = SasToken::generate(&newline, &dps_resource("0ne00000000", V1_ID), se, None);
    with_key(V1_GROUP)
        .args(["sas", "inspect", "-"])
        .write_stdin(token.to_string())
        .assert()
        .code(1)
        .stdout(predicate::str::contains("trailing newline"));
    // The right key: valid, exit 0.
    let good = SasToken::generate(
        &group.derive(V1_ID),
        &dps_resource("0ne00000000", V1_ID),
        se,
        None,
    );
    with_key(V1_GROUP)
        .args(["sas", "inspect", &good.to_string()])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "valid for the key derived from the group key",
        ));
    // The group key pasted where the token belongs is recognised, and never echoed.
    with_key(V1_GROUP)
        .args(["sas", "inspect", "-"])
        .write_stdin(V1_GROUP)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("enrollment group key itself"))
        .stderr(predicate::str::contains(&V1_GROUP[..12]).not());
    // Both read standard input: refused before reading either.
    let dir = TempDir::new().unwrap();
    dpskit()
        .args(["sas", "inspect", "-", "--group-key-stdin"])
        .current_dir(dir.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("both read standard input"));
}
