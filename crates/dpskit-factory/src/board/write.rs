//! Writing a config image into a board's config partition, and proving it landed.

use super::inspect::{config_state, ConfigState};
use super::link::BoardLink;
use super::partition;
use anyhow::{bail, Result};
use espflash::target::ProgressCallbacks;

/// What a successful write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteOutcome {
    pub partition: String,
    pub offset: u32,
    pub bytes: usize,
    /// MD5 of the written region; the board's own MD5 of it matched (espflash's verify).
    pub md5: String,
    /// Read back off the board (stub) or, in ROM mode, the verified image decoded.
    pub read_back: ConfigState,
}

/// How a write proves itself beyond the board's MD5 of the written region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Also read the partition back over the line and decode it (`write-config`).
    ReadBack,
    /// The MD5 match is the proof; decode the bytes that were sent (the bench: a 24 KB
    /// read-back per board would double its serial traffic and prove nothing more).
    Md5,
}

/// Finds the config partition, writes `image`, verifies it by MD5 and decodes it back.
/// Nothing else on the flash is touched.
pub fn write_config(
    link: &mut BoardLink,
    table_offset: u32,
    partition_name: &str,
    image: &[u8],
    proof: Proof,
    progress: &mut dyn ProgressCallbacks,
) -> Result<WriteOutcome> {
    let table = partition::parse(&link.read_flash(table_offset, partition::TABLE_SIZE)?)?;
    let p = partition::config_partition(&table, partition_name, Some(image.len()))?;
    let (offset, size) = (p.offset(), p.size());
    // Fill the whole partition so no stale NVS page from an older config survives.
    let mut full = image.to_vec();
    full.resize(size as usize, 0xFF);
    // espflash asks the board for the region's MD5 and fails the write on a mismatch.
    link.write_verified(offset, &full, progress)?;
    let expected: [u8; 16] =
        md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(&full)).into();
    let read_back = if link.uses_stub() && proof == Proof::ReadBack {
        config_state(partition_name, &link.read_flash(offset, size)?)
    } else {
        // The board's MD5 matched (espflash checks it before FLASH_END, after which the ROM
        // loader has left download mode), so the flash holds exactly `full`.
        config_state(partition_name, &full)
    };
    if !matches!(read_back, ConfigState::Present { .. }) {
        bail!("read-back of {partition_name} does not decode as a dpskit config ({read_back:?}); the board is NOT provisioned");
    }
    Ok(WriteOutcome {
        partition: partition_name.into(),
        offset,
        bytes: full.len(),
        md5: hex::encode(expected),
        read_back,
    })
}
