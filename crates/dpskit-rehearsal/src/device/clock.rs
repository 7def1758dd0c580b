//! The virtual device's wall clock: the PC's, optionally shifted to rehearse a board whose
//! clock is wrong (SNTP not done, a time-zone offset applied to UTC). The same shifted time
//! signs the SAS tokens and checks the server certificates, as on a board.

use dpskit_device::driver::Clock;
use rustls::pki_types::UnixTime;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// PC time plus `offset_ms`.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostClock {
    pub offset_ms: i64,
}

impl HostClock {
    pub fn new(offset_ms: i64) -> Self {
        HostClock { offset_ms }
    }

    /// The shifted Unix time in ms (never below 0).
    pub fn unix_ms(&self) -> u64 {
        let pc = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        pc.saturating_add(self.offset_ms).max(0) as u64
    }

    /// How long from now until the shifted time reaches `unix_ms`.
    pub fn until(&self, unix_ms: u64) -> Duration {
        Duration::from_millis(unix_ms.saturating_sub(self.unix_ms()))
    }
}

impl Clock for HostClock {
    fn now_ms(&self) -> u64 {
        self.unix_ms()
    }
}

impl rustls::time_provider::TimeProvider for HostClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_millis(
            self.unix_ms(),
        )))
    }
}
