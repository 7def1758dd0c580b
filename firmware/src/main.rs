//! dpskit firmware: the platform layer. Reads the config `dpskit write-config` put in the
//! `dps_cfg` NVS partition, joins Wi-Fi, sets the clock over SNTP, then runs the shared
//! device logic (DPS registration → IoT Hub) over MQTT 3.1.1 on TLS 1.2.
//!
//! All protocol and application logic lives in `dpskit-core` (and the glue crate); this crate
//! only wires the chip: heap/PSRAM, Wi-Fi, clock, TLS, NVS.
#![no_std]
#![no_main]

extern crate alloc;

mod clock;
mod config_store;
mod mqtt;
mod net;
mod psram;
mod sntp;
mod status;
mod tls;

use config_store::Flash;
use dpskit_device::{AppOutput, AppSettings, DeviceApp, LinkError};
use dpskit_firmware_glue::descriptor;
use embassy_executor::Spawner;
use embassy_net::tcp::client::{TcpClient, TcpClientState};
use embassy_time::{Duration, Timer};
use esp_hal::clock::CpuClock;
use esp_hal::rng::{Trng, TrngSource};
use esp_hal::rtc_cntl::Rtc;
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

/// Heap in internal RAM outside the reclaimed bootloader region, in KB.
const HEAP_KB: usize = 48;

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

/// What the platform does with the application's outputs.
struct Board {
    flash: Flash,
    layout: config_store::Layout,
    rng: Trng,
}

impl mqtt::Host<DeviceApp> for Board {
    fn output(&mut self, _app: &mut DeviceApp, output: AppOutput) {
        match output {
            AppOutput::StoreAssignment(a) => {
                config_store::store_assignment(&mut self.flash, &self.layout, &a)
            }
            AppOutput::RebootRequested => {
                warn!("rebooting (direct method `reboot`)");
                esp_hal::delay::Delay::new().delay_millis(200);
                esp_hal::system::software_reset();
            }
            AppOutput::C2d(m) => {
                let body = core::str::from_utf8(&m.body).unwrap_or("<binary>");
                let shown = body.get(..body.len().min(256)).unwrap_or("<binary>");
                info!(
                    "C2D message ({} bytes, {} properties): {shown}",
                    m.body.len(),
                    m.properties.len()
                );
            }
            AppOutput::Failed(e) => error!("{e}"),
            AppOutput::Warning(w) => warn!("{w}"),
            AppOutput::HubRefused { error, then } => warn!("{error}; {then}"),
            AppOutput::StoredAssignmentIgnored { reason } => {
                info!("cached assignment not used: {reason}")
            }
            AppOutput::UsingStoredAssignment { hub, device_id } => {
                info!("using the cached assignment: hub {hub}, device {device_id}")
            }
            AppOutput::Registering { dps_host, reason } => {
                info!("registering with DPS at {dps_host} ({reason:?})")
            }
            AppOutput::Provisioned { hub, device_id, .. } => {
                info!("DPS assigned hub {hub}, device {device_id}")
            }
            AppOutput::HubConnected { hub, device_id, .. } => {
                info!("connected to IoT Hub {hub} as {device_id}")
            }
            AppOutput::HubDisconnected {
                reconnect_at_ms,
                cause,
            } => {
                let secs = reconnect_at_ms.saturating_sub(clock::now_ms()) / 1000;
                match cause {
                    Some(c) => warn!("IoT Hub connection down ({c}); next try in {secs} s"),
                    None => warn!("IoT Hub connection down; next try in {secs} s"),
                }
            }
            AppOutput::TelemetrySent { seq, message } => {
                info!("telemetry {seq:?} sent ({} bytes)", message.body.len())
            }
            AppOutput::MethodCalled { name, status, .. } => {
                info!("direct method {name} answered {status}")
            }
            AppOutput::TelemetryIntervalChanged { secs } => info!("telemetry every {secs} s"),
            AppOutput::Finished { messages_sent } => {
                info!("finished after {messages_sent} messages")
            }
            other => log::debug!("{other:?}"),
        }
    }

    fn before_tick(&mut self, app: &mut DeviceApp) {
        app.set_status(status::read());
        if let Some(Err(e)) = app.outcome() {
            // Stopped for good (e.g. a certificate that cannot verify): say why, every tick.
            error!("{e}");
            error!("not connecting; fix the above and reset the board");
        }
    }

    fn random(&mut self) -> u32 {
        self.rng.random()
    }

    fn link_failed(&mut self, app: &mut DeviceApp, error: LinkError) {
        app.link_failed(error);
    }
}

#[esp_rtos::main]
async fn main(spawner: Spawner) -> ! {
    esp_println::logger::init_logger_from_env();
    let peripherals = esp_hal::init(esp_hal::Config::default().with_cpu_clock(CpuClock::max()));

    // Heap: the RAM the second-stage bootloader used (free after boot) plus a static part.
    esp_alloc::heap_allocator!(#[esp_hal::ram(reclaimed)] size: 64 * 1024);
    esp_alloc::heap_allocator!(size: HEAP_KB * 1024);
    #[cfg(feature = "esp32s3")]
    psram::init(peripherals.PSRAM);

    info!(
        "{} {} starting",
        descriptor::PROJECT_NAME,
        env!("CARGO_PKG_VERSION")
    );

    let timg0 = TimerGroup::new(peripherals.TIMG0);
    esp_rtos::start(timg0.timer0, peripherals.FROM_CPU_INTR0);

    clock::init(Rtc::new(peripherals.RTC_TIMER));

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
    let stack = match net::start(
        &spawner,
        peripherals.WIFI,
        cfg.wifi_ssid.as_deref(),
        cfg.wifi_password.as_deref(),
        seed,
    ) {
        Ok(s) => s,
        Err(e) => wait_forever(&e).await,
    };
    net::wait_ip(stack).await;
    sntp::sync(stack).await;

    static TCP: StaticCell<TcpClientState<1, { tls::TCP_TX }, { tls::TCP_RX }>> = StaticCell::new();
    let tcp = TcpClient::new(stack, TCP.init(TcpClientState::new()));
    let net = mqtt::Net {
        stack,
        tcp: &tcp,
        tls: tls.reference(),
        roots: &roots,
    };

    let stored = config_store::load_assignment(&mut flash, &layout);
    let settings = AppSettings::new(env!("CARGO_PKG_VERSION"));
    let mut app = match DeviceApp::new(cfg, settings, stored) {
        Ok(app) => app,
        Err(e) => wait_forever(&e).await,
    };
    app.set_status(status::read());
    let mut board = Board { flash, layout, rng };
    mqtt::run(&net, &mut app, &mut board).await
}
