//! Wall-clock time: the RTC, set by SNTP. mbedTLS checks certificate dates against it
//! (`hook-wall-clock`); until SNTP has run the clock reads 1970 and certificate checks fail
//! closed, so nothing can connect with an unset clock.

use dpskit_firmware_glue::civil;
use esp_hal::rtc_cntl::Rtc;
use mbedtls_rs::sys::hook::timer::MbedtlsTimer;
use mbedtls_rs::sys::hook::wall_clock::MbedtlsWallClock;
use static_cell::StaticCell;

static RTC: StaticCell<Rtc<'static>> = StaticCell::new();
static mut CLOCK: Option<&'static Rtc<'static>> = None;

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

/// Takes the RTC and hooks the clocks into mbedTLS. Call once, before anything uses TLS.
pub fn init(rtc: Rtc<'static>) {
    let rtc: &'static Rtc<'static> = RTC.init(rtc);
    // SAFETY: runs once at boot before any reader of CLOCK and before any mbedTLS call; the
    // hooked objects are 'static.
    unsafe {
        CLOCK = Some(rtc);
        mbedtls_rs::sys::hook::timer::hook_timer(Some(&MONOTONIC));
        mbedtls_rs::sys::hook::wall_clock::hook_wall_clock(Some(&WALL));
    }
}

fn rtc() -> &'static Rtc<'static> {
    // SAFETY: CLOCK is written once in `init`, before any task that reads it starts.
    let clock = unsafe { *core::ptr::addr_of!(CLOCK) };
    clock.expect("clock::init runs first")
}

pub fn now_us() -> u64 {
    rtc().current_time_us()
}

/// Unix milliseconds (meaningful after SNTP).
pub fn now_ms() -> u64 {
    now_us() / 1000
}

pub fn set_us(unix_us: u64) {
    rtc().set_current_time_us(unix_us);
}
