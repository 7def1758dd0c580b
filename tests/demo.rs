//! `dpskit demo` end to end: virtual boards → factory bench → config read back over serial →
//! virtual devices → DPS → IoT Hub telemetry, C2D and a direct method, through the real binary.
// Unix only: virtual boards need pseudo-terminals.
#![cfg(unix)]

use assert_cmd::Command;

#[test]
fn demo_takes_every_board_from_the_bench_to_iot_hub() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = Command::cargo_bin("dpskit")
        .unwrap()
        .env_remove("DPSKIT_GROUP_KEY")
        .args(["demo", "--boards", "2", "--json", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let boards = report["boards"].as_array().unwrap();
    assert_eq!(boards.len(), 2);
    let mut ids: Vec<&str> = boards
        .iter()
        .map(|b| b["registration_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["demo-0001", "demo-0002"]);
    for b in boards {
        assert_eq!(b["provisioned"], true, "{b}");
        assert_eq!(b["registered"], true, "{b}");
        assert!(b["telemetry_delivered"].as_u64().unwrap() >= 1, "{b}");
        assert!(b["c2d_round_trip_ms"].is_number(), "{b}");
        assert!(b["method_round_trip_ms"].is_number(), "{b}");
    }
    // The ledger recorded both boards, and the group key is in no file but its own.
    let key = std::fs::read_to_string(dir.path().join("group.key")).unwrap();
    for entry in walk(dir.path()) {
        if entry.ends_with("group.key") {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "group key found in {}",
            entry.display()
        );
    }
    assert!(!text.contains(&key) && !String::from_utf8_lossy(&out.stderr).contains(&key));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else if p.is_file() {
            out.push(p);
        }
    }
    out
}
