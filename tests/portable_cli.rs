//! What must hold on every OS the product runs on (CI runs this file on Linux and, through
//! scripts/test-windows.sh, as a Windows program under Wine): port listing, the emulator's
//! admin channel refusing a wrong token, `cloud` without an emulator, and on Windows the
//! virtual-board commands saying they need Unix.

mod emulator_support;

use emulator_support::*;
use std::process::Command;

fn dpskit() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dpskit"));
    c.env_remove("DPSKIT_GROUP_KEY");
    c
}

#[test]
fn ports_lists_serial_ports_as_json() {
    let out = dpskit().args(["ports", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.is_array(), "{v}");
}

#[test]
fn cloud_without_an_emulator_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dpskit()
        .args(["cloud", "devices", "--state-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start one with `dpskit emulate`"), "{err}");
}

/// The admin file is owner-only and its token is required: a client with another token gets
/// a 401 and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_channel_wants_the_token_from_the_admin_file() {
    let emu = Emu::start().await;
    let file = emu.dir.path().join("admin.json");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut endpoint: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(endpoint["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(endpoint["token"].as_str().unwrap().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let state = emu.dir.path().to_path_buf();
    let ok = tokio::task::spawn_blocking(move || {
        dpskit()
            .args(["cloud", "devices", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    endpoint["token"] = serde_json::Value::String("0".repeat(64));
    let forged = tempfile::tempdir().unwrap();
    std::fs::write(forged.path().join("admin.json"), endpoint.to_string()).unwrap();
    let state = forged.path().to_path_buf();
    let refused = tokio::task::spawn_blocking(move || {
        dpskit()
            .args(["cloud", "devices", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("wrong admin token"), "{err}");
    emu.shutdown().await;
}

#[cfg(not(unix))]
#[test]
fn virtual_boards_say_they_need_unix() {
    for cmd in ["sim", "demo"] {
        let out = dpskit().arg(cmd).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("pseudo-terminals"), "{cmd}: {err}");
        let help = dpskit().args([cmd, "--help"]).output().unwrap();
        assert!(String::from_utf8_lossy(&help.stdout).contains("Unix only"));
    }
}
