//! Command-line interface: clap definitions and thin handlers that call the libraries.
//! Each file here is one family of commands, in pipeline order.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod bench;
pub mod board;
pub mod config;
pub mod image;
pub mod key_args;
pub mod keys;

#[cfg(feature = "rehearsal")]
pub mod cloud;
#[cfg(all(feature = "rehearsal", unix))]
pub mod demo;
#[cfg(all(feature = "rehearsal", not(unix)))]
#[path = "unix_only.rs"]
pub mod demo;
#[cfg(feature = "rehearsal")]
pub mod device;
#[cfg(all(feature = "rehearsal", unix))]
pub mod sim;
#[cfg(all(feature = "rehearsal", not(unix)))]
#[path = "unix_only.rs"]
pub mod sim;

/// dpskit — from the factory bench to Azure IoT Hub (DPS symmetric-key group enrollment).
#[derive(Parser, Debug)]
#[command(name = "dpskit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole flow on one PC: virtual boards, the factory bench, the emulator, devices.
    #[cfg(feature = "rehearsal")]
    #[cfg_attr(
        not(unix),
        command(
            about = "The whole flow on one PC (Unix only: virtual boards need pseudo-terminals)"
        )
    )]
    Demo(demo::DemoArgs),
    /// Derive per-device keys from the enrollment group key.
    Derive(keys::DeriveArgs),
    /// Check device keys computed elsewhere (PowerShell, az CLI) and explain mismatches.
    Verify(keys::VerifyArgs),
    /// Generate or inspect SAS tokens for DPS and IoT Hub.
    #[command(subcommand)]
    Sas(keys::SasCommand),
    /// Build or decode a board's config blob (an ESP-IDF NVS partition image).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// List serial ports and mark the ones that look like ESP boards.
    Ports(board::PortsArgs),
    /// Report what is on a board (chip, PSRAM, security, partitions, firmware, config).
    Inspect(board::InspectArgs),
    /// Write a board's whole flash as one file: bootloader, partition table, app, config.
    FlashImage(image::FlashImageArgs),
    /// Write a config image into a board's config partition, verified by MD5.
    WriteConfig(board::WriteConfigArgs),
    /// Start virtual ESP32-S3 boards in ROM download mode on pseudo-terminals.
    #[cfg(feature = "rehearsal")]
    #[cfg_attr(
        not(unix),
        command(
            about = "Virtual ESP32-S3 boards (Unix only: they need pseudo-terminals; use real boards on COM ports here)"
        )
    )]
    Sim(sim::SimArgs),
    /// Run a virtual device from a config image, or check an image before flashing it.
    #[cfg(feature = "rehearsal")]
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// Run a local DPS + IoT Hub (MQTT over TLS on 127.0.0.1:8883) to rehearse against.
    #[cfg(feature = "rehearsal")]
    Emulate(cloud::EmulateArgs),
    /// Act as the cloud towards the local emulator: events, C2D, methods, twins, devices.
    #[cfg(feature = "rehearsal")]
    #[command(subcommand)]
    Cloud(cloud::CloudCommand),
    /// Start a factory station: write a commented station.toml, manifest.csv, partitions.csv.
    Init(bench::InitArgs),
    /// Provision boards in parallel from a station file, recording each in the ledger.
    Provision(bench::ProvisionArgs),
    /// Read the station ledger: list, show one board, export for audits.
    #[command(subcommand)]
    Ledger(bench::LedgerCommand),
}

/// Resolves when Ctrl-C is pressed: [`dpskit_factory::interrupt`], the one Ctrl-C mechanism,
/// seen from async code.
#[cfg(feature = "rehearsal")]
pub async fn ctrl_c() -> anyhow::Result<()> {
    dpskit_factory::interrupt::install()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A plain thread, not spawn_blocking: the runtime must not wait for it when it shuts down.
    std::thread::spawn(move || {
        let _ = dpskit_factory::interrupt::wait();
        let _ = tx.send(());
    });
    let _ = rx.await;
    Ok(())
}

/// Parses the process arguments, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(dpskit_factory::error::exit_code(&err))
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Derive(a) => keys::derive(a),
        Command::Verify(a) => keys::verify(a),
        Command::Sas(c) => keys::sas(c),
        Command::Config(c) => config::run(c),
        Command::Ports(a) => board::ports(a),
        Command::Inspect(a) => board::inspect(a),
        Command::WriteConfig(a) => board::write_config(a),
        Command::FlashImage(a) => image::run(a),
        #[cfg(feature = "rehearsal")]
        Command::Sim(a) => sim::run(a),
        #[cfg(feature = "rehearsal")]
        Command::Device(c) => device::run(c),
        #[cfg(feature = "rehearsal")]
        Command::Emulate(a) => cloud::emulate(a),
        #[cfg(feature = "rehearsal")]
        Command::Cloud(c) => cloud::run(c),
        Command::Init(a) => bench::init(a),
        Command::Provision(a) => bench::provision(a),
        Command::Ledger(c) => bench::ledger(c),
        #[cfg(feature = "rehearsal")]
        Command::Demo(a) => demo::run(a),
    }
}
