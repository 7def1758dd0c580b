//! A virtual board: a [`VirtualChip`] on its own thread, talking over a pty, with its flash in an
//! image file. The handle stops the thread (and removes a private temp file) when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::efuse::{format_mac, EfuseProfile};
use super::flash::{FileFlash, FlashStore};
use super::image::{
    build_flash_image, default_app, AppDescriptor, ImageFlashMode, ImageLayout, ImageSpec, Layout,
};
use super::protocol::{
    BoardState, ChipProfile, Faults, Output, ResetBehaviour, RomTiming, Stats, VirtualChip,
};
use super::pty::{Pty, Waker};

/// JEDEC manufacturer and memory type of the default flash chip (Winbond W25Q).
pub const DEFAULT_JEDEC_MFR_TYPE: [u8; 2] = [0xEF, 0x40];

/// Everything that defines one virtual board.
#[derive(Debug, Clone)]
pub struct SimBoardConfig {
    pub profile: EfuseProfile,
    /// JEDEC RDID: manufacturer, type, capacity. The capacity byte also sets the flash size
    /// (2^capacity bytes: 0x16 = 4 MB, 0x17 = 8 MB, 0x18 = 16 MB).
    pub jedec_id: [u8; 3],
    /// Partition table CSV; `None` uses [`super::image::DEFAULT_PARTITIONS_CSV`].
    pub partitions_csv: Option<String>,
    pub layout: Layout,
    pub app: AppDescriptor,
    /// `spi_mode` of the app's image header; `None`: what ESP-IDF builds for this flash
    /// (`dout` for octal flash, `dio` otherwise).
    pub app_flash_mode: Option<ImageFlashMode>,
    /// Flash size the app's image header names; `None`: the board's.
    pub app_flash_size: Option<u32>,
    /// Where the flash image lives. `None`: a private temp file, deleted with the board.
    pub flash_file: Option<PathBuf>,
    /// Use an existing image at `flash_file` as is instead of writing a fresh one.
    pub keep_existing_image: bool,
    pub reset: ResetBehaviour,
    pub faults: Faults,
    /// Pace the line at the board's current baud rate (10 bits per byte, both directions), as
    /// a real UART is; off, a virtual board answers at CPU speed.
    pub line_rate: bool,
    /// How long each command keeps the chip busy (with `line_rate`, the model of a real ROM:
    /// [`RomTiming::esp32s3_rom_in_qemu`]); `None`: it answers at once.
    pub timing: Option<RomTiming>,
}

impl Default for SimBoardConfig {
    fn default() -> Self {
        SimBoardConfig {
            profile: EfuseProfile::default(),
            jedec_id: [DEFAULT_JEDEC_MFR_TYPE[0], DEFAULT_JEDEC_MFR_TYPE[1], 0x16],
            partitions_csv: None,
            layout: Layout::Factory,
            app: default_app(),
            app_flash_mode: None,
            app_flash_size: None,
            flash_file: None,
            keep_existing_image: false,
            reset: ResetBehaviour::default(),
            faults: Faults::default(),
            line_rate: false,
            timing: None,
        }
    }
}

impl SimBoardConfig {
    /// An ESP32-S3-DevKitC-1 N32R16V: 32 MB octal flash, 16 MB octal PSRAM (AP_1v8) — the
    /// board dpskit's firmware is built for.
    pub fn n32r16v() -> SimBoardConfig {
        SimBoardConfig {
            profile: EfuseProfile::n32r16v(),
            jedec_id: [DEFAULT_JEDEC_MFR_TYPE[0], 0x80, 0x19],
            ..SimBoardConfig::default()
        }
    }

    /// Flash size in bytes, from the JEDEC capacity byte.
    pub fn flash_size(&self) -> Result<u32> {
        flash_size_from_capacity(self.jedec_id[2])
    }

    /// Sets the flash size (and with it the JEDEC capacity byte).
    pub fn with_flash_size(mut self, bytes: u32) -> Result<Self> {
        self.jedec_id[2] = capacity_from_flash_size(bytes)?;
        Ok(self)
    }

    /// The config of board `index` of a batch: MAC + index, image `dir/board-<index>.bin`.
    pub fn for_batch(&self, index: usize, dir: &Path) -> SimBoardConfig {
        let mut c = self.clone();
        c.profile.mac = self.profile.mac_plus(index as u64);
        c.flash_file = Some(dir.join(format!("board-{index}.bin")));
        c
    }
}

/// 2^capacity bytes, for the capacities espflash and esptool map (1 MB .. 64 MB here).
pub fn flash_size_from_capacity(cap: u8) -> Result<u32> {
    if !(0x14..=0x1A).contains(&cap) {
        bail!("JEDEC capacity byte {cap:#04x} is not 0x14 (1 MB) .. 0x1a (64 MB)");
    }
    Ok(1u32 << cap)
}

/// The JEDEC capacity byte for a flash size.
pub fn capacity_from_flash_size(bytes: u32) -> Result<u8> {
    if !bytes.is_power_of_two() || !(0x10_0000..=0x400_0000).contains(&bytes) {
        bail!("flash size {bytes:#x} must be a power of two from 1 MB to 64 MB");
    }
    Ok(bytes.trailing_zeros() as u8)
}

enum Request {
    Reset,
    Faults(Faults),
    ResetBehaviour(ResetBehaviour),
}

#[derive(Default)]
struct Control {
    requests: Vec<Request>,
    /// Requests submitted / applied by the board thread, so requests can wait for effect.
    submitted: u64,
    applied: u64,
    running: bool,
    state: Option<BoardState>,
    stats: Stats,
    baud: u32,
    error: Option<String>,
}

struct Shared {
    stop: AtomicBool,
    ctl: Mutex<Control>,
    waker: Waker,
}

/// A running virtual board. Dropping it stops the board.
pub struct VirtualBoard {
    pty_path: PathBuf,
    flash_path: PathBuf,
    profile: EfuseProfile,
    flash_size: u32,
    layout: Option<ImageLayout>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Temp directory we created for the image (removed on drop).
    temp_dir: Option<PathBuf>,
}

impl std::fmt::Debug for VirtualBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualBoard")
            .field("pty", &self.pty_path)
            .field("flash", &self.flash_path)
            .field("mac", &format_mac(&self.profile.mac))
            .finish()
    }
}

fn private_temp_dir() -> Result<PathBuf> {
    use std::sync::atomic::AtomicU64;
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = base.join(format!("dpskit-sim-{}-{n}-{nanos:x}", std::process::id()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).context("creating a temp directory for the flash image"),
        }
    }
    bail!("could not create a temp directory in {}", base.display())
}

impl VirtualBoard {
    /// Builds the flash image, opens a pty and starts the board thread in ROM download mode.
    pub fn spawn(config: SimBoardConfig) -> Result<VirtualBoard> {
        let flash_size = config.flash_size()?;
        let (flash_path, temp_dir) = match &config.flash_file {
            Some(p) => (p.clone(), None),
            None => {
                let d = private_temp_dir()?;
                (d.join("flash.bin"), Some(d))
            }
        };
        let cleanup = |e: anyhow::Error| {
            if let Some(d) = &temp_dir {
                let _ = std::fs::remove_dir_all(d);
            }
            e
        };

        let (flash, layout): (Box<dyn FlashStore>, Option<ImageLayout>) = if config
            .keep_existing_image
            && flash_path.exists()
        {
            let f = FileFlash::open(&flash_path)
                .with_context(|| format!("opening flash image {}", flash_path.display()))
                .map_err(cleanup)?;
            if f.size() != flash_size {
                return Err(cleanup(anyhow::anyhow!(
                        "{}: image is {} bytes but the board's flash is {} bytes: use the matching --flash-size or a fresh image",
                        flash_path.display(),
                        f.size(),
                        flash_size
                    )));
            }
            (Box::new(f), None)
        } else {
            let spec = ImageSpec {
                flash_size,
                partitions_csv: config.partitions_csv.clone(),
                layout: config.layout,
                app: config.app.clone(),
                flash_mode: config
                    .app_flash_mode
                    .unwrap_or(if config.profile.octal_flash {
                        ImageFlashMode::Dout
                    } else {
                        ImageFlashMode::Dio
                    }),
                header_flash_size: config.app_flash_size,
            };
            let (image, layout) = build_flash_image(&spec).map_err(cleanup)?;
            let f = FileFlash::create(&flash_path, flash_size, &image)
                .with_context(|| format!("writing flash image {}", flash_path.display()))
                .map_err(cleanup)?;
            (Box::new(f), Some(layout))
        };

        let pty = Pty::open()
            .context("allocating a pseudo-terminal")
            .map_err(cleanup)?;
        let pty_path = pty.path().to_path_buf();
        let device = VirtualChip::new(
            ChipProfile {
                profile: config.profile.clone(),
                jedec_id: config.jedec_id,
                reset: config.reset.clone(),
                faults: config.faults.clone(),
                timing: config.timing,
            },
            flash,
        );
        let waker = Waker::new()
            .context("creating the board's wake-up pipe")
            .map_err(cleanup)?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            waker,
            ctl: Mutex::new(Control {
                state: Some(BoardState::Rom),
                baud: 115_200,
                running: true,
                ..Default::default()
            }),
        });
        let thread_shared = Arc::clone(&shared);
        let line_rate = config.line_rate;
        let name = format!("sim-{}", format_mac(&config.profile.mac));
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || run_board(device, pty, &thread_shared, line_rate))
            .context("starting the board thread")
            .map_err(cleanup)?;

        Ok(VirtualBoard {
            pty_path,
            flash_path,
            profile: config.profile,
            flash_size,
            layout,
            shared,
            thread: Some(thread),
            temp_dir,
        })
    }

    /// The serial port to open (`/dev/pts/N`).
    pub fn pty_path(&self) -> &Path {
        &self.pty_path
    }

    /// The flash image file; it always holds what the board's flash holds.
    pub fn flash_path(&self) -> &Path {
        &self.flash_path
    }

    pub fn profile(&self) -> &EfuseProfile {
        &self.profile
    }

    pub fn mac(&self) -> [u8; 6] {
        self.profile.mac
    }

    pub fn flash_size(&self) -> u32 {
        self.flash_size
    }

    /// Where the generated image put its partitions (`None` when an existing image was kept).
    pub fn layout(&self) -> Option<&ImageLayout> {
        self.layout.as_ref()
    }

    /// Reads the board's flash from the image file.
    pub fn read_flash(&self, offset: u32, len: u32) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&self.flash_path)?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset.into())
            .with_context(|| format!("reading {len:#x} bytes at {offset:#x} of the flash image"))?;
        Ok(buf)
    }

    pub fn state(&self) -> BoardState {
        let c = self.shared.ctl.lock().expect("board lock");
        c.state.unwrap_or(BoardState::LineDropped)
    }

    pub fn stats(&self) -> Stats {
        self.shared.ctl.lock().expect("board lock").stats.clone()
    }

    /// The baud rate the board uses now.
    pub fn baud(&self) -> u32 {
        self.shared.ctl.lock().expect("board lock").baud
    }

    /// An I/O error that ended the board thread, if any.
    pub fn error(&self) -> Option<String> {
        self.shared.ctl.lock().expect("board lock").error.clone()
    }

    /// Presses EN with BOOT held: the board restarts in ROM download mode (clears a stall, a
    /// crash, or the app state after `FLASH_END`).
    pub fn reset_to_download(&self) {
        self.request(Request::Reset);
    }

    /// Replaces the fault plan from now on.
    pub fn inject(&self, faults: Faults) {
        self.request(Request::Faults(faults));
    }

    /// Changes how the board returns to download mode.
    pub fn set_reset_behaviour(&self, r: ResetBehaviour) {
        self.request(Request::ResetBehaviour(r));
    }

    /// Waits until the board is in `state` (true) or `timeout` passes (false).
    pub fn wait_for(&self, state: BoardState, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.state() == state {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Hands a request to the board thread and waits (up to 1 s) until it took effect.
    fn request(&self, r: Request) {
        let target = {
            let mut c = self.shared.ctl.lock().expect("board lock");
            c.requests.push(r);
            c.submitted += 1;
            c.submitted
        };
        self.shared.waker.wake();
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            {
                let c = self.shared.ctl.lock().expect("board lock");
                if c.applied >= target || !c.running {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Stops the board thread and closes its pty. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for VirtualBoard {
    fn drop(&mut self) {
        self.stop();
        if let Some(d) = self.temp_dir.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Longest sleep in poll when nothing happens (stop and requests wake the thread at once).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Output that piles up while nobody reads the line is dropped beyond this.
const MAX_QUEUED: usize = 1 << 20;

/// How long `bytes` take on a UART at `baud` (start + 8 data + stop bits per byte).
fn wire_time(bytes: usize, baud: u32) -> Duration {
    Duration::from_micros(bytes as u64 * 10 * 1_000_000 / u64::from(baud.max(1)))
}

fn run_board(mut device: VirtualChip, pty: Pty, shared: &Shared, line_rate: bool) {
    let mut pty = Some(pty);
    let mut queue: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 0x4000];
    let result = (|| -> std::io::Result<()> {
        while !shared.stop.load(Ordering::SeqCst) {
            let mut outputs = Vec::new();
            let (requests, submitted) = {
                let mut c = shared.ctl.lock().expect("board lock");
                (std::mem::take(&mut c.requests), c.submitted)
            };
            let Some(line) = pty.as_ref() else {
                // The cable is gone: requests cannot change anything any more.
                shared.ctl.lock().expect("board lock").applied = submitted;
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            // Requests just applied are published without sleeping first.
            let busy = !requests.is_empty();
            for r in requests {
                match r {
                    Request::Reset => outputs.extend(device.reset_to_download()),
                    Request::Faults(f) => device.set_faults(f),
                    Request::ResetBehaviour(b) => device.set_reset_behaviour(b),
                }
            }

            let now = Instant::now();
            let timeout = if busy {
                Duration::ZERO
            } else {
                device.next_deadline().map_or(IDLE_POLL, |d| {
                    d.saturating_duration_since(now).min(IDLE_POLL)
                })
            };
            let ready = line.wait(!queue.is_empty(), Some(&shared.waker), timeout)?;
            // When the next bytes may leave: the chip cannot answer before the request is
            // through the wire, nor before it is done (Output::Pause). Kept as a deadline so
            // the thread's own overheads are absorbed, not added.
            let mut due = Instant::now();
            if ready.readable {
                let n = line.read(&mut buf)?;
                if n > 0 {
                    if line_rate {
                        due += wire_time(n, device.baud());
                    }
                    outputs.extend(device.feed(&buf[..n], Instant::now()));
                }
            }
            outputs.extend(device.tick(Instant::now()));
            // Publish the new state before any reply leaves: a client that has its answer
            // must already see the board's state through the handle.
            {
                let mut c = shared.ctl.lock().expect("board lock");
                c.state = Some(device.state());
                c.stats = device.stats().clone();
                c.baud = device.baud();
                c.applied = submitted;
            }

            let mut drop_line = false;
            for o in outputs {
                match o {
                    Output::Send(bytes) => queue.extend_from_slice(&bytes),
                    Output::SetBaud(b) => {
                        // The reply before the switch goes out at the old rate.
                        flush(line, &mut queue, Duration::from_millis(200))?;
                        line.set_baud(b);
                    }
                    Output::DropLine => drop_line = true,
                    Output::Pause(d) => {
                        // What was answered before goes out first; then the chip is busy.
                        if !queue.is_empty() {
                            if line_rate {
                                due += wire_time(queue.len(), device.baud());
                            }
                            sleep_until(due);
                            flush(line, &mut queue, Duration::from_millis(200))?;
                        }
                        due += d;
                    }
                }
            }
            if !queue.is_empty() {
                if line_rate {
                    due += wire_time(queue.len(), device.baud());
                }
                sleep_until(due);
                let n = line.write(&queue)?;
                queue.drain(..n);
                if queue.len() > MAX_QUEUED {
                    queue.clear();
                }
            }
            if drop_line {
                // What was already on the wire may still arrive; then the cable is gone.
                let _ = flush(line, &mut queue, Duration::from_millis(50));
                pty = None;
                queue.clear();
            }
        }
        Ok(())
    })();
    let mut c = shared.ctl.lock().expect("board lock");
    c.running = false;
    if let Err(e) = result {
        c.error = Some(e.to_string());
        c.state = None;
    }
    drop(pty);
}

fn sleep_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

fn flush(line: &Pty, queue: &mut Vec<u8>, max_wait: Duration) -> std::io::Result<()> {
    let end = Instant::now() + max_wait;
    while !queue.is_empty() && Instant::now() < end {
        let n = line.write(queue)?;
        queue.drain(..n);
        if n == 0 {
            line.wait(true, None, Duration::from_millis(5))?;
        }
    }
    Ok(())
}

/// Starts `n` boards from one template: MACs base, base+1, …; images `dir/board-<i>.bin`.
pub fn spawn_batch(template: &SimBoardConfig, n: usize, dir: &Path) -> Result<Vec<VirtualBoard>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    (0..n)
        .map(|i| VirtualBoard::spawn(template.for_batch(i, dir)))
        .collect()
}
