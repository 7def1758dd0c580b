//! `dpskit ports`, `dpskit inspect`, `dpskit write-config`: one board over serial.

use super::config::{build_image, ConfigFields};
use anyhow::{Context, Result};
use clap::Args;
use dpskit_factory::board::inspect::{self, BoardReport, ConfigState, Expectations, Level};
use dpskit_factory::board::ports;
use dpskit_factory::board::progress::BarProgress;
use dpskit_factory::board::Chip;
use dpskit_factory::board::{write, After, Before, BoardLink, LinkOptions};
use dpskit_factory::error::CheckFailed;
use std::path::PathBuf;

/// How to reach a board: shared by every board command.
#[derive(Args, Debug, Clone)]
pub struct PortArgs {
    /// Serial port of the board (see `dpskit ports`).
    #[arg(long, short = 'p')]
    pub port: String,
    /// Baud rate after connecting (the bootloader always starts at 115200).
    #[arg(long)]
    pub baud: Option<u32>,
    /// How to enter download mode.
    #[arg(long, value_enum, default_value = "default-reset")]
    pub before: Before,
    /// What to do when done.
    #[arg(long, value_enum, default_value = "hard-reset")]
    pub after: After,
    /// Upload espflash's flasher stub first. Off by default: for a 24 KB config the ROM
    /// loader, which writes compressed too, is faster (see `cargo bench --bench cold_board`),
    /// since the stub must be uploaded at 115200 baud.
    #[arg(long)]
    pub stub: bool,
    /// Partition table offset (CONFIG_PARTITION_TABLE_OFFSET).
    #[arg(long, default_value = "0x8000", value_parser = parse_u32)]
    pub partition_table_offset: u32,
}

impl PortArgs {
    pub fn link_options(&self, chip: Option<Chip>) -> LinkOptions {
        LinkOptions {
            port: self.port.clone(),
            baud: self.baud,
            before: self.before,
            after: self.after,
            use_stub: self.stub,
            chip,
        }
    }
}

#[derive(Args, Debug)]
pub struct PortsArgs {
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Name of the config partition.
    #[arg(long, default_value = "dps_cfg")]
    pub partition: String,
    /// Flag a config made for any other ID scope.
    #[arg(long)]
    pub expect_scope: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WriteConfigArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// The NVS image to write (from `dpskit config build`), or build one from the flags below.
    #[arg(long, value_name = "FILE", conflicts_with = "id_scope")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub fields: ConfigFields,
    /// Name of the config partition.
    #[arg(long, default_value = "dps_cfg")]
    pub partition: String,
    /// The chip expected on the port (anything else is refused).
    #[arg(long, default_value = "esp32s3", value_parser = parse_chip)]
    pub chip: Chip,
    #[arg(long)]
    pub json: bool,
}

pub fn ports(a: PortsArgs) -> Result<()> {
    let ports = ports::list().context("cannot list serial ports")?;
    let rows: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| match p.usb {
            Some(_) => serde_json::json!({
                "port": p.port,
                "vid_pid": p.vid_pid,
                "serial_number": p.serial_number,
                "product": p.product,
                "manufacturer": p.manufacturer,
                "esp_bridge": p.esp_bridge,
            }),
            None => serde_json::json!({ "port": p.port, "vid_pid": null, "esp_bridge": null }),
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no serial ports found");
    }
    for r in rows {
        let bridge = r["esp_bridge"]
            .as_str()
            .map(|b| format!("  <- looks like an ESP board ({b})"))
            .unwrap_or_default();
        println!(
            "{:<20} {:<10} {:<20} {}{}",
            r["port"].as_str().unwrap_or(""),
            r["vid_pid"].as_str().unwrap_or("-"),
            r["serial_number"].as_str().unwrap_or("-"),
            r["product"].as_str().unwrap_or("-"),
            bridge
        );
    }
    Ok(())
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let mut link = BoardLink::open(&a.port.link_options(None))?;
    let expect = Expectations {
        partition_table_offset: a.port.partition_table_offset,
        config_partition: a.partition.clone(),
        id_scope: a.expect_scope.clone(),
    };
    let report = inspect::inspect(&mut link, &expect)?;
    link.finish()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let fails = report
        .verdicts
        .iter()
        .filter(|v| v.level == Level::Fail)
        .count();
    if fails > 0 {
        return Err(CheckFailed(format!(
            "{fails} problem(s) on {}: not ready for Azure",
            report.port
        ))
        .into());
    }
    Ok(())
}

/// The human form of a report.
pub fn render(r: &BoardReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "Port:             {}", r.port);
    let _ = writeln!(
        s,
        "Chip:             {} (revision {})",
        r.chip,
        r.revision.as_deref().unwrap_or("?")
    );
    if let Some(m) = &r.embedded {
        let _ = writeln!(s, "Package:          {}", m.package);
    }
    let _ = writeln!(s, "Features:         {}", r.features.join(", "));
    let _ = writeln!(s, "Crystal:          {}", r.crystal);
    let _ = writeln!(s, "MAC:              {}", r.mac.as_deref().unwrap_or("?"));
    let _ = writeln!(s, "Flash (JEDEC):    {}", r.flash_size);
    if let Some(m) = &r.embedded {
        let psram = if m.psram_mb == 0 {
            "none".to_string()
        } else {
            format!("{} MB ({})", m.psram_mb, m.psram_vendor.unwrap_or("?"))
        };
        let _ = writeln!(s, "Embedded PSRAM:   {psram}");
    }
    if let Some(sec) = &r.security {
        let _ =
            writeln!(
            s,
            "Security:         secure boot {}, flash encryption {}, secure download {}, JTAG {}",
            on_off(sec.secure_boot),
            on_off(sec.flash_encryption),
            on_off(sec.secure_download_mode),
            if sec.jtag_disabled { "disabled" } else { "enabled" }
        );
    }
    let _ = writeln!(s, "\nPartition table at {:#x}:", r.partition_table_offset);
    match &r.partitions {
        Ok(rows) => {
            for p in rows {
                let flags = match (p.encrypted, p.readonly) {
                    (true, true) => " encrypted,readonly",
                    (true, false) => " encrypted",
                    (false, true) => " readonly",
                    _ => "",
                };
                let _ = writeln!(
                    s,
                    "  {:<10} {:<5} {:<9} {:#09x} {:#09x}{flags}",
                    p.name, p.kind, p.subtype, p.offset, p.size
                );
            }
        }
        Err(e) => {
            let _ = writeln!(s, "  {e}");
        }
    }
    if let Some(app) = &r.app {
        let _ = writeln!(s, "\nFirmware ({} at {:#x}):", app.partition, app.offset);
        if let Some(h) = &app.header {
            let mb = h.flash_size_mb.map_or("?".into(), |m| format!("{m} MB"));
            let mhz = h.flash_freq_mhz.map_or("?".into(), |m| format!("{m} MHz"));
            let _ = writeln!(
                s,
                "  image header: flash mode {}, {mb}, {mhz}",
                h.flash_mode
            );
        }
        match &app.descriptor {
            Ok(d) => {
                let _ = writeln!(s, "  project {}  version {}", d.project_name, d.version);
                let _ = writeln!(
                    s,
                    "  built {} {} with {}  secure version {}",
                    d.date, d.time, d.idf_ver, d.secure_version
                );
            }
            Err(e) => {
                let _ = writeln!(s, "  {e}");
            }
        }
    }
    if let Some(c) = &r.config {
        match c {
            ConfigState::Present { partition, config } => {
                let _ = writeln!(s, "\nConfig ({partition}):");
                let _ = writeln!(s, "  ID scope         {}", config.id_scope);
                let _ = writeln!(s, "  registration ID  {}", config.registration_id);
                let _ = writeln!(
                    s,
                    "  device key       sha256:{} (fingerprint)",
                    config.key_fingerprint
                );
                let _ = writeln!(s, "  DPS host         {}", config.dps_host);
                if let Some(ssid) = &config.wifi_ssid {
                    let _ = writeln!(s, "  Wi-Fi            {ssid}");
                }
                for ca in &config.root_cas {
                    let state = if ca.expired { "EXPIRED" } else { "valid" };
                    let _ = writeln!(
                        s,
                        "  root CA          {} (until {}, {state})",
                        ca.subject, ca.not_after
                    );
                }
            }
            ConfigState::Empty { partition } => {
                let _ = writeln!(s, "\nConfig ({partition}): empty");
            }
            ConfigState::Missing { partition, .. } => {
                let _ = writeln!(s, "\nConfig ({partition}): no such partition");
            }
            ConfigState::Invalid { partition, reason } => {
                let _ = writeln!(s, "\nConfig ({partition}): unreadable: {reason}");
            }
        }
    }
    let _ = writeln!(s, "\nVerdict:");
    for v in &r.verdicts {
        let tag = match v.level {
            Level::Ok => "  ok  ",
            Level::Warn => "  WARN",
            Level::Fail => "  FAIL",
        };
        let _ = writeln!(s, "{tag}  {}", v.message);
    }
    s
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn write_config(a: WriteConfigArgs) -> Result<()> {
    // Everything about the image is settled before the port is opened.
    let image = match (&a.image, a.fields.id_scope.is_some() || a.fields.registration_id.is_some()) {
        (Some(path), _) => {
            let image = std::fs::read(path).with_context(|| format!("--image: cannot read {}", path.display()))?;
            dpskit_factory::blob::nvs::decode_image(&image).map_err(|e| anyhow::anyhow!("--image: {}: {e}", path.display()))?;
            image
        }
        (None, true) => {
            let built = build_image(&a.fields)?;
            for w in &built.warnings {
                eprintln!("warning: {w}");
            }
            built.image
        }
        (None, false) => anyhow::bail!(
            "write-config: no image; give --image FILE, or --id-scope and --registration-id with a key source as for `dpskit config build`"
        ),
    };
    let mut link = BoardLink::open(&a.port.link_options(Some(a.chip)))?;
    let mut progress = BarProgress::for_port(&a.port.port, !a.json);
    let outcome = write::write_config(
        &mut link,
        a.port.partition_table_offset,
        &a.partition,
        &image,
        write::Proof::ReadBack,
        &mut progress,
    )?;
    progress.bar.finish();
    link.finish()?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else if let ConfigState::Present { config, .. } = &outcome.read_back {
        println!(
            "wrote {} bytes to {} at {:#x} on {}; MD5 {} verified; board holds {} (scope {}, key sha256:{})",
            outcome.bytes, outcome.partition, outcome.offset, a.port.port, outcome.md5, config.registration_id, config.id_scope, config.key_fingerprint
        );
    }
    Ok(())
}

/// Parses `0x8000` or `32768`.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (use e.g. 0x8000)"))
}

fn parse_chip(s: &str) -> Result<Chip, String> {
    s.parse::<Chip>()
        .map_err(|_| format!("{s:?} is not a chip name (e.g. esp32s3, esp32c3)"))
}
