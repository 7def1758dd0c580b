//! The device application, written once for the ESP32 firmware and the PC's virtual device:
//! read config → DPS (or the cached assignment) → IoT Hub → telemetry, C2D, direct methods and
//! the twin → token renewal and reconnects with backoff.
//!
//! `no_std + alloc` and sans-IO, like the protocol core it drives ([`dpskit_core`]).
//!
//! # The driver contract
//!
//! [`DeviceApp`] is driven exactly like `DpsClient` and `HubClient`, so the loop that runs
//! those runs this:
//!
//! ```text
//! let mut app = DeviceApp::new(config, settings, stored)?;   // stored: from NVS / a file
//! actions = app.handle(now_ms, Event::Start);
//! loop {
//!     for a in actions { carry it out:
//!         Connect(p) / Reconnect(p) → TLS to p.host:p.port (only the config's root CAs),
//!             MQTT CONNECT → Event::ConnAck { .. }   (failure → app.link_failed(..) first,
//!             then Event::Disconnected { random })
//!         Subscribe → Event::SubAck;  Publish → QoS 1 PUBLISH;  Disconnect → close
//!         Output(StoreAssignment(s)) → persist s (s.to_bytes()); pass it to `new` next boot
//!         Output(RebootRequested) → restart;  Output(Finished | Failed(e)) → stop
//!     }
//!     wait for an incoming PUBLISH (Event::Publish), a dropped connection
//!     (app.link_failed + Event::Disconnected) or app.next_deadline() (Event::Tick)
//! }
//! ```
//!
//! * **Time.** Every `now_ms` is Unix ms read *after* SNTP. A time before 2024
//!   ([`MIN_PLAUSIBLE_UNIX_MS`]) is refused with [`AppError::ClockNotSet`] before any token
//!   is sent.
//! * **DPS or the cache.** A [`StoredAssignment`] for the same ID scope, registration ID and
//!   DPS host skips DPS. A hub that answers CONNACK 5 sends the app back to DPS once (the
//!   assignment may be stale); a second refusal is final ([`AppError::HubUnauthorized`]).
//! * **Hub.** Telemetry every `telemetryInterval` seconds (desired property, default from
//!   [`AppSettings`]); methods `echo` (returns the payload) and `reboot` (200, then
//!   [`AppOutput::RebootRequested`]), anything else 404; reported properties
//!   `firmwareVersion`, `uptimeSecs`, `telemetryInterval` and the [`PlatformStatus`] numbers
//!   (free heap, free PSRAM, largest free block, RSSI) that the driver sets with
//!   [`DeviceApp::set_status`]. Token renewal, reconnect and backoff are `HubClient`'s.
//! * **Failures.** Connection failures come from the driver as [`LinkError`]s; a certificate
//!   failure is final, others are retried. [`AppError`]'s `Display` names the cause: TLS
//!   error and CA, DPS status, code and message, token rejected, clock.
//!
//! [`driver`] holds that loop once more, generic over small traits ([`driver::MqttSession`],
//! [`driver::Clock`], [`driver::Storage`], [`driver::Entropy`]), for platforms that want it.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

mod app;
pub mod driver;
mod error;
pub mod log;
pub mod session;
mod store;
mod time;

pub use app::{
    AppOutput, AppSettings, DeviceApp, PlatformStatus, RegisterReason, DEFAULT_REPORT_INTERVAL_MS,
    DEFAULT_TELEMETRY_INTERVAL_MS, MAX_QUEUED_MESSAGES, MAX_TELEMETRY_INTERVAL_SECS,
    TELEMETRY_INTERVAL_PROPERTY,
};
pub use dpskit_core;
pub use error::{AppError, LinkError, LinkErrorKind, Service};
pub use store::{StoreError, StoredAssignment};
pub use time::{format_unix_ms, is_plausible, MIN_PLAUSIBLE_UNIX_MS};
