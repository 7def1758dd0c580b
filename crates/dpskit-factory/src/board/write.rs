//! Writing a config image into a board's config partition, and proving it landed.

use super::error::BoardError;
use super::inspect::{config_state, ConfigState};
use super::link::BoardLink;
use super::partition;
use espflash::target::ProgressCallbacks;

/// What a successful write did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WriteOutcome {
    pub partition: String,
    pub offset: u32,
    pub bytes: usize,
    /// MD5 of the written region; the board's own MD5 of it matched.
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

/// The config partition on one board: where the image goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub partition: String,
    pub offset: u32,
    pub size: u32,
}

/// Finds the config partition in the board's table, writes `image`, verifies it by MD5 and
/// decodes it back. Nothing else on the flash is touched.
pub fn write_config(
    link: &mut BoardLink,
    table_offset: u32,
    partition_name: &str,
    image: &[u8],
    proof: Proof,
    progress: &mut dyn ProgressCallbacks,
) -> Result<WriteOutcome, BoardError> {
    let table = partition::parse(&link.read_partition_table(table_offset)?)?;
    partition::check_fits(&table, link.flash_size()?)?;
    let p = partition::config_partition(&table, partition_name, Some(image.len()))?;
    let target = Target {
        partition: partition_name.into(),
        offset: p.offset(),
        size: p.size(),
    };
    write_config_at(link, &target, image, proof, progress)
}

/// Writes `image` into a config partition already found (by an inspection of this board on
/// this link), verifies it by MD5 and decodes it back.
pub fn write_config_at(
    link: &mut BoardLink,
    target: &Target,
    image: &[u8],
    proof: Proof,
    progress: &mut dyn ProgressCallbacks,
) -> Result<WriteOutcome, BoardError> {
    let Target {
        partition: name,
        offset,
        size,
    } = target;
    if (*size as usize) < image.len() {
        return Err(partition::config_partition_too_small(name, *size, image.len()).into());
    }
    // Nothing the board reported is allocated before it is known to fit its flash.
    if u64::from(*offset) + u64::from(*size) > u64::from(link.flash_size()?) {
        return Err(BoardError::OutOfFlash {
            what: "the config partition",
            offset: *offset,
            len: *size,
            flash_size: link.flash_size()?,
        });
    }
    // Fill the whole partition so no stale NVS page from an older config survives.
    let mut full = image.to_vec();
    full.resize(*size as usize, 0xFF);
    // The board's MD5 of the region is checked against `full` before this returns.
    link.write_verified(*offset, &full, progress)?;
    let expected: [u8; 16] =
        md5::Digest::finalize(<md5::Md5 as md5::Digest>::new_with_prefix(&full)).into();
    let read_back = if link.uses_stub() && proof == Proof::ReadBack {
        config_state(name, &link.read_flash(*offset, *size)?)
    } else {
        // The board's MD5 matched, so the flash holds exactly `full`.
        config_state(name, &full)
    };
    if !matches!(read_back, ConfigState::Present { .. }) {
        return Err(BoardError::NotAConfig {
            partition: name.clone(),
            detail: format!("{read_back:?}"),
        });
    }
    Ok(WriteOutcome {
        partition: name.clone(),
        offset: *offset,
        bytes: full.len(),
        md5: hex::encode(expected),
        read_back,
    })
}
