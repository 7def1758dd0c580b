//! PSRAM: on the ESP32-S3 it holds the heap TLS needs (two 16 KB record buffers per session
//! plus certificate parsing). Boards without it still run, on internal RAM only, with a loud
//! warning, since that is the usual cause of TLS running out of heap.

use core::sync::atomic::{AtomicBool, Ordering};

static PRESENT: AtomicBool = AtomicBool::new(false);

/// Whether a PSRAM heap region was added at boot.
pub fn present() -> bool {
    PRESENT.load(Ordering::Relaxed)
}

/// Maps PSRAM and adds it to the heap; logs a warning when the chip has none.
#[cfg(feature = "esp32s3")]
pub fn init(psram: esp_hal::peripherals::PSRAM<'static>) {
    let psram = esp_hal::psram::Psram::new(psram, Default::default());
    let (start, size) = psram.raw_parts();
    if size == 0 {
        log::warn!("no PSRAM on this chip: TLS will use internal RAM only and may run out of heap; use a module with PSRAM (e.g. ESP32-S3-WROOM-1 N8R2/N16R8)");
        return;
    }
    // SAFETY: the region is the mapped PSRAM, handed to the allocator once and never used
    // otherwise. esp-alloc: no atomics may live in PSRAM on the S3, so internal RAM comes
    // first in the allocator and PSRAM is only used when internal RAM is short.
    unsafe {
        esp_alloc::HEAP.add_region(esp_alloc::HeapRegion::new(
            start,
            size,
            esp_alloc::MemoryCapability::External.into(),
        ));
    }
    PRESENT.store(true, Ordering::Relaxed);
    log::info!("PSRAM: {} KB added to the heap", size / 1024);
}
