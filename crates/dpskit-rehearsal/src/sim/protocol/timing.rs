//! How long the chip takes to act on a command, beyond the bytes on the wire (which the board's
//! line pacing adds): the latency model the benchmarks on virtual boards use so that their
//! figures predict the real ROM. Pure arithmetic — the I/O layer does the waiting.
//!
//! [`RomTiming::esp32s3_rom_in_qemu`] holds figures measured on Espressif's ESP32-S3 ROM in
//! their emulator (`benches/cold_board.rs -- calibrate` prints them again, and the model's error
//! per operation, for a fresh measurement).

use std::time::Duration;

/// Per-command cost of the loader, separate from the wire time of its request and reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RomTiming {
    /// From a request's last byte to its reply's first, for a command that touches no flash
    /// (READ_REG, SYNC, SPI_ATTACH, …).
    pub turnaround: Duration,
    /// What the loader spends on each byte it receives beyond the wire time (its UART FIFO
    /// and software SLIP decoding).
    pub per_byte_in: Duration,
    /// `SYNC`, on top of the turnaround (the ROM answers it eight times).
    pub sync: Duration,
    /// One `READ_FLASH_SLOW` (64 bytes through the ROM's SPI flash routines), on top of the
    /// turnaround.
    pub read_slow: Duration,
    /// Erasing one 4 KiB sector (`FLASH_BEGIN`: the ROM erases the region up front).
    pub erase_per_sector: Duration,
    /// Programming 1 KiB that is not erased flash.
    pub program_per_kib: Duration,
    /// 1 KiB of 0xFF pages in the data: inflated and checked, but not programmed.
    pub erased_per_kib: Duration,
    /// `SPI_FLASH_MD5` per KiB hashed.
    pub md5_per_kib: Duration,
}

impl RomTiming {
    /// The ESP32-S3 ROM loader in Espressif's QEMU (`../shared/tools/esp-qemu`), at any baud
    /// rate (the wire time is the line's).
    pub fn esp32s3_rom_in_qemu() -> RomTiming {
        RomTiming {
            turnaround: Duration::from_micros(200),
            per_byte_in: Duration::from_nanos(0),
            sync: Duration::from_micros(4_000),
            read_slow: Duration::from_micros(4_500),
            erase_per_sector: Duration::from_micros(1_300),
            program_per_kib: Duration::from_micros(30_000),
            erased_per_kib: Duration::from_micros(350),
            md5_per_kib: Duration::from_micros(1_000),
        }
    }
}

/// What one command made the chip do, for [`RomTiming::cost`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub bytes_in: u64,
    pub sync: bool,
    pub read_slow: bool,
    pub sectors_erased: u64,
    pub bytes_programmed: u64,
    /// Bytes of the write that were whole pages of 0xFF.
    pub bytes_erased_pages: u64,
    pub bytes_hashed: u64,
}

impl RomTiming {
    /// How long the chip is busy before it answers.
    pub fn cost(&self, w: &Work) -> Duration {
        let per_kib = |d: Duration, bytes: u64| {
            Duration::from_nanos((d.as_nanos() as u64).saturating_mul(bytes) / 1024)
        };
        let mut t =
            self.turnaround + self.per_byte_in * (w.bytes_in.min(u64::from(u32::MAX)) as u32);
        if w.read_slow {
            t += self.read_slow;
        }
        if w.sync {
            t += self.sync;
        }
        t += self.erase_per_sector * (w.sectors_erased.min(u64::from(u32::MAX)) as u32);
        t += per_kib(self.program_per_kib, w.bytes_programmed);
        t += per_kib(self.erased_per_kib, w.bytes_erased_pages);
        t += per_kib(self.md5_per_kib, w.bytes_hashed);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_adds_up_the_work() {
        let t = RomTiming {
            turnaround: Duration::from_millis(1),
            per_byte_in: Duration::from_micros(1),
            sync: Duration::from_millis(3),
            read_slow: Duration::from_millis(2),
            erase_per_sector: Duration::from_millis(10),
            program_per_kib: Duration::from_millis(4),
            erased_per_kib: Duration::from_millis(2),
            md5_per_kib: Duration::from_millis(1),
        };
        assert_eq!(t.cost(&Work::default()), Duration::from_millis(1));
        let w = Work {
            bytes_in: 1000,
            sync: false,
            read_slow: true,
            sectors_erased: 6,
            bytes_programmed: 2048,
            bytes_erased_pages: 1024,
            bytes_hashed: 512,
        };
        // 1 + 1 + 2 + 60 + 8 + 2 + 0.5 ms
        assert_eq!(t.cost(&w), Duration::from_micros(74_500));
    }
}
