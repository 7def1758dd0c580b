//! The heap, and which RAM each allocation gets.
//!
//! Policy: internal RAM is for Wi-Fi (esp-radio asks for internal memory explicitly), DMA
//! and small objects; external RAM (PSRAM on the S3) takes what TLS and MQTT need in bulk.
//! So mbedTLS allocates through [`tls_calloc`] (external first, for everything it
//! allocates: record buffers, handshake state, certificate parsing), and every other
//! allocation of at least [`EXTERNAL_FROM`] bytes (MQTT read buffers, twin documents, C2D
//! bodies) also tries external RAM first. Without PSRAM, or when it is full, everything
//! falls back to internal RAM. esp-alloc alone would serve an allocation from the first
//! region with room in the order they were added — internal first — and TLS would eat the
//! RAM Wi-Fi needs.
//!
//! Regions (esp-alloc takes at most three): the RAM the second-stage bootloader used
//! (reclaimed after boot), a static internal part, and PSRAM (S3) — or, with the feature
//! `emulated-psram`, a static internal buffer registered *as* external, so Espressif's QEMU
//! (which has no PSRAM for the C3) shows the policy at work.
//!
//! The allocator also keeps the numbers the device reports: bytes in use and the peak, for
//! internal and external RAM separately.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::Cell;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::addr_of_mut;
use critical_section::Mutex;
use esp_alloc::{HeapRegion, MemoryCapability, HEAP};

/// Allocations this large or larger prefer external RAM.
pub const EXTERNAL_FROM: usize = 1024;

/// Internal heap besides the reclaimed bootloader RAM, in KB. The S3 has ~334 KB of data
/// RAM and its TLS lives in PSRAM, so Wi-Fi gets a generous internal heap; the C3/C6 builds
/// stay within their static-RAM budget.
#[cfg(feature = "esp32s3")]
const INTERNAL_KB: usize = 160;
#[cfg(not(feature = "esp32s3"))]
const INTERNAL_KB: usize = 48;
/// RAM the bootloader used, free once the app runs.
const RECLAIMED_KB: usize = 64;
/// Size of the stand-in for PSRAM in the QEMU build.
#[cfg(feature = "emulated-psram")]
const EMULATED_PSRAM_KB: usize = 96;

#[derive(Clone, Copy, Default)]
struct Counts {
    internal: usize,
    internal_peak: usize,
    external: usize,
    external_peak: usize,
}

/// External RAM's address range (start, end), once added.
static EXTERNAL: Mutex<Cell<(usize, usize)>> = Mutex::new(Cell::new((0, 0)));
static COUNTS: Mutex<Cell<Counts>> = Mutex::new(Cell::new(Counts {
    internal: 0,
    internal_peak: 0,
    external: 0,
    external_peak: 0,
}));

fn is_external(p: *mut u8) -> bool {
    let (start, end) = critical_section::with(|cs| EXTERNAL.borrow(cs).get());
    (start..end).contains(&(p as usize))
}

fn count(p: *mut u8, size: usize, add: bool) {
    let external = is_external(p);
    critical_section::with(|cs| {
        let cell = COUNTS.borrow(cs);
        let mut c = cell.get();
        let (used, peak) = if external {
            (&mut c.external, &mut c.external_peak)
        } else {
            (&mut c.internal, &mut c.internal_peak)
        };
        if add {
            *used += size;
            *peak = (*peak).max(*used);
        } else {
            *used = used.saturating_sub(size);
        }
        cell.set(c);
    });
}

/// Allocates, trying external RAM first when `prefer_external`.
unsafe fn allocate(layout: Layout, prefer_external: bool) -> *mut u8 {
    let mut p = core::ptr::null_mut();
    if prefer_external {
        // SAFETY: as GlobalAlloc::alloc (the caller passes a non-zero layout).
        p = unsafe { HEAP.alloc_caps(MemoryCapability::External.into(), layout) };
    }
    if p.is_null() {
        // Any region, in the order added: internal first.
        p = unsafe { HEAP.alloc_caps(Default::default(), layout) };
    }
    if !p.is_null() {
        count(p, layout.size(), true);
    }
    p
}

/// The global allocator: esp-alloc's heap under the policy above.
pub struct Policy;

unsafe impl GlobalAlloc for Policy {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, layout.size() >= EXTERNAL_FROM) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(ptr, layout.size(), false);
        unsafe { HEAP.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Policy = Policy;

/// Adds the internal regions (and the emulated external one). Call first thing at boot.
pub fn init() {
    #[esp_hal::ram(reclaimed)]
    static mut RECLAIMED: [MaybeUninit<u8>; RECLAIMED_KB * 1024] =
        [MaybeUninit::uninit(); RECLAIMED_KB * 1024];
    static mut INTERNAL: [u8; INTERNAL_KB * 1024] = [0; INTERNAL_KB * 1024];
    // SAFETY: each static buffer is handed to the allocator once, here, and never touched
    // otherwise.
    unsafe {
        add(addr_of_mut!(RECLAIMED).cast(), RECLAIMED_KB * 1024, false);
        add(addr_of_mut!(INTERNAL).cast(), INTERNAL_KB * 1024, false);
    }
    #[cfg(feature = "emulated-psram")]
    {
        static mut STAND_IN: [u8; EMULATED_PSRAM_KB * 1024] = [0; EMULATED_PSRAM_KB * 1024];
        // SAFETY: as above.
        unsafe {
            add(
                addr_of_mut!(STAND_IN).cast(),
                EMULATED_PSRAM_KB * 1024,
                true,
            )
        };
        crate::psram::mark_present();
        log::info!(
            "heap: {EMULATED_PSRAM_KB} KB of internal RAM stand in for PSRAM (emulator build)"
        );
    }
}

/// Hands `size` bytes at `start` to the allocator.
///
/// # Safety
/// The memory is unused and stays the allocator's for good.
pub unsafe fn add(start: *mut u8, size: usize, external: bool) {
    let caps = if external {
        critical_section::with(|cs| {
            EXTERNAL
                .borrow(cs)
                .set((start as usize, start as usize + size))
        });
        MemoryCapability::External
    } else {
        MemoryCapability::Internal
    };
    unsafe { HEAP.add_region(HeapRegion::new(start, size, caps.into())) };
}

/// The most heap in use at once since boot, in bytes: (internal, external).
pub fn peaks() -> (usize, usize) {
    let c = critical_section::with(|cs| COUNTS.borrow(cs).get());
    (c.internal_peak, c.external_peak)
}

/// mbedTLS's allocations carry their size in front, since `free` gets only the pointer.
const HEADER: usize = 8;

unsafe extern "C" fn tls_calloc(n: usize, size: usize) -> *mut c_void {
    let Some(total) = n
        .checked_mul(size)
        .and_then(|bytes| bytes.checked_add(HEADER))
    else {
        return core::ptr::null_mut();
    };
    let Ok(layout) = Layout::from_size_align(total, HEADER) else {
        return core::ptr::null_mut();
    };
    // SAFETY: total ≥ HEADER > 0.
    let p = unsafe { allocate(layout, true) };
    if p.is_null() {
        return p.cast();
    }
    // SAFETY: p points to `total` bytes, 8-aligned.
    unsafe {
        core::ptr::write_bytes(p, 0, total);
        p.cast::<usize>().write(total);
        p.add(HEADER).cast()
    }
}

unsafe extern "C" fn tls_free(ptr: *mut c_void) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `ptr` came from tls_calloc, which put the total size HEADER bytes before it.
    unsafe {
        let base = ptr.cast::<u8>().sub(HEADER);
        let total = base.cast::<usize>().read();
        let layout = Layout::from_size_align_unchecked(total, HEADER);
        ALLOCATOR.dealloc(base, layout);
    }
}

/// Makes mbedTLS allocate under the policy. Call before the first TLS object exists.
pub fn route_tls_allocations() {
    // SAFETY: called once at boot, before mbedTLS has allocated anything.
    unsafe {
        mbedtls_rs::sys::mbedtls_platform_set_calloc_free(Some(tls_calloc), Some(tls_free));
    }
}
