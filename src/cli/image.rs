//! `dpskit flash-image`: one board's complete flash (bootloader, partition table, app from a
//! firmware ELF, config image) as a single file.

use anyhow::{anyhow, Result};
use dpskit_factory::files::write_private_file;
use dpskit_factory::flash_image::{self, Spec, CONFIG_PARTITION};
use std::path::PathBuf;

/// The partition table dpskit's config images are made for.
const TEMPLATE_TABLE: &str = include_str!("../../templates/partitions.csv");

#[derive(clap::Args, Debug)]
pub struct FlashImageArgs {
    /// The firmware ELF (e.g. firmware/target/…/release/dpskit-firmware).
    #[arg(long, value_name = "ELF")]
    pub firmware: PathBuf,
    /// The board's config image (`dpskit config build`); without it the partition stays
    /// erased and the firmware waits for `dpskit write-config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Partition table as ESP-IDF CSV (default: templates/partitions.csv, built in).
    #[arg(long, value_name = "CSV")]
    pub partition_table: Option<PathBuf>,
    /// Chip the firmware is built for.
    #[arg(long, default_value = "esp32s3", value_parser = ["esp32s3", "esp32c3", "esp32c6"])]
    pub chip: String,
    /// Flash size of the board: 2MB … 128MB (an N32R16V module has 32MB).
    #[arg(long, default_value = "4MB")]
    pub flash_size: String,
    /// Flash mode in the image headers: dio for quad flash, dout for octal flash
    /// (N32R16V and other `…V` modules), as ESP-IDF does.
    #[arg(long, default_value = "dio", value_parser = ["dio", "dout", "qio", "qout"])]
    pub flash_mode: String,
    /// The partition the config image goes to.
    #[arg(long, default_value = CONFIG_PARTITION)]
    pub config_partition: String,
    /// Where to write the image (readable by you only: the config holds the device key).
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(a: FlashImageArgs) -> Result<()> {
    let read = |path: &PathBuf, what: &str| {
        std::fs::read(path).map_err(|e| anyhow!("{what} {}: cannot read ({e})", path.display()))
    };
    let elf = read(&a.firmware, "--firmware")?;
    let config = a.config.as_ref().map(|p| read(p, "--config")).transpose()?;
    let table = match &a.partition_table {
        Some(p) => String::from_utf8(read(p, "--partition-table")?)
            .map_err(|_| anyhow!("--partition-table {}: not a CSV text file", p.display()))?,
        None => TEMPLATE_TABLE.to_string(),
    };
    let chip = flash_image::parse_chip(&a.chip)
        .ok_or_else(|| anyhow!("--chip {:?}: use esp32s3, esp32c3 or esp32c6", a.chip))?;
    let flash_size = flash_image::parse_flash_size(&a.flash_size).ok_or_else(|| {
        anyhow!(
            "--flash-size {:?}: use 2MB, 4MB, 8MB, 16MB, 32MB, 64MB or 128MB",
            a.flash_size
        )
    })?;
    let flash_mode = flash_image::parse_flash_mode(&a.flash_mode).ok_or_else(|| {
        anyhow!(
            "--flash-mode {:?}: use dio, dout, qio or qout",
            a.flash_mode
        )
    })?;
    let image = flash_image::build(&Spec {
        chip,
        firmware_elf: &elf,
        partition_table_csv: &table,
        config_image: config.as_deref(),
        config_partition: &a.config_partition,
        flash_size,
        flash_mode,
    })?;
    write_private_file(&a.output, &image.bytes)?;
    println!(
        "{}: {} bytes for {} ({} flash, {} mode)",
        a.output.display(),
        image.bytes.len(),
        a.chip,
        a.flash_size,
        a.flash_mode
    );
    for (what, at, len) in &image.parts {
        println!("  {at:#08x}  {len:>8} bytes  {what}");
    }
    Ok(())
}
