//! A throw-away factory station for batch benchmarks: group key, station file (ROM loader or
//! stub, optional baud and worker cap), loaded. Shared by `batch` and `cold_board`.

use dpskit_factory::station::Station;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub const GROUP_KEY: &str =
    "6p7c62kKPwxAl8Roba6V0AV+u8WtUbIHz7i6XZJm899K1LoWVDkcqFXJ3IafdQRnBpdazaBDoggKr/TO+YFMqA==";

/// Writes `dir/group.key` and `dir/station.toml` and loads the station.
pub fn bench_station(
    dir: &Path,
    stub: bool,
    baud: Option<u32>,
    parallel: Option<usize>,
) -> Station {
    let key = dir.join("group.key");
    std::fs::write(&key, GROUP_KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut station = format!(
        r#"
[station]
name = "bench"
[dps]
id_scope = "0ne0000ABCD"
[group_key]
file = "group.key"
[ids]
template = "{{prefix}}-{{seq:05}}"
prefix = "sensor"
[gates]
chip = "esp32s3"
min_psram_mb = 2
min_flash_mb = 4
firmware_project = "dpskit-firmware"
min_firmware_version = "0.1.0"
[serial]
before = "no-reset"
after = "no-reset"
stub = {stub}
"#
    );
    if let Some(b) = baud {
        station += &format!("baud = {b}\n");
    }
    if let Some(p) = parallel {
        station += &format!("[ports]\nparallel = {p}\n");
    }
    let path = dir.join("station.toml");
    std::fs::write(&path, station).unwrap();
    Station::load(&path).unwrap()
}
