//! A board on the chip's *real* ROM: Espressif's QEMU running the ESP32-S3 mask ROM in UART
//! download mode, with the same factory flash content and eFuses a [`super::VirtualBoard`]
//! gets from a [`SimBoardConfig`]. What the virtual boards model, this is: benchmarks check
//! the model against it, and tests prove dpskit's ROM commands on the genuine loader.
//!
//! The emulator is not part of dpskit (GPL binaries): it is found through the environment
//! variable [`QEMU_DIR_ENV`] (a folder with `bin/qemu-system-xtensa` and `rom/`), and its
//! absence is an error, never a silent skip. Each board is its own QEMU process, started cold
//! (a fresh ROM boot), inside a private network namespace (`unshare --net`: it needs no
//! network and gets none).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::board::SimBoardConfig;
use super::efuse::{EfuseProfile, BLOCK_WORDS};
use super::image::{build_flash_image, ImageSpec};

/// Names the folder of Espressif's QEMU build (`bin/`, `rom/`).
pub const QEMU_DIR_ENV: &str = "ESP_QEMU_DIR";

/// The QEMU folder from [`QEMU_DIR_ENV`], checked.
pub fn qemu_dir() -> Result<PathBuf> {
    let dir = std::env::var_os(QEMU_DIR_ENV).with_context(|| {
        format!("{QEMU_DIR_ENV} is not set: point it at Espressif's QEMU (a folder with bin/qemu-system-xtensa and rom/esp32s3_rev0_rom.bin)")
    })?;
    let dir = PathBuf::from(dir);
    for need in ["bin/qemu-system-xtensa", "rom/esp32s3_rev0_rom.bin"] {
        if !dir.join(need).exists() {
            bail!("{QEMU_DIR_ENV}={}: no {need} there", dir.display());
        }
    }
    Ok(dir)
}

/// The raw eFuse file QEMU's `nvram.esp32s3.efuse` reads: the blocks' read registers back to
/// back (BLOCK0 at byte 0, BLOCK1 at 24, BLOCK2 at 48, …), 1024 bytes.
pub fn efuse_file(profile: &EfuseProfile) -> Vec<u8> {
    let blocks = profile.blocks();
    let mut out = Vec::with_capacity(1024);
    for (words, n) in blocks.words.iter().zip(BLOCK_WORDS) {
        for w in &words[..n] {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out.resize(1024, 0);
    out
}

/// One ESP32-S3 ROM in download mode, in its own QEMU process. Dropping it stops QEMU.
pub struct QemuBoard {
    child: Child,
    pty: PathBuf,
    flash_path: PathBuf,
    /// Keeps the pty's other end open for QEMU's whole life (QEMU re-polls a pty nobody holds
    /// only once a second).
    _hold: std::fs::File,
    _dir: tempfile::TempDir,
}

impl QemuBoard {
    /// Writes the flash image and eFuses `config` describes, boots the ROM and waits until it
    /// says it waits for a download. Flash must be 2, 4, 8 or 16 MB.
    pub fn spawn(config: &SimBoardConfig) -> Result<QemuBoard> {
        let qemu = qemu_dir()?;
        let dir = tempfile::Builder::new().prefix("dpskit-qemu-").tempdir()?;
        let flash_size = config.flash_size()?;
        if ![2, 4, 8, 16].contains(&(flash_size >> 20)) {
            bail!(
                "QEMU's ESP32-S3 takes 2, 4, 8 or 16 MB of flash, not {} MB",
                flash_size >> 20
            );
        }
        let (image, _) = build_flash_image(&ImageSpec {
            flash_size,
            partitions_csv: config.partitions_csv.clone(),
            layout: config.layout,
            app: config.app.clone(),
            ..ImageSpec::default()
        })?;
        let mut content = vec![0xFFu8; flash_size as usize];
        content[..image.len()].copy_from_slice(&image);
        let flash_path = dir.path().join("flash.bin");
        write_private(&flash_path, &content)?;
        let efuse_path = dir.path().join("efuse.bin");
        write_private(&efuse_path, &efuse_file(&config.profile))?;

        let mut command = Command::new("unshare");
        command
            .arg("--net")
            .arg("--")
            .arg(qemu.join("bin/qemu-system-xtensa"))
            .args(["-nographic", "-machine", "esp32s3", "-m", "8M", "-L"])
            .arg(qemu.join("rom"))
            .arg("-drive")
            .arg(format!("file={},if=mtd,format=raw", flash_path.display()))
            .arg("-drive")
            .arg(format!(
                "file={},if=none,format=raw,id=efuse",
                efuse_path.display()
            ))
            .args([
                "-global",
                "driver=nvram.esp32s3.efuse,property=drive,value=efuse",
                "-global",
                "driver=esp32s3.gpio,property=strap_mode,value=0x07",
                "-serial",
                "pty",
                "-monitor",
                "none",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // QEMU dies with the thread that started it, even in a process killed before it could
        // drop its boards (unshare execs QEMU, which keeps the parent-death signal).
        // SAFETY: only an async-signal-safe prctl runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = command
            .spawn()
            .context("starting unshare --net qemu-system-xtensa (is util-linux installed, and are you allowed to create network namespaces?)")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let pty = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(p) = l
                        .strip_prefix("char device redirected to ")
                        .and_then(|r| r.split_whitespace().next())
                    {
                        break PathBuf::from(p);
                    }
                }
                _ => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = e.read_to_string(&mut err);
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("QEMU did not start: {}", err.trim());
                }
            }
        };
        // Drain QEMU's stdout from now on so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let mut hold = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY | nix::libc::O_NONBLOCK)
            .open(&pty)
            .with_context(|| format!("opening {}", pty.display()))?;
        let mut board = QemuBoard {
            child,
            pty,
            flash_path,
            _hold: hold.try_clone()?,
            _dir: dir,
        };
        board.wait_for_banner(&mut hold, Duration::from_secs(20))?;
        Ok(board)
    }

    /// Reads the line until the ROM says it waits for a download.
    fn wait_for_banner(&mut self, line: &mut std::fs::File, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < end {
            match line.read(&mut buf) {
                Ok(n) if n > 0 => {
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    // `waiting for download` (USB/UART0 boot) or `wait uart0 download`
                    // (the UART0 strap QEMU uses).
                    if text.contains("waiting for download") || text.contains("uart0 download") {
                        return Ok(());
                    }
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => return Err(e).context("reading the ROM banner"),
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("QEMU exited ({status}) before the ROM was ready");
            }
        }
        bail!(
            "the ROM did not say it waits for a download within {timeout:?} (saw {:?})",
            String::from_utf8_lossy(&seen)
        )
    }

    /// The serial port to open (`/dev/pts/N`).
    pub fn pty_path(&self) -> &Path {
        &self.pty
    }

    /// The flash image QEMU writes through to.
    pub fn flash_path(&self) -> &Path {
        &self.flash_path
    }

    /// Reads the board's flash from the image file.
    pub fn read_flash(&self, offset: u32, len: u32) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.flash_path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset.into())?;
        Ok(buf)
    }
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn efuse_file_puts_each_block_where_qemu_reads_it() {
        let p = EfuseProfile {
            mac: [0x34, 0x85, 0x18, 0xAA, 0xBB, 0xCC],
            ..EfuseProfile::default()
        };
        let f = efuse_file(&p);
        assert_eq!(f.len(), 1024);
        // BLOCK1 word 0 at byte 24: MAC bytes 2..5 big-endian.
        assert_eq!(&f[24..28], &0x18AA_BBCCu32.to_le_bytes());
        assert_eq!(&f[28..32], &0x3485u32.to_le_bytes());
        // BLOCK2 word 4 at byte 48 + 16: BLK_VERSION_MAJOR.
        assert_eq!(f[64] & 3, p.blk_version.0);
    }
}
