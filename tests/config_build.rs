//! `dpskit config build|show` through the real binary: the build → show round trip, file mode,
//! masking, the group key never leaving the process, and every bad input (non-zero exit, a
//! message naming the field, no output file).

use assert_cmd::Command;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use predicates::prelude::*;
#[cfg(unix)]
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// Microsoft's group-enrollment vector: this group key and ID give this device key.
const GROUP: &str =
    "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
const REG: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
const DEVICE_KEY: &str = "Jsm0lyGpjaVYVP2g3FnmnmG9dI/9qU24wNoykUmermc=";
const SCOPE: &str = "0ne00ABCDEF";

const G2_PEM: &str = include_str!("../assets/roots/digicert-global-root-g2.pem");
const MS_RSA_PEM: &str = include_str!("../assets/roots/microsoft-rsa-root-2017.pem");
const G3_PEM: &str = include_str!("../assets/roots/digicert-global-root-g3.pem");
const BALTIMORE_PEM: &str = include_str!("../assets/roots/baltimore-cybertrust-root-EXPIRED.pem");

struct Bench {
    dir: TempDir,
}

impl Bench {
    fn new() -> Self {
        let b = Bench {
            dir: TempDir::new().unwrap(),
        };
        b.write("group.key", &format!("{GROUP}\n"));
        b.write("device.key", &format!("{DEVICE_KEY}\n"));
        b.write("wifi.pass", "correct horse\n");
        b
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a fixture file readable by its owner only, as key and password files should be.
    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        dpskit_factory::files::write_private_file(&p, text.as_bytes()).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn out(&self) -> String {
        self.path("dps.bin").to_str().unwrap().to_string()
    }

    /// `config build` with valid defaults; `args` are appended (later flags win for single values).
    fn build(&self, args: &[&str]) -> Command {
        let mut c = dpskit();
        c.args(["config", "build", "-o", &self.out()]);
        c.args(args);
        c
    }

    fn build_with_group_key(&self, args: &[&str]) -> Command {
        let mut c = self.build(&["--group-key-file", self.path("group.key").to_str().unwrap()]);
        c.args(args);
        c
    }

    /// Runs a bad build: exit 2, the message names `field`, nothing written, nothing left over.
    fn refuses(&self, cmd: &mut Command, field: &str) -> String {
        let before = self.listing();
        let out = cmd.assert().failure().code(2);
        let stderr = String::from_utf8(out.get_output().stderr.clone()).unwrap();
        assert!(
            stderr.contains(field),
            "error should name {field:?}: {stderr}"
        );
        assert!(
            !Path::new(&self.out()).exists(),
            "an output file was written: {stderr}"
        );
        assert_eq!(
            self.listing(),
            before,
            "files appeared or vanished: {stderr}"
        );
        assert!(!stderr.contains(GROUP), "group key in the error");
        stderr
    }

    fn listing(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn dpskit() -> Command {
    let mut c = Command::cargo_bin("dpskit").unwrap();
    c.env_remove("DPSKIT_GROUP_KEY");
    c
}

fn base_args() -> Vec<&'static str> {
    vec!["--id-scope", SCOPE, "--registration-id", REG]
}

fn stdout_of(cmd: &mut Command) -> String {
    String::from_utf8(cmd.assert().success().get_output().stdout.clone()).unwrap()
}

fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn build_then_show_round_trip() {
    let b = Bench::new();
    let mut args = base_args();
    let pass = b.path("wifi.pass");
    args.extend([
        "--wifi-ssid",
        "factory-floor",
        "--wifi-password-file",
        pass.to_str().unwrap(),
    ]);
    let build = b.build_with_group_key(&args).assert().success();
    let build_out = String::from_utf8(build.get_output().stdout.clone()).unwrap();
    let build_err = String::from_utf8(build.get_output().stderr.clone()).unwrap();
    assert!(
        build_err.is_empty(),
        "no warnings for a correct build: {build_err}"
    );

    let meta = std::fs::metadata(b.out()).unwrap();
    #[cfg(unix)]
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 0x6000);

    // The group key (text or bytes) is nowhere; the device key only masked in human output.
    let image = std::fs::read(b.out()).unwrap();
    let group_bytes = B64.decode(GROUP).unwrap();
    assert!(!contains_bytes(&image, GROUP.as_bytes()));
    assert!(!contains_bytes(&image, &group_bytes));
    assert!(
        contains_bytes(&image, DEVICE_KEY.as_bytes()),
        "the derived key is stored"
    );
    assert!(
        !build_out.contains(GROUP) && !build_out.contains(DEVICE_KEY),
        "{build_out}"
    );
    assert!(build_out.contains("Jsm0…"), "masked key shown: {build_out}");

    let show = stdout_of(dpskit().args(["config", "show", &b.out()]));
    for want in [
        SCOPE,
        REG,
        "global.azure-devices-provisioning.net",
        "factory-floor",
        "<redacted>",
        "CN=DigiCert Global Root G2",
        "CB3CCBB76031E5E0138F8DD39A23F9DE47FFC35E43C1144CEA27D46A5AB1CB5F",
        "CN=Microsoft RSA Root Certificate Authority 2017",
        "C741F70F4B2A8D88BF2E71C14122EF53EF10EBA0CFA5E64CFA20F418853073E0",
        "2038-01-15",
        "2042-07-18",
        "valid",
    ] {
        assert!(show.contains(want), "show lacks {want:?}:\n{show}");
    }
    assert!(!show.contains(DEVICE_KEY) && !show.contains("correct horse") && !show.contains(GROUP));

    let secrets = stdout_of(dpskit().args(["config", "show", &b.out(), "--show-secrets"]));
    assert!(
        secrets.contains(DEVICE_KEY) && secrets.contains("correct horse"),
        "{secrets}"
    );
    assert!(!secrets.contains(GROUP));

    let json = stdout_of(dpskit().args(["config", "show", &b.out(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["id_scope"], SCOPE);
    assert_eq!(v["registration_id"], REG);
    assert_eq!(v["wifi_ssid"], "factory-floor");
    assert_eq!(v["wifi_password"], "<redacted>");
    assert_ne!(v["device_key"], DEVICE_KEY);
    assert_eq!(v["device_key_fingerprint"].as_str().unwrap().len(), 16);
    let roots = v["root_cas"].as_array().unwrap();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0]["common_name"], "DigiCert Global Root G2");
    assert_eq!(roots[0]["expired"], false);
    assert_eq!(
        roots[1]["sha256"],
        "C741F70F4B2A8D88BF2E71C14122EF53EF10EBA0CFA5E64CFA20F418853073E0"
    );
    let json = stdout_of(dpskit().args(["config", "show", &b.out(), "--json", "--show-secrets"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["device_key"], DEVICE_KEY);
}

#[test]
fn every_key_source_gives_the_same_image() {
    let b = Bench::new();
    b.build_with_group_key(&base_args()).assert().success();
    let from_file = std::fs::read(b.out()).unwrap();
    std::fs::remove_file(b.out()).unwrap();

    b.build(&base_args())
        .env("DPSKIT_GROUP_KEY", GROUP)
        .assert()
        .success();
    assert_eq!(
        std::fs::read(b.out()).unwrap(),
        from_file,
        "environment variable"
    );
    std::fs::remove_file(b.out()).unwrap();

    b.build(&base_args())
        .arg("--group-key-stdin")
        .write_stdin(GROUP)
        .assert()
        .success();
    assert_eq!(std::fs::read(b.out()).unwrap(), from_file, "stdin");
    std::fs::remove_file(b.out()).unwrap();

    let out = b
        .build(&base_args())
        .args(["--device-key-file", b.path("device.key").to_str().unwrap()])
        .assert()
        .success();
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("--device-key-file"));
    assert_eq!(
        std::fs::read(b.out()).unwrap(),
        from_file,
        "derived key file"
    );
}

#[test]
fn a_failed_build_leaves_an_existing_file_alone() {
    let b = Bench::new();
    b.write("dps.bin", "previous");
    dpskit()
        .args([
            "config",
            "build",
            "-o",
            &b.out(),
            "--id-scope",
            SCOPE,
            "--registration-id",
            "Bad/Id",
        ])
        .args(["--group-key-file", b.path("group.key").to_str().unwrap()])
        .assert()
        .failure()
        .code(2);
    assert_eq!(std::fs::read_to_string(b.out()).unwrap(), "previous");
}

#[test]
fn bad_group_keys() {
    let b = Bench::new();
    let cases = [
        ("not-base64!!", "not valid base64"),
        ("AAAAAAAAAAAAAAAAAAAA", "expected 16 to 64"), // 15 bytes
        (&B64.encode([7u8; 65]), "expected 16 to 64"), // 65 bytes
        ("SharedAccessSignature sr=x&sig=y&se=1", "SAS token"),
        (
            "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=abc=",
            "connection string",
        ),
    ];
    for (key, why) in cases {
        let f = b.write("bad.key", key);
        let e = b.refuses(
            b.build(&base_args()).args(["--group-key-file", &f]),
            "group key",
        );
        assert!(e.contains(why), "{key}: {e}");
        let e = b.refuses(
            b.build(&base_args()).env("DPSKIT_GROUP_KEY", key),
            "DPSKIT_GROUP_KEY",
        );
        assert!(e.contains(why), "{key}: {e}");
    }
    b.refuses(
        b.build(&base_args())
            .args(["--group-key-file", b.path("nope.key").to_str().unwrap()]),
        "--group-key-file",
    );
}

#[test]
fn bad_device_key_files() {
    let b = Bench::new();
    let cases = [
        ("SharedAccessSignature sr=x&sig=y&se=1", "SAS token"),
        (
            "HostName=h.azure-devices.net;DeviceId=d;SharedAccessKey=abc=",
            "connection string",
        ),
        (GROUP, "enrollment group key"),
        ("%%%", "not valid base64"),
    ];
    for (key, why) in cases {
        let f = b.write("bad-device.key", key);
        let e = b.refuses(
            b.build(&base_args()).args(["--device-key-file", &f]),
            "--device-key-file",
        );
        assert!(e.contains(why), "{e}");
    }
    b.refuses(
        b.build(&base_args())
            .args(["--device-key-file", b.path("nope.key").to_str().unwrap()]),
        "--device-key-file",
    );
}

#[test]
fn key_source_must_be_exactly_one() {
    let b = Bench::new();
    let dk = b.path("device.key");
    let dk = dk.to_str().unwrap();
    let e = b.refuses(
        b.build_with_group_key(&base_args())
            .args(["--device-key-file", dk]),
        "--device-key-file",
    );
    assert!(e.contains("not both"), "{e}");
    let e = b.refuses(
        b.build(&base_args())
            .args(["--device-key-file", dk])
            .env("DPSKIT_GROUP_KEY", GROUP),
        "DPSKIT_GROUP_KEY",
    );
    assert!(e.contains("not both"), "{e}");
    let e = b.refuses(&mut b.build(&base_args()), "group key");
    assert!(
        e.contains("--group-key-file") && e.contains("--device-key-file"),
        "{e}"
    );
}

#[test]
fn bad_registration_ids() {
    let b = Bench::new();
    let long = "a".repeat(129);
    for (id, why) in [
        ("", "empty"),
        (long.as_str(), "129 characters"),
        ("dev/1", "'/'"),
        ("dev 1", "' '"),
        ("dev#1", "'#'"),
        ("Device-01", "upper-case"),
    ] {
        let e = b.refuses(
            &mut b.build_with_group_key(&["--id-scope", SCOPE, "--registration-id", id]),
            "--registration-id",
        );
        assert!(e.contains(why), "{id}: {e}");
    }
    // Upper case is accepted when asked for, and the key covers the exact spelling.
    let out = stdout_of(&mut b.build_with_group_key(&[
        "--id-scope",
        SCOPE,
        "--registration-id",
        "Device-01",
        "--allow-uppercase",
    ]));
    assert!(out.contains("Device-01"));
    let show = stdout_of(dpskit().args(["config", "show", &b.out()]));
    assert!(show.contains("Device-01"));
    // 128 characters is the limit, not beyond.
    std::fs::remove_file(b.out()).unwrap();
    b.build_with_group_key(&["--id-scope", SCOPE, "--registration-id", &"a".repeat(128)])
        .assert()
        .success();
}

#[test]
fn bad_id_scopes_and_the_unusual_one() {
    let b = Bench::new();
    for scope in ["", "0ne 00ABCDEF", "0ne00/ABCDEF"] {
        b.refuses(
            &mut b.build_with_group_key(&["--id-scope", scope, "--registration-id", REG]),
            "--id-scope",
        );
    }
    let out = b
        .build_with_group_key(&["--id-scope", "myscope1", "--registration-id", REG])
        .assert()
        .success()
        .stderr(predicate::str::contains("warning: ID scope").and(predicate::str::contains("0ne")));
    assert!(String::from_utf8_lossy(&out.get_output().stdout).contains("myscope1"));
}

#[test]
fn root_ca_refusals() {
    let b = Bench::new();
    let with_roots = |roots: &[&str]| {
        let mut c = b.build_with_group_key(&base_args());
        for r in roots {
            c.args(["--root-ca", r]);
        }
        c
    };
    // Not a certificate.
    let bad = b.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n",
    );
    let e = b.refuses(&mut with_roots(&[&bad]), "broken.pem");
    assert!(e.contains("--root-ca"), "{e}");
    let text = b.write("readme.txt", "not a certificate\n");
    b.refuses(&mut with_roots(&[&text]), "readme.txt");
    b.refuses(&mut with_roots(&["digicert-g5"]), "--root-ca digicert-g5");
    // Baltimore, by name and by path: expired, with the replacement named.
    for balt in [
        "baltimore".to_string(),
        b.write("Baltimore.pem", BALTIMORE_PEM),
    ] {
        let e = b.refuses(&mut with_roots(&["digicert-g2", &balt]), "--root-ca");
        assert!(
            e.contains("2025-05-12") && e.contains("DigiCert Global Root G2"),
            "{e}"
        );
    }
    // Any other expired root.
    let expired = b.write("expired.pem", &expired_ca_pem());
    let e = b.refuses(&mut with_roots(&[&expired]), "expired.pem");
    assert!(e.contains("expired on 2021-01-01"), "{e}");
    // A bundle longer than one NVS string (4000 bytes incl. NUL).
    let paths = [
        b.write("g2.pem", G2_PEM),
        b.write("ms.pem", MS_RSA_PEM),
        b.write("g3.pem", G3_PEM),
    ];
    let e = b.refuses(
        &mut with_roots(&[&paths[0], &paths[1], &paths[2]]),
        "--root-ca",
    );
    assert!(e.contains("3999"), "{e}");
}

#[test]
fn root_ca_choices() {
    let b = Bench::new();
    // One root: allowed, with a warning.
    b.build_with_group_key(&base_args())
        .args(["--root-ca", "digicert-g2"])
        .assert()
        .success()
        .stderr(predicate::str::contains("only one root CA"));
    std::fs::remove_file(b.out()).unwrap();
    // ECC pair by name, and a PEM by path.
    let g2 = b.write("g2.pem", G2_PEM);
    b.build_with_group_key(&base_args())
        .args([
            "--root-ca",
            "digicert-g3",
            "--root-ca",
            "microsoft-ecc-2017",
            "--root-ca",
            &g2,
        ])
        .assert()
        .success();
    let json = stdout_of(dpskit().args(["config", "show", &b.out(), "--json"]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let names: Vec<_> = v["root_cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bundled_name"].clone())
        .collect();
    assert_eq!(names, ["digicert-g3", "microsoft-ecc-2017", "digicert-g2"]);
}

#[test]
fn sizes() {
    let b = Bench::new();
    for size in ["0x6001", "0x2000", "0x1000", "4095", "big"] {
        b.refuses(
            b.build_with_group_key(&base_args()).args(["--size", size]),
            "--size",
        );
    }
    // A config that needs three pages does not fit 0x3000 (one page stays empty).
    let pass = b.path("wifi.pass");
    let long_scope = "a".repeat(3900);
    let mut args = vec!["--id-scope", long_scope.as_str(), "--registration-id", REG];
    args.extend([
        "--wifi-ssid",
        "lab",
        "--wifi-password-file",
        pass.to_str().unwrap(),
    ]);
    for r in ["microsoft-rsa-2017", "digicert-g3", "microsoft-ecc-2017"] {
        args.extend(["--root-ca", r]);
    }
    let e = b.refuses(
        b.build_with_group_key(&args).args(["--size", "0x3000"]),
        "--size",
    );
    assert!(e.contains("larger --size") && e.contains("0x4000"), "{e}");
    b.build_with_group_key(&args)
        .args(["--size", "0x4000"])
        .assert()
        .success();
}

#[test]
fn wifi_and_host_mistakes() {
    let b = Bench::new();
    let pass = b.path("wifi.pass");
    let e = b.refuses(
        b.build_with_group_key(&base_args())
            .args(["--wifi-password-file", pass.to_str().unwrap()]),
        "wifi_pass",
    );
    assert!(e.contains("--wifi-ssid"), "{e}");
    let short = b.write("short.pass", "short\n");
    b.refuses(
        b.build_with_group_key(&base_args()).args([
            "--wifi-ssid",
            "lab",
            "--wifi-password-file",
            &short,
        ]),
        "wifi_pass",
    );
    b.refuses(
        b.build_with_group_key(&base_args()).args([
            "--wifi-ssid",
            "lab",
            "--wifi-password-file",
            "/nonexistent/p",
        ]),
        "--wifi-password-file",
    );
    b.refuses(
        b.build_with_group_key(&base_args())
            .args(["--wifi-ssid", &"s".repeat(33)]),
        "wifi_ssid",
    );
    b.refuses(
        b.build_with_group_key(&base_args())
            .args(["--dps-host", "https://x/"]),
        "dps_host",
    );
}

#[test]
fn show_refuses_what_is_not_a_config() {
    let b = Bench::new();
    let junk = b.write("junk.bin", "hello");
    dpskit()
        .args(["config", "show", &junk])
        .assert()
        .failure()
        .code(2)
        .stderr(predicate::str::contains("junk.bin").and(predicate::str::contains("NVS")));
    let erased = b.path("erased.bin");
    std::fs::write(&erased, vec![0xFF; 0x6000]).unwrap();
    dpskit()
        .args(["config", "show", erased.to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("erased"));
    dpskit()
        .args(["config", "show", b.path("missing.bin").to_str().unwrap()])
        .assert()
        .failure()
        .stderr(predicate::str::contains("missing.bin"));
}

/// A self-signed CA that expired on 2021-01-01.
fn expired_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Old Test Root");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2015, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.self_signed(&key).unwrap().pem()
}

/// The partition table template parses, fits 4 MB, and gives dps_cfg what ESP-IDF's NVS needs.
#[test]
fn partition_template() {
    use esp_idf_part::{DataType, Flags, PartitionTable, SubType, Type};
    let csv = include_str!("../templates/partitions.csv");
    let table = PartitionTable::try_from_str(csv).expect("templates/partitions.csv parses");
    let dps = table.find("dps_cfg").expect("a dps_cfg partition");
    assert_eq!(dps.ty(), Type::Data);
    assert_eq!(dps.subtype(), SubType::Data(DataType::Nvs));
    assert!(dps.size() >= 0x3000);
    assert_eq!(
        dps.size() as usize,
        dpskit_factory::blob::nvs::DEFAULT_SIZE,
        "matches --size's default"
    );
    assert!(
        !dps.flags().contains(Flags::ENCRYPTED),
        "ESP-IDF refuses an encrypted NVS"
    );
    assert!(!dps.flags().contains(Flags::READONLY));
    // The firmware's own NVS stays separate from the config blob.
    let nvs = table.find("nvs").expect("the firmware's nvs partition");
    assert_eq!(nvs.subtype(), SubType::Data(DataType::Nvs));
    for name in ["otadata", "phy_init", "ota_0", "ota_1"] {
        assert!(table.find(name).is_some(), "{name}");
    }
    for p in table.partitions() {
        assert!(
            p.offset() + p.size() <= 4 * 1024 * 1024,
            "{} beyond 4 MB",
            p.name()
        );
        if p.ty() == Type::App {
            assert_eq!(p.offset() % 0x10000, 0, "{} not 64 KiB aligned", p.name());
        }
    }
    // The offsets the comment in the template promises.
    let offsets: Vec<_> = table
        .partitions()
        .iter()
        .map(|p| (p.name(), p.offset()))
        .collect();
    let want = [
        ("nvs", 0x9000),
        ("otadata", 0xF000),
        ("phy_init", 0x11000),
        ("dps_cfg", 0x12000),
        ("ota_0", 0x20000),
        ("ota_1", 0x200000),
    ];
    assert_eq!(offsets, want.map(|(n, o)| (n.to_string(), o)));
}

/// The station template is valid TOML (checked with Python's tomllib, which the NVS
/// compatibility test needs anyway), matches dpskit's defaults, and names secrets, never holds them.
/// Not under Wine: Python is a Linux host tool here.
#[cfg(unix)]
#[test]
fn station_template() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/templates/station.toml");
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys,tomllib; print(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))",
            path,
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "station.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["dps"]["dps_host"], dpskit_core::config::DEFAULT_DPS_HOST);
    assert!(v["dps"]["id_scope"].as_str().unwrap().starts_with("0ne"));
    assert_eq!(v["group_key"]["env"], "DPSKIT_GROUP_KEY");
    assert!(v["group_key"].get("key").is_none() && v["wifi"].get("password").is_none());
    let roots: Vec<&str> = v["tls"]["root_cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(roots, dpskit_factory::blob::roots::DEFAULT_ROOTS);
    assert_eq!(v["partition"]["name"], "dps_cfg");
    let size = dpskit_factory::blob::nvs::parse_size(v["partition"]["nvs_size"].as_str().unwrap())
        .unwrap();
    assert_eq!(size, dpskit_factory::blob::nvs::DEFAULT_SIZE);
    assert!(v["wifi"]["ssid"].is_string() && v["wifi"]["password_file"].is_string());
}

#[test]
fn root_ca_emulator_uses_the_emulators_ca() {
    let dir = tempfile::TempDir::new().unwrap();
    let state = dir.path().join("emulator");
    let out = dir.path().join("cfg.bin");
    let run = |expect_ok: bool| {
        let mut c = assert_cmd::Command::cargo_bin("dpskit").unwrap();
        c.env("DPSKIT_EMULATOR_DIR", &state)
            .env("DPSKIT_GROUP_KEY", "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==")
            .args(["config", "build", "--id-scope", "0ne00ABCDEF", "--registration-id", "sn-1", "--root-ca", "emulator", "--dps-host", "localhost", "-o"])
            .arg(&out);
        let a = c.assert();
        if expect_ok {
            a.success();
        } else {
            a.code(2)
                .stderr(predicates::str::contains("run `dpskit emulate` once"));
        }
    };
    run(false);
    assert!(!out.exists());
    dpskit_rehearsal::emulator::certs::load_or_create(&state, &[]).unwrap();
    run(true);
    let cfg = dpskit_factory::blob::nvs::decode_image(&std::fs::read(&out).unwrap()).unwrap();
    let ca = std::fs::read_to_string(dpskit_rehearsal::emulator::ca_path(&state)).unwrap();
    assert!(
        cfg.root_ca_pem.contains(ca.lines().nth(1).unwrap()),
        "the emulator CA must be in the image"
    );
}
