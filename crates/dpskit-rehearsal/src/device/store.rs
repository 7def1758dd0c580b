//! Where the virtual device keeps its DPS assignment: a small JSON file (a board uses NVS),
//! by default next to the config image, or nowhere (in memory) for in-process demos.

use dpskit_device::driver::Storage;
use dpskit_device::StoredAssignment;
use dpskit_factory::files::write_file;
use std::path::{Path, PathBuf};

/// `device.bin` → `device.assignment.json` in the same folder.
pub fn default_state_path(config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "device".into());
    config.with_file_name(format!("{stem}.assignment.json"))
}

/// The assignment store of one virtual device.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// A file; written atomically, mode 0644 (an assignment holds no secret).
    File(PathBuf),
    /// Kept for this process only (reboots within a run still skip DPS).
    Memory(Option<StoredAssignment>),
}

impl StateStore {
    /// The stored assignment, or `None` with a note when the file is unreadable (a bad file
    /// only costs a registration, so it never stops the device).
    pub fn read(&self) -> (Option<StoredAssignment>, Option<String>) {
        match self {
            StateStore::Memory(a) => (a.clone(), None),
            StateStore::File(p) => match std::fs::read(p) {
                Ok(bytes) => match StoredAssignment::from_bytes(&bytes) {
                    Ok(a) => (Some(a), None),
                    Err(e) => (
                        None,
                        Some(format!("{}: {e}; registering with DPS", p.display())),
                    ),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                Err(e) => (
                    None,
                    Some(format!(
                        "{}: cannot read ({e}); registering with DPS",
                        p.display()
                    )),
                ),
            },
        }
    }
}

impl Storage for StateStore {
    fn load(&mut self) -> Option<StoredAssignment> {
        self.read().0
    }

    fn save(&mut self, assignment: &StoredAssignment) -> Result<(), String> {
        match self {
            StateStore::Memory(a) => {
                *a = Some(assignment.clone());
                Ok(())
            }
            StateStore::File(p) => {
                let mut bytes = assignment.to_bytes();
                bytes.push(b'\n');
                write_file(p, &bytes, 0o644).map_err(|e| format!("{}: {e:#}", p.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_round_trip_and_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("board-7.bin");
        let path = default_state_path(&cfg);
        assert_eq!(path, dir.path().join("board-7.assignment.json"));
        let mut s = StateStore::File(path.clone());
        assert_eq!(s.read(), (None, None));
        let a = StoredAssignment {
            version: 1,
            id_scope: "0ne00000001".into(),
            registration_id: "board-7".into(),
            dps_host: "localhost".into(),
            assigned_hub: "localhost".into(),
            device_id: "board-7".into(),
        };
        s.save(&a).unwrap();
        assert_eq!(s.load(), Some(a));
        std::fs::write(&path, "{not json").unwrap();
        let (got, note) = s.read();
        assert!(got.is_none() && note.unwrap().contains("registering with DPS"));
    }
}
