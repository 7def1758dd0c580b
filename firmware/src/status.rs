//! The platform numbers the device reports: heap and PSRAM (free and peak), largest free
//! block, Wi-Fi RSSI.

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicI32, Ordering};
use dpskit_device::PlatformStatus;
use esp_alloc::{MemoryCapability, HEAP};

/// Last RSSI the Wi-Fi task read; `i32::MIN` while not connected.
pub static RSSI: AtomicI32 = AtomicI32::new(i32::MIN);

/// The largest internal-RAM block an allocation could get now, found by trying (binary search
/// over allocation sizes, 64-byte resolution). esp-alloc keeps no such statistic.
fn largest_internal_block() -> usize {
    let caps = MemoryCapability::Internal.into();
    let (mut lo, mut hi) = (0usize, HEAP.free_caps(caps) + 64);
    while hi - lo > 64 {
        let mid = (lo + hi) / 2;
        let Ok(layout) = Layout::from_size_align(mid, 4) else {
            break;
        };
        // SAFETY: a non-zero layout; the block is freed at once with the same layout.
        let p = unsafe { HEAP.alloc_caps(caps, layout) };
        if p.is_null() {
            hi = mid;
        } else {
            unsafe { HEAP.dealloc(p, layout) };
            lo = mid;
        }
    }
    lo
}

pub fn read() -> PlatformStatus {
    let rssi = RSSI.load(Ordering::Relaxed);
    let psram =
        crate::psram::present().then(|| HEAP.free_caps(MemoryCapability::External.into()) as u32);
    let (peak_internal, peak_external) = crate::heap::peaks();
    PlatformStatus {
        uptime_ms: Some(
            esp_hal::time::Instant::now()
                .duration_since_epoch()
                .as_millis(),
        ),
        free_heap: Some(HEAP.free_caps(MemoryCapability::Internal.into()) as u32),
        free_psram: psram,
        peak_heap: Some(peak_internal as u32),
        peak_psram: crate::psram::present().then_some(peak_external as u32),
        largest_free_block: Some(largest_internal_block() as u32),
        rssi_dbm: (rssi != i32::MIN).then_some(rssi as i16),
    }
}
