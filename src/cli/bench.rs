//! `dpskit init`, `dpskit provision`, `dpskit ledger`: the factory bench.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use dpskit_factory::error::{CheckFailed, EnvironmentFailed};
use dpskit_factory::files::write_file;
use dpskit_factory::station::ledger::{
    export, BoardRow, Filter, Ledger, LedgerError, LedgerTarget, Status, EXPORT_COLUMNS,
};
use dpskit_factory::station::provision::{self, BatchReport, RunOptions};
use dpskit_factory::station::{self, Station};
use dpskit_factory::station::{templates, watch};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Folder for the new station (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite station.toml, manifest.csv and partitions.csv if they exist.
    #[arg(long)]
    pub force: bool,
    /// Share one PostgreSQL ledger with the factory's other stations
    /// (postgresql://user@host/db?sslmode=require; no password in it). Without it the
    /// station keeps its own SQLite ledger and its IDs carry {station}.
    #[arg(long, value_name = "URL")]
    pub ledger_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct ProvisionArgs {
    /// The station file (from `dpskit init`).
    #[arg(long, default_value = "station.toml", value_name = "FILE")]
    pub station: PathBuf,
    /// Provision these ports instead of the station's [ports] (repeatable).
    #[arg(long = "port", short = 'p', value_name = "PORT")]
    pub ports: Vec<String>,
    /// Line mode: keep running and provision each board as its port appears; Ctrl-C stops.
    #[arg(long)]
    pub watch: bool,
    /// Connect, inspect and check the gates; show the IDs boards would get; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Rewrite boards the ledger marks done (same ID), and boards holding a foreign config.
    #[arg(long)]
    pub force: bool,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Where the ledger is: the station file's ([station] ledger or [ledger] url), or a file.
#[derive(Args, Debug, Clone)]
pub struct LedgerSource {
    /// The station file whose ledger to read.
    #[arg(long, default_value = "station.toml", value_name = "FILE")]
    pub station: PathBuf,
    /// Read this ledger file instead.
    #[arg(long, value_name = "FILE")]
    pub ledger: Option<PathBuf>,
}

/// Which boards to show.
#[derive(Args, Debug, Clone)]
pub struct LedgerFilterArgs {
    /// Only boards with this status (allocated, writing, done, failed).
    #[arg(long)]
    pub status: Option<String>,
    /// Only boards given their ID by this station (a shared ledger holds every station's).
    #[arg(long, value_name = "NAME")]
    pub station_name: Option<String>,
    /// Only boards last changed on or after this day (UTC, 2026-03-01) or instant (RFC 3339).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Only boards last changed on or before this day (UTC) or before this instant.
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
}

impl LedgerFilterArgs {
    fn filter(&self) -> Result<Filter> {
        Ok(Filter {
            station: self.station_name.clone(),
            status: self
                .status
                .as_deref()
                .map(Filter::parse_status)
                .transpose()
                .map_err(|e| anyhow!(e))?,
            since: self
                .since
                .as_deref()
                .map(Filter::parse_since)
                .transpose()
                .map_err(|e| anyhow!(e))?,
            until: self
                .until
                .as_deref()
                .map(Filter::parse_until)
                .transpose()
                .map_err(|e| anyhow!(e))?,
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum LedgerCommand {
    /// One line per board: registration ID, MAC, status.
    List {
        #[command(flatten)]
        source: LedgerSource,
        #[command(flatten)]
        filter: LedgerFilterArgs,
    },
    /// Everything recorded about one board, with its attempts.
    Show {
        #[command(flatten)]
        source: LedgerSource,
        /// Registration ID or MAC.
        board: String,
    },
    /// Every board, for audits (no secrets: the ledger holds none).
    Export {
        #[command(flatten)]
        source: LedgerSource,
        #[command(flatten)]
        filter: LedgerFilterArgs,
        /// CSV for spreadsheets (cells that would run as formulas get a leading ').
        #[arg(long, conflicts_with = "json", required_unless_present = "json")]
        csv: bool,
        #[arg(long)]
        json: bool,
        /// Write to FILE instead of standard output.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Copy a station's SQLite ledger into the shared ledger its station file names
    /// ([ledger] url): every board and its history, refusing conflicts (nothing is copied
    /// then). Safe to run again.
    Migrate {
        /// The station file naming the shared ledger.
        #[arg(long, default_value = "station.toml", value_name = "FILE")]
        station: PathBuf,
        /// The SQLite ledger to copy.
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
}

/// `dpskit init [DIR]`: a commented station.toml, manifest.csv and partitions.csv.
pub fn init(a: InitArgs) -> Result<()> {
    let station_toml = match &a.ledger_url {
        None => templates::STATION_TOML.to_string(),
        Some(url) => {
            station::check_pg_url(url).map_err(|e| anyhow!("--ledger-url: {e}"))?;
            templates::shared_ledger(url)
        }
    };
    let files = [
        ("station.toml", station_toml.as_str()),
        ("manifest.csv", templates::MANIFEST_CSV),
        ("partitions.csv", templates::PARTITIONS_CSV),
    ];
    if a.dir.exists() && !a.dir.is_dir() {
        bail!(
            "DIR: {} is a file; give a folder for the new station",
            a.dir.display()
        );
    }
    let existing: Vec<String> = files
        .iter()
        .map(|(name, _)| a.dir.join(name))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() && !a.force {
        bail!(
            "init: {} already exist{}; pass --force to overwrite, or pick another folder",
            existing.join(", "),
            if existing.len() == 1 { "s" } else { "" }
        );
    }
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("DIR: cannot create {}", a.dir.display()))?;
    for (name, text) in files {
        write_file(&a.dir.join(name), text.as_bytes(), 0o644)?;
    }
    let d = a.dir.display();
    println!("wrote {d}/station.toml, {d}/manifest.csv and {d}/partitions.csv");
    println!("next:");
    println!("  1. edit {d}/station.toml: [dps] id_scope, [group_key], [ids], [gates], [ports]");
    println!("  2. build the firmware with {d}/partitions.csv (CONFIG_PARTITION_TABLE_CUSTOM=y)");
    println!("  3. export DPSKIT_GROUP_KEY (or set [group_key] file), then check everything:");
    println!("       dpskit provision --station {d}/station.toml --dry-run");
    println!("  4. dpskit provision --station {d}/station.toml   (or --watch on the line)");
    println!("  5. dpskit ledger export --station {d}/station.toml --csv -o audit.csv");
    Ok(())
}

/// `dpskit provision`.
pub fn provision(a: ProvisionArgs) -> Result<()> {
    let station = Station::load(&a.station)?;
    if !a.watch {
        let missing: Vec<&str> = a
            .ports
            .iter()
            .filter(|p| !Path::new(p).exists())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            bail!(
                "--port: {} does not exist; list serial ports with `dpskit ports`",
                missing.join(", ")
            );
        }
    }
    if a.watch
        && a.ports.is_empty()
        && station.ports.usb.is_empty()
        && station.ports.paths.is_empty()
    {
        bail!("[ports]: no usb filters and no paths, so --watch would wait forever; set [ports] usb or paths, or give --port PORT");
    }
    for w in &station.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "station {}: ID scope {}, group key from {}, ledger {}{}",
        station.name,
        station.id_scope,
        station.group_key_source,
        station.ledger,
        if a.dry_run {
            " (dry run: not written)"
        } else {
            ""
        }
    );
    let opts = RunOptions {
        force: a.force,
        dry_run: a.dry_run,
        progress: true,
    };
    let stop = dpskit_factory::interrupt::install()?;
    let report = if a.watch {
        watch::run_watch(&station, &a.ports, opts, stop, Duration::from_millis(100))?
    } else {
        let ports = if a.ports.is_empty() {
            provision::discover_ports(&station.ports, true)
        } else {
            a.ports.clone()
        };
        if ports.is_empty() {
            bail!(
                "[ports]: no serial port matches (usb filters and paths found nothing); plug the boards in, check `dpskit ports`, or give --port PORT"
            );
        }
        provision::run_batch(&station, &ports, opts, stop)?
    };
    print_report(&report, a.json)?;
    if let Some(fault) = &report.ledger_fault {
        return Err(EnvironmentFailed(format!(
            "the ledger failed during the batch ({fault}); boards not recorded as done were not counted as provisioned, and the next run verifies them by MD5 and finishes them"
        ))
        .into());
    }
    let failed = report.failures();
    if failed > 0 {
        return Err(CheckFailed(format!(
            "{failed} of {} board(s) not provisioned; fix what the table says and run again (provisioned boards are skipped)",
            report.results.len()
        ))
        .into());
    }
    Ok(())
}

fn print_report(report: &BatchReport, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

fn open_ledger(source: &LedgerSource) -> Result<Ledger> {
    let target = match &source.ledger {
        Some(p) => LedgerTarget::Sqlite(p.clone()),
        None => {
            let loc = station::ledger_location(&source.station)?;
            for w in &loc.warnings {
                eprintln!("warning: {w}");
            }
            loc.ledger
        }
    };
    Ok(Ledger::open_target_read_only(&target)?)
}

/// `dpskit ledger list|show|export|migrate`.
pub fn ledger(c: LedgerCommand) -> Result<()> {
    match c {
        LedgerCommand::List { source, filter } => {
            let filter = filter.filter()?;
            let ledger = open_ledger(&source)?;
            let rows = ledger.list_filtered(&filter)?;
            print!("{}", render_list(&rows));
            Ok(())
        }
        LedgerCommand::Show { source, board } => {
            let ledger = open_ledger(&source)?;
            let row = ledger
                .find(&board)?
                .ok_or_else(|| anyhow!("BOARD: no board {board:?} in the ledger; give a registration ID or MAC from `dpskit ledger list`"))?;
            for (k, v) in EXPORT_COLUMNS.iter().zip(row.fields()) {
                println!(
                    "{:<17} {}",
                    format!("{k}:"),
                    if v.is_empty() { "-" } else { &v }
                );
            }
            let attempts = ledger.attempts_for(&row.mac)?;
            println!("\nattempts ({}):", attempts.len());
            for at in attempts {
                println!(
                    "  {}  {:<10} {:<9} {}{}",
                    at.at,
                    at.port,
                    at.result,
                    at.duration_ms
                        .map(|d| format!("{d} ms"))
                        .unwrap_or_default(),
                    at.reason.map(|r| format!("  {r}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        LedgerCommand::Export {
            source,
            filter,
            csv,
            json: _,
            output,
        } => {
            let filter = filter.filter()?;
            let ledger = open_ledger(&source)?;
            let rows = ledger.list_filtered(&filter)?;
            let bytes = if csv {
                export::to_csv(&rows)
            } else {
                let name = if ledger.station().is_empty() {
                    ledger.target()
                } else {
                    ledger.station()
                };
                export::to_json(name, &filter, &rows)
            };
            match output {
                Some(path) => {
                    write_file(&path, &bytes, 0o644)
                        .with_context(|| format!("--output: cannot write {}", path.display()))?;
                    eprintln!("exported {} board(s) to {}", rows.len(), path.display());
                }
                None => {
                    use std::io::Write;
                    std::io::stdout().write_all(&bytes)?;
                }
            }
            Ok(())
        }
        LedgerCommand::Migrate { station, from } => {
            let loc = station::ledger_location(&station)?;
            for w in &loc.warnings {
                eprintln!("warning: {w}");
            }
            if !loc.ledger.is_shared() {
                bail!("[ledger] url: {} names no shared ledger; add [ledger] url = \"postgresql://…\" to copy {} into it", station.display(), from.display());
            }
            let src = Ledger::open_read_only(&from)?;
            let dst = Ledger::open_target(&loc.ledger, &loc.name)?;
            match dst.import_from(&src) {
                Ok(r) => {
                    println!(
                        "copied {} board(s) and {} history row(s) from {} into {}; {} board(s) were already there",
                        r.copied,
                        r.attempts,
                        from.display(),
                        loc.ledger,
                        r.already
                    );
                    Ok(())
                }
                Err(LedgerError::Conflicts(list)) => {
                    eprintln!("{}", LedgerError::Conflicts(list.clone()));
                    Err(CheckFailed(format!(
                        "{} conflict(s) between {} and {}; nothing was copied",
                        list.len(),
                        from.display(),
                        loc.ledger
                    ))
                    .into())
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn render_list(rows: &[BoardRow]) -> String {
    let headers = [
        "REGISTRATION ID",
        "MAC",
        "STATUS",
        "FIRMWARE",
        "UPDATED",
        "FAILURE",
    ];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let fw = match (&r.firmware_project, &r.firmware_version) {
                (Some(p), Some(v)) => format!("{p} {v}"),
                _ => "-".into(),
            };
            [
                r.registration_id.clone(),
                r.mac.clone(),
                r.status.as_str().into(),
                fw,
                r.updated_at.clone(),
                r.failure.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut s = dpskit_factory::table::render(&headers, &cells);
    let done = rows.iter().filter(|r| r.status == Status::Done).count();
    s += &format!("{} board(s), {done} done\n", rows.len());
    s
}
