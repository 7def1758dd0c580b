//! Command-line interface: clap definitions and thin handlers that call the library.
//! Each file here is one family of commands, in pipeline order.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

pub mod board;
pub mod config;
pub mod keys;
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
    /// Write a config image into a board's config partition, verified by MD5.
    WriteConfig(board::WriteConfigArgs),
    /// Start virtual ESP32-S3 boards in ROM download mode on pseudo-terminals.
    Sim(sim::SimArgs),
}

/// Parses the process arguments, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(crate::error::exit_code(&err))
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
        Command::Sim(a) => sim::run(a),
    }
}
