//! Wall-clock time: the time since boot (the system timer, which the scheduler runs on too)
//! plus the offset SNTP found. mbedTLS checks certificate dates against it
//! (`hook-wall-clock`); until SNTP has run the clock reads 1970 and certificate checks fail
//! closed, so nothing can connect with an unset clock. (The RTC is not used: its slow clock
//! drifts by percents, and QEMU does not run it.)

use core::cell::Cell;
use critical_section::Mutex;
use dpskit_firmware_glue::civil;
use mbedtls_rs::sys::hook::timer::MbedtlsTimer;
use mbedtls_rs::sys::hook::wall_clock::MbedtlsWallClock;

/// Unix µs at boot; 0 until SNTP.
static BOOT_UNIX_US: Mutex<Cell<u64>> = Mutex::new(Cell::new(0));

/// Seconds since 1970 below which the clock counts as never set (2025-01-01).
pub const PLAUSIBLE_UNIX_SECS: u64 = 1_735_689_600;

struct Monotonic;
impl MbedtlsTimer for Monotonic {
    fn now(&self) -> mbedtls_rs::sys::mbedtls_ms_time_t {
        embassy_time::Instant::now().as_millis() as _
    }
}

struct Wall;
impl MbedtlsWallClock for Wall {
    fn instant(&self) -> Option<mbedtls_rs::sys::tm> {
        let secs = now_us() / 1_000_000;
        if secs < PLAUSIBLE_UNIX_SECS {
            return None; // not set yet: mbedTLS then treats every certificate as invalid
        }
        let t = civil::utc(secs);
        Some(mbedtls_rs::sys::tm {
            tm_sec: t.sec,
            tm_min: t.min,
            tm_hour: t.hour,
            tm_mday: t.mday,
            tm_mon: t.mon,
            tm_year: t.year,
            tm_wday: t.wday,
            tm_yday: t.yday,
            tm_isdst: 0,
        })
    }
}

static MONOTONIC: Monotonic = Monotonic;
static WALL: Wall = Wall;

/// Hooks the clocks into mbedTLS. Call once, before anything uses TLS.
pub fn init() {
    // SAFETY: runs once at boot before any mbedTLS call; the hooked objects are 'static.
    unsafe {
        mbedtls_rs::sys::hook::timer::hook_timer(Some(&MONOTONIC));
        mbedtls_rs::sys::hook::wall_clock::hook_wall_clock(Some(&WALL));
    }
}

fn since_boot_us() -> u64 {
    embassy_time::Instant::now().as_micros()
}

pub fn now_us() -> u64 {
    critical_section::with(|cs| BOOT_UNIX_US.borrow(cs).get()) + since_boot_us()
}

/// Unix milliseconds (meaningful after SNTP).
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Sets the clock to `unix_us` now.
pub fn set_us(unix_us: u64) {
    let boot = unix_us.saturating_sub(since_boot_us());
    critical_section::with(|cs| BOOT_UNIX_US.borrow(cs).set(boot));
}
