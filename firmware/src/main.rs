//! dpskit firmware: the platform layer. Reads the config `dpskit write-config` put in the
//! `dps_cfg` NVS partition, brings the network up, sets the clock over SNTP, then runs the
//! device application with the very loop and MQTT session the PC's virtual device runs
//! (`dpskit_device::driver::run` over `dpskit_device::session::Session`).
//!
//! This crate only supplies what a chip has: heap/PSRAM, the network, the clock, TLS
//! (mbedTLS), entropy (TRNG) and storage (NVS).
#![no_std]
#![no_main]

extern crate alloc;

mod clock;
mod config_store;
mod heap;
// Wi-Fi builds get the C library's formatted output from the radio's libraries.
#[cfg(not(feature = "wifi"))]
mod libc;
mod net;
mod psram;
mod sntp;
mod status;
mod tls;

use config_store::Flash;
use dpskit_device::driver::{self, Command, Control, Entropy, Platform, RunEnd, Storage};
use dpskit_device::log::Level;
use dpskit_device::session::{Limits, Session, Sleep};
use dpskit_device::{AppOutput, AppSettings, DeviceApp, StoredAssignment};
use dpskit_firmware_glue::descriptor;
use embassy_executor::Spawner;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_time::{Duration, Timer};
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::timer::timg::TimerGroup;
use esp_storage::FlashStorage;
use log::{error, info, warn};
use mbedtls_rs::Tls;
use static_cell::StaticCell;

use esp_backtrace as _;
// C library functions the mbedTLS C code calls (memchr).
use tinyrlibc as _;

// The app descriptor (`esp_app_desc_t`): project name and version from this crate's
// Cargo.toml, which `dpskit inspect` shows. The glue crate's test keeps its constants equal.
esp_bootloader_esp_idf::esp_app_desc!();
const _: () = assert!(
    descriptor::fits(env!("CARGO_PKG_NAME")) && descriptor::fits(env!("CARGO_PKG_VERSION"))
);

/// How often the heap and RSSI numbers the app reports are refreshed.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Logs `why` every minute, forever: a board without a usable config must not crash-loop.
async fn wait_forever(why: &dyn core::fmt::Display) -> ! {
    loop {
        error!("{why}");
        error!("not connecting; fix the above and reset the board");
        Timer::after(Duration::from_secs(60)).await;
    }
}

/// Reads `dps_cfg` until a valid config is there, logging why not in between.
async fn load_config(
    flash: &mut Flash,
    layout: &config_store::Layout,
) -> dpskit_core::DeviceConfig {
    loop {
        match config_store::read_config(flash, layout) {
            Ok(cfg) => return cfg,
            Err(e) => {
                error!("{e}");
                warn!("waiting for a config; checking the dps_cfg partition again in 60 s");
                Timer::after(Duration::from_secs(60)).await;
            }
        }
    }
}

/// The RTC, set by SNTP.
struct RtcClock;
impl driver::Clock for RtcClock {
    fn now_ms(&self) -> u64 {
        clock::now_ms()
    }
}

/// embassy-time's timer.
struct EmbassySleep;
impl Sleep for EmbassySleep {
    async fn sleep_ms(&self, ms: u64) {
        Timer::after(Duration::from_millis(ms)).await
    }
}

struct Rng(Trng);
impl Entropy for Rng {
    fn random_u32(&mut self) -> u32 {
        self.0.random()
    }
}

/// The assignment cache in the firmware's own `nvs` partition.
struct Nvs {
    flash: Flash,
    layout: config_store::Layout,
}
impl Storage for Nvs {
    fn load(&mut self) -> Option<StoredAssignment> {
        config_store::load_assignment(&mut self.flash, &self.layout)
    }
    fn save(&mut self, a: &StoredAssignment) -> Result<(), alloc::string::String> {
        config_store::store_assignment(&mut self.flash, &self.layout, a)
    }
}

/// Fresh platform numbers for the app every [`STATUS_EVERY`]. The driver asks anew each
/// time it waits, so the schedule is kept here, not restarted with every call.
struct StatusUpdates {
    next: embassy_time::Instant,
}
impl Control for StatusUpdates {
    async fn next_command(&mut self) -> Command {
        Timer::at(self.next).await;
        self.next = embassy_time::Instant::now() + STATUS_EVERY;
        Command::Status(status::read())
    }
}

/// Each output as one log line, in the words the virtual device uses too.
fn log_output(output: &AppOutput) {
    match output.log_line() {
        Some((Level::Info, line)) => info!("{line}"),
        Some((Level::Warn, line)) => warn!("{line}"),
        Some((Level::Error, line)) => error!("{line}"),
        None => {}
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));
    heap::init();
    #[cfg(feature = "esp32s3")]
    psram::init(peripherals.PSRAM);
    info!(
        "{} {} starting",
        descriptor::PROJECT_NAME,
        env!("CARGO_PKG_VERSION")
    );

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    clock::init();

    let mut flash = Flash(FlashStorage::new(peripherals.FLASH));
    let layout = match config_store::find_partitions(&mut flash) {
        Ok(l) => l,
        Err(e) => wait_forever(&e).await,
    };
    let cfg = load_config(&mut flash, &layout).await;
    info!(
        "config: ID scope {}, registration ID {}, DPS {}, device key {}",
        cfg.id_scope.as_str(),
        cfg.registration_id.as_str(),
        cfg.dps_host,
        cfg.device_key.masked()
    );

    let _trng_source = TrngSource::new(peripherals.RNG, peripherals.ADC1);
    let rng = Trng::try_new().expect("TRNG source is enabled above");
    heap::route_tls_allocations();
    static TLS_RNG: StaticCell<Trng> = StaticCell::new();
    let tls = match Tls::new(TLS_RNG.init(rng.clone())) {
        Ok(t) => t,
        Err(e) => wait_forever(&format_args!("TLS could not start: {e:?}")).await,
    };
    let roots = match tls::parse_roots(&cfg.root_ca_pem) {
        Ok(r) => r,
        Err(e) => {
            wait_forever(&format_args!(
                "config: root_ca cannot be parsed ({e}); write the config again with `dpskit write-config --root-ca digicert-g2`"
            ))
            .await
        }
    };

    let seed = (u64::from(rng.random()) << 32) | u64::from(rng.random());
    let hardware = net::Hardware {
        #[cfg(feature = "wifi")]
        wifi: peripherals.WIFI,
    };
    let stack = match net::start(&spawner, hardware, &cfg, seed) {
        Ok(s) => s,
        Err(e) => wait_forever(&e).await,
    };
    net::wait_ip(stack).await;
    let (ntp, ntp_port) = cfg.ntp_server();
    sntp::sync(stack, ntp, ntp_port).await;

    static TCP: StaticCell<TcpClientState<1, { tls::TCP_TX }, { tls::TCP_RX }>> = StaticCell::new();
    let tcp = TcpClient::new(stack, TCP.init(TcpClientState::new()));
    let connector = tls::TlsConnector {
        stack,
        tcp: &tcp,
        tls: tls.reference(),
        roots: &roots,
    };

    let mut storage = Nvs { flash, layout };
    let stored = storage.load();
    let settings = AppSettings::new(env!("CARGO_PKG_VERSION"));
    let mut app = match DeviceApp::new(cfg, settings, stored) {
        Ok(app) => app,
        Err(e) => wait_forever(&e).await,
    };
    app.set_status(status::read());
    let limits = Limits {
        // A DPS answer is at most ~96 KB, a C2D message 64 KB plus its topic.
        max_packet: 100 * 1024,
        ..Limits::default()
    };
    let mut session = Session::new(&connector, EmbassySleep, &RtcClock, limits);
    let platform = Platform {
        clock: &RtcClock,
        entropy: &mut Rng(rng),
        storage: &mut storage,
    };
    let end = driver::run(
        &mut app,
        &mut session,
        &mut StatusUpdates {
            next: embassy_time::Instant::now() + STATUS_EVERY,
        },
        platform,
        log_output,
    )
    .await;
    match end {
        RunEnd::Reboot => {
            // The `reboot` method was answered and the connection closed: restart; the next
            // boot goes straight to the hub on the cached assignment.
            esp_hal::delay::Delay::new().delay_millis(100);
            esp_hal::system::software_reset()
        }
        RunEnd::Failed(e) => wait_forever(&e).await,
        RunEnd::Finished { messages_sent } => {
            wait_forever(&format_args!("stopped after {messages_sent} messages")).await
        }
    }
}
