//! The emulator's sense of time, injected: every expiry, deadline, delay and timestamp the
//! emulator uses comes from one [`Clock`], so tests drive time with a [`ManualClock`] instead
//! of sleeping, and a rehearsal can run the services at another date than the PC's (a board
//! whose SNTP answer is years off, a token that expires mid-session).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// A future the clock resolves.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Wall-clock time and waiting for it.
pub trait Clock: Send + Sync + 'static {
    /// Microseconds since the Unix epoch.
    fn now_unix_us(&self) -> u64;
    /// Resolves once [`now_unix_us`](Self::now_unix_us) has reached `deadline_unix_us`.
    fn sleep_until(&self, deadline_unix_us: u64) -> Sleep;
}

/// The clock shared by every part of one emulator.
pub type SharedClock = Arc<dyn Clock>;

/// Seconds since the Unix epoch.
pub fn now_secs(clock: &dyn Clock) -> u64 {
    clock.now_unix_us() / 1_000_000
}

/// `now + d` in the clock's microseconds.
pub fn after(clock: &dyn Clock, d: Duration) -> u64 {
    clock
        .now_unix_us()
        .saturating_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// `2024-05-01T12:00:00.123Z` at the clock's now, as DPS and IoT Hub write timestamps.
pub fn rfc3339(clock: &dyn Clock) -> String {
    let nanos = i128::from(clock.now_unix_us()) * 1000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .map(dpskit_factory::timestamp::rfc3339_millis)
        .unwrap_or_default()
}

/// The PC's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline_unix_us: u64) -> Sleep {
        let wait = deadline_unix_us.saturating_sub(self.now_unix_us());
        Box::pin(tokio::time::sleep(Duration::from_micros(wait)))
    }
}

/// A clock that moves only when told to: tests advance it past an expiry or a deadline and
/// every timer waiting for that moment fires at once.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<u64>,
}

impl ManualClock {
    /// A clock standing at `unix_us`.
    pub fn at(unix_us: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: watch::Sender::new(unix_us),
        })
    }

    /// A clock standing at the PC's present moment (so tokens made with the PC's clock fit).
    pub fn starting_now() -> Arc<ManualClock> {
        Self::at(SystemClock.now_unix_us())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let step = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.now.send_modify(|now| *now = now.saturating_add(step));
    }

    /// Sets the clock to `unix_us` (backwards too: a clock that was wrong and got fixed).
    pub fn set(&self, unix_us: u64) {
        self.now.send_replace(unix_us);
    }
}

impl Clock for ManualClock {
    fn now_unix_us(&self) -> u64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_unix_us: u64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            while *rx.borrow_and_update() < deadline_unix_us {
                if rx.changed().await.is_err() {
                    // The clock is gone, so this moment never comes.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_advanced() {
        let clock = ManualClock::at(1_000_000);
        let sleep = clock.sleep_until(3_000_000);
        let waiter = tokio::spawn(sleep);
        clock.advance(Duration::from_secs(1));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        clock.advance(Duration::from_secs(1));
        waiter.await.unwrap();
        assert_eq!(now_secs(clock.as_ref()), 3);
        // A deadline already passed resolves at once.
        clock.sleep_until(0).await;
        assert_eq!(
            rfc3339(ManualClock::at(1_500_000).as_ref()),
            "1970-01-01T00:00:01.500Z"
        );
    }
}
