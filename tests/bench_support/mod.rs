//! Shared by the `bench_*` tests: virtual boards, a station file that points at them, and
//! helpers to read the ledger and the boards' flash back.
#![allow(dead_code)]

use dpskit_factory::station::assign::Mac;
use dpskit_factory::station::ledger::{BoardRow, Ledger};
use dpskit_rehearsal::sim::{SimBoardConfig, VirtualBoard};
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A 64-byte enrollment group key used only by these tests (base64).
pub const GROUP_KEY: &str =
    "6p7c62kKPwxAl8Roba6V0AV+u8WtUbIHz7i6XZJm899K1LoWVDkcqFXJ3IafdQRnBpdazaBDoggKr/TO+YFMqA==";

/// The group key's raw bytes.
pub fn group_key_bytes() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(GROUP_KEY)
        .unwrap()
}

/// A temp folder with a station in it.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub boards: Vec<VirtualBoard>,
}

impl Rig {
    pub fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("group.key");
        std::fs::write(&key, format!("{GROUP_KEY}\n")).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Rig {
            dir,
            boards: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts `n` boards from `template` (MACs base+index); returns their indices.
    pub fn spawn(&mut self, n: usize, template: &SimBoardConfig) -> std::ops::Range<usize> {
        let first = self.boards.len();
        let flash_dir = self.path("flash");
        std::fs::create_dir_all(&flash_dir).unwrap();
        for i in 0..n {
            let c = template.for_batch(first + i, &flash_dir);
            self.boards.push(VirtualBoard::spawn(c).unwrap());
        }
        first..first + n
    }

    pub fn ports(&self) -> Vec<String> {
        self.boards
            .iter()
            .map(|b| b.pty_path().display().to_string())
            .collect()
    }

    /// Writes `station.toml` with the standard sections, `[ports] paths` = every board, and
    /// `extra` appended (later keys of the same section are not allowed in TOML, so `extra`
    /// holds whole sections the base leaves out: [ids] and [gates] unless `with_defaults`).
    pub fn station(&self, ids: &str, gates: &str) -> PathBuf {
        let ports: Vec<String> = self.ports().iter().map(|p| format!("{p:?}")).collect();
        let text = format!(
            r#"
[station]
name = "test-bench"
ledger = "ledger.sqlite"

[dps]
id_scope = "0ne0000ABCD"

[group_key]
file = "group.key"

[tls]
root_cas = ["digicert-g2", "microsoft-rsa-2017"]

[partition]
name = "dps_cfg"
nvs_size = "0x6000"

[ids]
{ids}

[gates]
{gates}

[serial]
before = "no-reset"
after = "no-reset"
stub = true

[ports]
paths = [{}]
"#,
            ports.join(", ")
        );
        let path = self.path("station.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn ledger_path(&self) -> PathBuf {
        self.path("ledger.sqlite")
    }

    pub fn rows(&self) -> Vec<BoardRow> {
        Ledger::open_read_only(&self.ledger_path())
            .unwrap()
            .list()
            .unwrap()
    }

    /// The board's `dps_cfg` partition, found through the partition table on its flash.
    pub fn config_partition(&self, index: usize) -> Vec<u8> {
        let b = &self.boards[index];
        let table = dpskit_factory::board::partition::parse(&b.read_flash(0x8000, 0x1000).unwrap())
            .unwrap();
        let p = table
            .find("dps_cfg")
            .expect("the board's table has dps_cfg");
        b.read_flash(p.offset(), p.size()).unwrap()
    }

    pub fn mac(&self, index: usize) -> String {
        Mac(self.boards[index].mac()).to_string()
    }

    /// Stops every board (joins their threads).
    pub fn stop(&mut self) {
        for b in &mut self.boards {
            b.stop();
        }
    }
}

pub const IDS_SEQ: &str = "template = \"{prefix}-{seq:05}\"\nprefix = \"sensor\"";
pub const GATES: &str = "chip = \"esp32s3\"\nmin_psram_mb = 2\nmin_flash_mb = 4\nfirmware_project = \"dpskit-firmware\"\nmin_firmware_version = \"0.1.0\"";

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Every `done` row: the board's flash decodes to the row's ID, and its partition hashes to
/// the row's image SHA-256. Returns how many were checked.
pub fn check_done_rows_against_flash(rig: &Rig) -> usize {
    let rows = rig.rows();
    let mut checked = 0;
    for (i, _) in rig.boards.iter().enumerate() {
        let mac = rig.mac(i);
        let Some(row) = rows.iter().find(|r| r.mac == mac) else {
            continue;
        };
        if row.status != dpskit_factory::station::ledger::Status::Done {
            continue;
        }
        let part = rig.config_partition(i);
        let cfg = dpskit_factory::blob::nvs::decode_image(&part)
            .unwrap_or_else(|e| panic!("board {mac} is done but its config does not decode: {e}"));
        assert_eq!(
            cfg.registration_id.as_str(),
            row.registration_id,
            "board {mac}"
        );
        assert_eq!(
            Some(sha256_hex(&part)),
            row.image_sha256,
            "board {mac}: image SHA-256"
        );
        let md5 = hex::encode(<md5::Md5 as md5::Digest>::digest(&part));
        assert_eq!(Some(md5), row.verified_md5, "board {mac}: verified MD5");
        checked += 1;
    }
    checked
}

/// Asserts no registration ID (any case) and no MAC appears twice in the ledger.
pub fn assert_unique(rows: &[BoardRow]) {
    let mut ids = std::collections::HashSet::new();
    let mut macs = std::collections::HashSet::new();
    for r in rows {
        assert!(
            ids.insert(r.registration_id.to_ascii_lowercase()),
            "ID {} twice",
            r.registration_id
        );
        assert!(macs.insert(r.mac.clone()), "MAC {} twice", r.mac);
    }
}

pub fn file_exists(p: &Path) -> bool {
    p.exists()
}
