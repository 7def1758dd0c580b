//! PSRAM: on the ESP32-S3 it takes what TLS and MQTT need in bulk (see `heap`). What the
//! package has is read from the eFuses (size, octal or quad, vendor), so PSRAM is set up as
//! exactly that instead of probed — esp-hal calls its auto-detection "not entirely
//! reliable". Boards without it still run, on internal RAM only, with a loud warning naming
//! what to buy, since that is the usual cause of TLS running out of heap.

use core::sync::atomic::{AtomicBool, Ordering};

static PRESENT: AtomicBool = AtomicBool::new(false);

/// Whether external RAM was added to the heap at boot.
pub fn present() -> bool {
    PRESENT.load(Ordering::Relaxed)
}

/// Notes that external RAM is in the heap.
#[cfg(any(feature = "esp32s3", feature = "emulated-psram"))]
pub fn mark_present() {
    PRESENT.store(true, Ordering::Relaxed);
}

/// The package's memory, from the eFuses.
#[cfg(feature = "esp32s3")]
pub fn package() -> dpskit_core::chip::S3Memory {
    use esp_hal::efuse::{
        read_field_le, FLASH_CAP, FLASH_TYPE, FLASH_VENDOR, PKG_VERSION, PSRAM_CAP, PSRAM_CAP_3,
        PSRAM_VENDOR,
    };
    dpskit_core::chip::S3Memory::decode(dpskit_core::chip::S3MemoryFields {
        psram_cap: read_field_le::<u8>(PSRAM_CAP).into(),
        psram_cap_3: read_field_le::<u8>(PSRAM_CAP_3).into(),
        psram_vendor: read_field_le::<u8>(PSRAM_VENDOR).into(),
        flash_cap: read_field_le::<u8>(FLASH_CAP).into(),
        flash_vendor: read_field_le::<u8>(FLASH_VENDOR).into(),
        flash_type: read_field_le::<u8>(FLASH_TYPE).into(),
        pkg_version: read_field_le::<u8>(PKG_VERSION).into(),
    })
}

/// Maps the PSRAM the eFuses announce and adds it to the heap as external RAM.
#[cfg(feature = "esp32s3")]
pub fn init(psram: esp_hal::peripherals::PSRAM<'static>) {
    use dpskit_core::chip::{PsramBus, PSRAM_ADVICE};
    use esp_hal::psram::{Psram, PsramConfig, PsramMode, PsramSize};

    let memory = package();
    log::info!(
        "{}: {}, flash {}",
        memory.package,
        memory.psram_summary(),
        match memory.flash_bus {
            dpskit_core::chip::FlashBus::Octal => "octal",
            dpskit_core::chip::FlashBus::Quad => "quad",
        }
    );
    let Some(bus) = memory.psram_bus else {
        log::warn!("no PSRAM on this chip: TLS will use internal RAM only and may run out of heap (Wi-Fi needs it too); {PSRAM_ADVICE}");
        return;
    };
    let config = PsramConfig {
        mode: match bus {
            PsramBus::Octal => PsramMode::OctalSpi,
            PsramBus::Quad => PsramMode::QuadSpi,
        },
        size: PsramSize::Size(memory.psram_mb as usize * 1024 * 1024),
        ..Default::default()
    };
    let psram = Psram::new(psram, config);
    let (start, size) = psram.raw_parts();
    if size == 0 {
        log::warn!(
            "PSRAM: the eFuses announce {} but it did not answer; running on internal RAM only",
            memory.psram_summary()
        );
        return;
    }
    // SAFETY: the region is the mapped PSRAM, handed to the allocator once and never used
    // otherwise. Only what the heap policy sends there lives in it (TLS, large buffers);
    // small objects, and with them any atomics (which must not live in PSRAM on the S3),
    // stay in internal RAM.
    unsafe { crate::heap::add(start, size, true) };
    mark_present();
    log::info!("PSRAM: {} KB added to the heap", size / 1024);
}
