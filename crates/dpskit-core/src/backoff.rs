//! Reconnect backoff: exponential, capped, jittered with a random value the caller supplies.
//!
//! No randomness lives here (sans-IO): each delay takes a `random: u32` from the caller's RNG
//! (the ESP32's TRNG on the board, anything in tests). "Equal jitter": the delay for attempt
//! `n` is uniform in `[base/2, base]` with `base = min(max, initial × 2ⁿ)`, so a fleet that
//! lost its hub at the same moment spreads out, yet no device retries in a tight loop.
//! The attempt count resets once a connection has stayed up for `stable_after_ms`.

/// Exponential backoff state. All durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// A connection that lasted this long counts as stable and resets the attempts.
    pub stable_after_ms: u64,
    attempt: u32,
    connected_at: Option<u64>,
}

impl Backoff {
    pub fn new(initial_ms: u64, max_ms: u64, stable_after_ms: u64) -> Self {
        Backoff {
            initial_ms: initial_ms.max(1),
            max_ms: max_ms.max(initial_ms.max(1)),
            stable_after_ms,
            attempt: 0,
            connected_at: None,
        }
    }

    /// The un-jittered upper bound for attempt number `attempt` (0-based).
    pub fn ceiling(&self, attempt: u32) -> u64 {
        let factor = 1u64.checked_shl(attempt.min(63)).unwrap_or(u64::MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The next delay; advances the attempt count.
    pub fn next_delay(&mut self, random: u32) -> u64 {
        let base = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        base - half + u64::from(random) % (half + 1)
    }

    /// Forgets past failures.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Records that a connection came up at `now_ms`.
    pub fn on_connected(&mut self, now_ms: u64) {
        self.connected_at = Some(now_ms);
    }

    /// Records a lost connection (or a failed connect) at `now_ms` and returns how long to wait
    /// before the next attempt; a connection that was stable first resets the attempts.
    pub fn on_disconnected(&mut self, now_ms: u64, random: u32) -> u64 {
        if let Some(at) = self.connected_at.take() {
            if now_ms.saturating_sub(at) >= self.stable_after_ms {
                self.reset();
            }
        }
        self.next_delay(random)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_bounds() {
        let mut b = Backoff::new(1000, 60_000, 30_000);
        for (n, random) in [0u32, u32::MAX, 12345, 7, 99999, 3, 0, u32::MAX, 1]
            .into_iter()
            .enumerate()
        {
            let ceiling = b.ceiling(n as u32);
            let d = b.next_delay(random);
            assert!(
                d >= ceiling - ceiling / 2 && d <= ceiling,
                "attempt {n}: {d} not in [{}, {ceiling}]",
                ceiling / 2
            );
            assert!(d <= 60_000);
        }
        assert_eq!(b.ceiling(200), 60_000);
    }
}
