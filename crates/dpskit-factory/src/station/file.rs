//! `station.toml`: everything one factory bench needs, checked as a whole before any board is
//! touched. Every problem is reported at once, each as one line naming `[section] key` and the
//! fix, so an operator fixes the file in one pass instead of one error per run.
//!
//! The file never holds a secret: the group key and the Wi-Fi password are named by where they
//! live (an environment variable or a file). Relative paths are relative to the station file.

use super::assign::{IdPlan, Manifest, Template};
use super::ledger::{LedgerTarget, PgSettings};
use crate::blob::nvs;
use crate::blob::roots::{self, RootBundle, RootSource};
use crate::board::{After, Before};
use crate::keys::{KeySource, SourceError};
use dpskit_core::config::{self, DEFAULT_DPS_HOST};
use dpskit_core::{DeviceConfig, DeviceKey, GroupKey, IdScope, RegistrationId};
use espflash::target::Chip;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use toml::{Table, Value};

/// Sections and the keys each may hold; anything else is a typo worth reporting.
const KNOWN: &[(&str, &[&str])] = &[
    ("station", &["name", "ledger"]),
    ("dps", &["id_scope", "dps_host", "ntp_server", "token_ttl"]),
    (
        "ledger",
        &[
            "url",
            "password_env",
            "password_file",
            "ca_file",
            "reconnect_secs",
        ],
    ),
    ("group_key", &["env", "file"]),
    ("tls", &["root_cas"]),
    ("partition", &["name", "nvs_size", "table_offset"]),
    ("wifi", &["ssid", "password_file"]),
    (
        "ids",
        &[
            "source",
            "manifest",
            "template",
            "prefix",
            "first_seq",
            "allow_uppercase",
        ],
    ),
    (
        "gates",
        &[
            "chip",
            "min_psram_mb",
            "min_flash_mb",
            "firmware_project",
            "min_firmware_version",
        ],
    ),
    ("serial", &["baud", "before", "after", "stub"]),
    ("ports", &["usb", "paths", "exclude", "parallel"]),
];

/// Every problem found in a station file. Exit code 2 (bad input); nothing was done.
#[derive(Debug)]
pub struct StationError {
    pub file: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for StationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}; fix {} and run again (no board was touched, nothing was written)",
            self.file.display(),
            if n == 1 { "" } else { "s" },
            if n == 1 { "it" } else { "them" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StationError {}

/// The checks a board must pass before it gets an ID.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    pub chip: Option<Chip>,
    pub min_psram_mb: Option<u32>,
    pub min_flash_mb: Option<u32>,
    pub firmware_project: Option<String>,
    pub min_firmware_version: Option<Version>,
}

/// How to talk to the boards.
#[derive(Debug, Clone)]
pub struct Serial {
    pub baud: Option<u32>,
    pub before: Before,
    pub after: After,
    pub use_stub: bool,
}

/// Which serial ports belong to this bench.
#[derive(Debug, Clone, Default)]
pub struct PortSelection {
    /// VID:PID filters (PID `*` = any) for USB ports.
    pub usb: Vec<(u16, Option<u16>)>,
    /// Explicit paths; `*` and `?` in the file name match like a shell glob.
    pub paths: Vec<String>,
    /// Paths (or globs) never used even when a filter matches.
    pub exclude: Vec<String>,
    /// At most this many boards at once (None: one worker per port).
    pub parallel: Option<usize>,
}

/// A checked station file.
pub struct Station {
    pub file: PathBuf,
    pub name: String,
    /// The station's SQLite file, or the factory's shared PostgreSQL ledger.
    pub ledger: LedgerTarget,
    pub id_scope: IdScope,
    pub dps_host: String,
    /// `[dps] ntp_server`: where every board sets its clock (None: the firmware's default).
    pub ntp_server: Option<String>,
    /// `[dps] token_ttl`: lifetime of the boards' SAS tokens in seconds (None: the default).
    pub token_ttl_secs: Option<u32>,
    group_key: GroupKey,
    /// Where the group key came from, for messages (never the key).
    pub group_key_source: String,
    pub roots: RootBundle,
    pub partition: String,
    pub nvs_size: usize,
    pub table_offset: u32,
    pub wifi_ssid: Option<String>,
    wifi_password: Option<String>,
    pub ids: IdPlan,
    pub gates: Gates,
    pub serial: Serial,
    pub ports: PortSelection,
    /// Things worth telling the operator that do not stop the run.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Station {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Station")
            .field("file", &self.file)
            .field("name", &self.name)
            .field("ledger", &self.ledger)
            .field("id_scope", &self.id_scope)
            .field("group_key", &self.group_key)
            .field("partition", &self.partition)
            .field("ids", &self.ids)
            .field("gates", &self.gates)
            .finish_non_exhaustive()
    }
}

impl Station {
    /// Reads and checks the whole file (including the group key, root CAs, manifest and
    /// Wi-Fi password it points to). `Err` is a [`StationError`] listing every problem.
    pub fn load(path: &Path) -> std::result::Result<Station, StationError> {
        let mut p = Problems::default();
        let mut warnings = Vec::new();
        let table = read_table(path).map_err(|e| StationError {
            file: path.into(),
            problems: vec![e],
        })?;
        let dir = base_dir(path);
        check_unknown(&table, &mut p);

        let name = p
            .str(&table, "station", "name")
            .unwrap_or_else(|| "station".into());
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            p.push("[station] name: empty or has control characters; give a short name like \"line-1\"");
        }
        let ledger = ledger_target(&table, &dir, &mut p, &mut warnings);

        // [dps]
        let id_scope = match p.str(&table, "dps", "id_scope") {
            None => {
                p.push("[dps] id_scope: missing; copy the ID scope from the DPS overview page (like 0ne00ABCDEF)");
                None
            }
            Some(s) => match IdScope::parse(&s) {
                Ok((scope, warning)) => {
                    warnings.extend(warning.map(|w| format!("[dps] id_scope: {w}")));
                    Some(scope)
                }
                Err(e) => {
                    p.push(format!("[dps] id_scope: {e}"));
                    None
                }
            },
        };
        let dps_host = p
            .str(&table, "dps", "dps_host")
            .unwrap_or_else(|| DEFAULT_DPS_HOST.into());
        if let Err(reason) = config::check_dps_host(&dps_host) {
            p.push(format!("[dps] dps_host: {reason}"));
        }
        let ntp_server = p.str(&table, "dps", "ntp_server");
        if let Some(Err(reason)) = ntp_server.as_deref().map(config::split_host_port) {
            p.push(format!("[dps] ntp_server: {reason}"));
        }
        let token_ttl_secs = p
            .int(
                &table,
                "dps",
                "token_ttl",
                "give the token lifetime in seconds, e.g. 3600",
            )
            .and_then(|ttl| {
                let range = config::MIN_TOKEN_TTL_SECS..=config::MAX_TOKEN_TTL_SECS;
                match u32::try_from(ttl) {
                    Ok(t) if range.contains(&t) => Some(t),
                    _ => {
                        p.push(format!(
                            "[dps] token_ttl: {ttl} s; use {} s (renewal comes 120 s before expiry) to {} s (a year)",
                            range.start(),
                            range.end()
                        ));
                        None
                    }
                }
            });

        // [group_key]: named by where it lives, never the key itself.
        let (group_key, group_key_source) = match group_key(&table, &dir, &mut p, &mut warnings) {
            Some((k, s)) => (Some(k), s),
            None => (None, String::new()),
        };

        // [tls]
        let root_names = p.str_list(&table, "tls", "root_cas");
        let roots = load_roots(root_names, &dir, &mut p, &mut warnings);

        // [partition]
        let partition = p
            .str(&table, "partition", "name")
            .unwrap_or_else(|| "dps_cfg".into());
        if partition.is_empty() || partition.len() > 16 {
            p.push(format!("[partition] name: {partition:?} is not a partition label (1 to 16 characters); use dps_cfg"));
        }
        let nvs_size = p
            .size(&table, "partition", "nvs_size")
            .map(|s| {
                nvs::check_size(s as usize)
                    .map(|_| s as usize)
                    .map_err(|e| {
                        p.push(e.to_string().replace("--size", "[partition] nvs_size"));
                    })
            })
            .unwrap_or(Ok(nvs::DEFAULT_SIZE));
        let table_offset = p
            .size(&table, "partition", "table_offset")
            .unwrap_or(0x8000);
        if table_offset % 0x1000 != 0 {
            p.push(format!("[partition] table_offset: {table_offset:#x} is not a multiple of 0x1000; use 0x8000 (CONFIG_PARTITION_TABLE_OFFSET)"));
        }

        // [wifi]
        let wifi_ssid = p.str(&table, "wifi", "ssid");
        if let Some(ssid) = &wifi_ssid {
            if let Err(reason) = config::check_wifi_ssid(ssid) {
                p.push(format!(
                    "[wifi] ssid: {reason}; fix it or remove the [wifi] section"
                ));
            }
        }
        let wifi_password = p.str(&table, "wifi", "password_file").and_then(|f| {
            if wifi_ssid.is_none() {
                p.push("[wifi] password_file: given without ssid; add ssid = \"...\" or remove the password".to_string());
            }
            read_password(&dir.join(&f), &mut p, &mut warnings)
        });

        // [ids]
        let ids = id_plan(&table, &dir, &name, &mut p);

        // [gates], [serial], [ports]
        let gates = gates(&table, &mut p);
        let serial = serial(&table, &mut p);
        let ports = ports(&table, &mut p);

        // Does the largest config this station can produce fit the partition?
        if let (Some(scope), Some(plan), Some(roots), Ok(size)) =
            (&id_scope, &ids, &roots, &nvs_size)
        {
            let sample = plan.longest_sample();
            if let Ok(reg) = RegistrationId::parse(&sample, true) {
                let cfg = DeviceConfig {
                    id_scope: scope.clone(),
                    registration_id: reg,
                    device_key: DeviceKey::from_bytes([0; 32]),
                    root_ca_pem: roots.pem.clone(),
                    dps_host: dps_host.clone(),
                    wifi_ssid: wifi_ssid.clone(),
                    wifi_password: wifi_password.clone(),
                    ntp_server: ntp_server.clone(),
                    token_ttl_secs,
                };
                if let Err(e) = nvs::build_image(&cfg, *size) {
                    p.push(e.to_string().replace("--size", "[partition] nvs_size"));
                }
            }
        }

        if !p.0.is_empty() {
            return Err(StationError {
                file: path.into(),
                problems: p.0,
            });
        }
        if let (Some(IdPlan::Template(t)), Some(LedgerTarget::Sqlite(_))) = (&ids, &ledger) {
            if !t.unique_across_stations() {
                warnings.push(format!(
                    "[ids] template: {:?} has neither {{station}} nor {{mac}}, so a second station with its own ledger hands out the same IDs (two boards, one IoT Hub identity); add {{station}} to the template, or share one ledger between the stations ([ledger] url)",
                    t.text
                ));
            }
        }
        let (Some(id_scope), Some(group_key), Some(roots), Ok(nvs_size), Some(ids), Some(ledger)) =
            (id_scope, group_key, roots, nvs_size, ids, ledger)
        else {
            unreachable!("every missing piece was reported as a problem")
        };
        Ok(Station {
            file: path.into(),
            name,
            ledger,
            id_scope,
            dps_host,
            ntp_server,
            token_ttl_secs,
            group_key,
            group_key_source,
            roots,
            partition,
            nvs_size,
            table_offset,
            wifi_ssid,
            wifi_password,
            ids,
            gates,
            serial,
            ports,
            warnings,
        })
    }

    /// The enrollment group key, for deriving device keys in memory. Never print it.
    pub fn group_key(&self) -> &GroupKey {
        &self.group_key
    }

    /// The full config a board with `registration_id` gets (device key derived here).
    pub fn config_for(&self, registration_id: &RegistrationId) -> DeviceConfig {
        DeviceConfig {
            id_scope: self.id_scope.clone(),
            registration_id: registration_id.clone(),
            device_key: self.group_key.derive(registration_id.as_str()),
            root_ca_pem: self.roots.pem.clone(),
            dps_host: self.dps_host.clone(),
            wifi_ssid: self.wifi_ssid.clone(),
            wifi_password: self.wifi_password.clone(),
            ntp_server: self.ntp_server.clone(),
            token_ttl_secs: self.token_ttl_secs,
        }
    }
}

/// Just the station name and ledger: what the audit commands need, without the group key
/// (an auditor need not have it).
#[derive(Debug, Clone)]
pub struct LedgerLocation {
    pub name: String,
    pub ledger: LedgerTarget,
    /// Things worth telling the operator (a password file others can read).
    pub warnings: Vec<String>,
}

/// Reads `[station]` and `[ledger]` only.
pub fn ledger_location(path: &Path) -> std::result::Result<LedgerLocation, StationError> {
    let table = read_table(path).map_err(|e| StationError {
        file: path.into(),
        problems: vec![e],
    })?;
    let mut p = Problems::default();
    let mut warnings = Vec::new();
    let name = p
        .str(&table, "station", "name")
        .unwrap_or_else(|| "station".into());
    let ledger = ledger_target(&table, &base_dir(path), &mut p, &mut warnings);
    match ledger {
        Some(ledger) if p.0.is_empty() => Ok(LedgerLocation {
            name,
            ledger,
            warnings,
        }),
        _ => Err(StationError {
            file: path.into(),
            problems: p.0,
        }),
    }
}

/// `[station] ledger` (a SQLite file, the default) or `[ledger] url` (a shared PostgreSQL),
/// with the password from `password_env` or `password_file` — never from the URL.
fn ledger_target(
    t: &Table,
    dir: &Path,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<LedgerTarget> {
    let file = p.str(t, "station", "ledger");
    let Some(url) = p.str(t, "ledger", "url") else {
        for key in ["password_env", "password_file", "ca_file", "reconnect_secs"] {
            if p.get(t, "ledger", key).is_some() {
                p.push(format!("[ledger] {key}: set without url; add url = \"postgresql://user@host/db?sslmode=require\" or remove [ledger]"));
            }
        }
        return Some(LedgerTarget::Sqlite(
            dir.join(file.unwrap_or_else(|| "ledger.sqlite".into())),
        ));
    };
    let before = p.0.len();
    if file.is_some() {
        p.push("[station] ledger: set together with [ledger] url; a station uses one ledger, so remove one of them");
    }
    if let Err(why) = check_pg_url(&url) {
        p.push(format!("[ledger] url: {why}"));
    }
    let password = match (
        p.str(t, "ledger", "password_env"),
        p.str(t, "ledger", "password_file"),
    ) {
        (Some(_), Some(_)) => {
            p.push("[ledger]: both password_env and password_file are set; keep exactly one");
            None
        }
        (Some(name), None) => match std::env::var(&name) {
            Ok(v) if !v.is_empty() => Some(v),
            _ => {
                p.push(format!("[ledger] password_env: the environment variable {name} is not set; export it with the ledger user's password, or use password_file = PATH"));
                None
            }
        },
        (None, Some(f)) => {
            let path = dir.join(f);
            match KeySource::File(path.clone()).read("[ledger] password_file") {
                Ok(s) => {
                    warnings.extend(s.warning);
                    Some(s.text.trim_end_matches(['\r', '\n']).to_string())
                }
                Err(SourceError::File { source, .. }) => {
                    p.push(format!("[ledger] password_file: cannot read {} ({source}); give a file holding only the password (mode 0600)", path.display()));
                    None
                }
                Err(e) => {
                    p.push(format!("[ledger] password_file: {e}"));
                    None
                }
            }
        }
        (None, None) => None,
    };
    let ca_file = p.str(t, "ledger", "ca_file").map(|f| dir.join(f));
    let reconnect = p.int(
        t,
        "ledger",
        "reconnect_secs",
        "give how long a lost connection is retried, in seconds (default 60)",
    );
    if p.0.len() > before {
        return None;
    }
    let mut settings = PgSettings::new(url, password);
    settings.ca_file = ca_file;
    if let Some(secs) = reconnect {
        settings.reconnect_window = std::time::Duration::from_secs(secs as u64);
    }
    Some(LedgerTarget::Postgres(settings))
}

/// A PostgreSQL URL dpskit accepts: no password inside (it would sit in a plain file and in
/// every message), and TLS (`sslmode=require` or `verify-*`) to any server that is not on
/// this machine. Never echoes the URL: it may hold the password.
pub fn check_pg_url(url: &str) -> std::result::Result<(), String> {
    let Some(rest) = url
        .strip_prefix("postgresql://")
        .or_else(|| url.strip_prefix("postgres://"))
    else {
        return Err("must start with postgresql:// (like postgresql://dpskit@db.factory.lan/ledger?sslmode=require)".into());
    };
    let (authority, query) = match rest.split_once('?') {
        Some((a, q)) => (a, q),
        None => (rest, ""),
    };
    let authority = authority.split('/').next().unwrap_or("");
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let params: Vec<(&str, &str)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    if userinfo.is_some_and(|u| u.contains(':')) || params.iter().any(|(k, _)| *k == "password") {
        return Err("holds a password; never put it in the station file — remove it from the URL and set password_env or password_file (mode 0600)".into());
    }
    let mut hosts: Vec<&str> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| {
            if let Some(v6) = h.strip_prefix('[') {
                v6.split(']').next().unwrap_or("")
            } else {
                h.split(':').next().unwrap_or("")
            }
        })
        .collect();
    hosts.extend(
        params
            .iter()
            .filter(|(k, _)| *k == "host")
            .flat_map(|(_, v)| v.split(',')),
    );
    let local = |h: &str| {
        h.is_empty()
            || h.starts_with('/')
            || h.starts_with("%2F")
            || h.starts_with("%2f")
            || h == "localhost"
            || h == "::1"
            || h.starts_with("127.")
    };
    let tls = params
        .iter()
        .any(|(k, v)| *k == "sslmode" && matches!(*v, "require" | "verify-ca" | "verify-full"));
    if !hosts.iter().all(|h| local(h)) && !tls {
        return Err("a server on another host needs TLS (the ledger crosses the network); add ?sslmode=require to the URL (and [ledger] ca_file if the server's CA is private)".into());
    }
    Ok(())
}

fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn read_table(path: &Path) -> std::result::Result<Table, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read the station file ({e}); create one with `dpskit init` or give --station PATH")
    })?;
    text.parse::<Table>().map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
        let msg = e.message().trim().replace('\n', " ");
        match line {
            Some(l) => {
                format!("line {l}: TOML syntax: {msg}; fix the syntax (strings need quotes)")
            }
            None => format!("TOML syntax: {msg}"),
        }
    })
}

/// Problems collected while reading; the typed getters record a problem and return `None`
/// on a wrong type, so one pass finds everything.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }

    fn get<'t>(&mut self, t: &'t Table, section: &str, key: &str) -> Option<&'t Value> {
        t.get(section)?.as_table()?.get(key)
    }

    fn str(&mut self, t: &Table, section: &str, key: &str) -> Option<String> {
        match self.get(t, section, key)? {
            Value::String(s) => Some(s.clone()),
            other => {
                self.push(format!(
                    "[{section}] {key}: must be a string in quotes, not a {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn int(&mut self, t: &Table, section: &str, key: &str, hint: &str) -> Option<i64> {
        match self.get(t, section, key)? {
            Value::Integer(i) if *i >= 0 => Some(*i),
            Value::Integer(i) => {
                self.push(format!("[{section}] {key}: {i} is negative; {hint}"));
                None
            }
            other => {
                self.push(format!(
                    "[{section}] {key}: must be a whole number (no quotes), not a {}; {hint}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn bool(&mut self, t: &Table, section: &str, key: &str) -> Option<bool> {
        match self.get(t, section, key)? {
            Value::Boolean(b) => Some(*b),
            other => {
                self.push(format!(
                    "[{section}] {key}: must be true or false, not a {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    fn str_list(&mut self, t: &Table, section: &str, key: &str) -> Option<Vec<String>> {
        match self.get(t, section, key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.iter().enumerate() {
                    match v {
                        Value::String(s) => out.push(s.clone()),
                        other => self.push(format!(
                            "[{section}] {key}: item {} is a {}, not a string; quote it",
                            i + 1,
                            other.type_str()
                        )),
                    }
                }
                Some(out)
            }
            other => {
                self.push(format!(
                    "[{section}] {key}: must be a list like [\"a\", \"b\"], not a {}",
                    other.type_str()
                ));
                None
            }
        }
    }

    /// A size or offset: `0x6000` as a string, or a plain integer.
    fn size(&mut self, t: &Table, section: &str, key: &str) -> Option<u32> {
        let v = self.get(t, section, key)?;
        let parsed = match v {
            Value::Integer(i) => u32::try_from(*i).ok(),
            Value::String(s) => {
                let s = s.trim();
                match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                    Some(h) => u32::from_str_radix(h, 16).ok(),
                    None => s.parse().ok(),
                }
            }
            _ => None,
        };
        if parsed.is_none() {
            self.push(format!(
                "[{section}] {key}: {v} is not a size; write it like \"0x6000\""
            ));
        }
        parsed
    }
}

fn check_unknown(t: &Table, p: &mut Problems) {
    for (section, value) in t {
        let Some((_, keys)) = KNOWN.iter().find(|(s, _)| s == section) else {
            let known: Vec<&str> = KNOWN.iter().map(|(s, _)| *s).collect();
            p.push(format!(
                "[{section}]: unknown section; the sections are [{}]",
                known.join("], [")
            ));
            continue;
        };
        let Some(entries) = value.as_table() else {
            p.push(format!(
                "{section}: must be a section ([{section}] on its own line), not a value"
            ));
            continue;
        };
        for key in entries.keys() {
            if keys.contains(&key.as_str()) {
                continue;
            }
            if *section == "group_key" {
                // Never echo the value: it may be the key itself.
                p.push(format!(
                    "[group_key] {key}: not allowed; the station file must never hold the group key. Put the key in an environment variable (env = \"DPSKIT_GROUP_KEY\") or a mode-0600 file (file = \"/path\") and delete this line"
                ));
            } else {
                p.push(format!(
                    "[{section}] {key}: unknown key; [{section}] takes {}",
                    keys.join(", ")
                ));
            }
        }
    }
}

fn group_key(
    t: &Table,
    dir: &Path,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<(GroupKey, String)> {
    let section = t.get("group_key").and_then(Value::as_table);
    let env = section.and_then(|s| s.get("env"));
    let file = section.and_then(|s| s.get("file"));
    match (env, file) {
        (None, None) => {
            p.push("[group_key]: missing; add env = \"DPSKIT_GROUP_KEY\" (an environment variable holding the key) or file = \"/path/to/group.key\"");
            None
        }
        (Some(_), Some(_)) => {
            p.push("[group_key]: both env and file are set; keep exactly one");
            None
        }
        (Some(Value::String(name)), None) => {
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                let looks_like_key = GroupKey::parse(name, "[group_key] env").is_ok();
                if looks_like_key {
                    p.push("[group_key] env: this looks like the key itself, not the name of an environment variable; remove it from the file (rotate the key if the file was shared) and write env = \"DPSKIT_GROUP_KEY\"");
                } else {
                    p.push("[group_key] env: not an environment variable name (letters, digits, _); write env = \"DPSKIT_GROUP_KEY\"");
                }
                return None;
            }
            match KeySource::Env(name.clone()).group_key("[group_key] env") {
                Ok((k, _)) => Some((k, format!("environment variable {name}"))),
                Err(SourceError::Key(e)) => {
                    p.push(format!("{e} (variable {name})"));
                    None
                }
                Err(_) => {
                    p.push(format!("[group_key] env: the environment variable {name} is not set; export it with the enrollment group's primary key, or use file = PATH"));
                    None
                }
            }
        }
        (None, Some(Value::String(f))) => {
            let path = dir.join(f);
            let secret = match KeySource::File(path.clone()).read("[group_key] file") {
                Ok(s) => s,
                Err(e) => {
                    let e = match e {
                        SourceError::File { source, .. } => source.to_string(),
                        e => e.to_string(),
                    };
                    p.push(format!("[group_key] file: cannot read {} ({e}); give the path of a file holding only the key", path.display()));
                    return None;
                }
            };
            warnings.extend(secret.warning);
            match GroupKey::parse(&secret.text, "[group_key] file") {
                Ok(k) => Some((k, format!("file {}", path.display()))),
                Err(e) => {
                    p.push(e.to_string());
                    None
                }
            }
        }
        _ => {
            p.push("[group_key]: env and file must be strings in quotes");
            None
        }
    }
}

fn read_password(path: &Path, p: &mut Problems, warnings: &mut Vec<String>) -> Option<String> {
    let text = match KeySource::File(path.to_path_buf()).read("[wifi] password_file") {
        Ok(s) => {
            warnings.extend(s.warning);
            s.text
        }
        Err(SourceError::File { source: e, .. }) => {
            p.push(format!("[wifi] password_file: cannot read {} ({e}); give a file holding only the Wi-Fi password", path.display()));
            return None;
        }
        Err(e) => {
            p.push(format!("[wifi] password_file: {e}"));
            return None;
        }
    };
    let t = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if t.contains(['\n', '\r']) {
        p.push("[wifi] password_file: holds more than one line; put only the password in the file");
        return None;
    }
    if let Err(reason) = config::check_wifi_password(t) {
        p.push(format!("[wifi] password_file: {reason}; check the file"));
        return None;
    }
    Some(t.to_string())
}

fn load_roots(
    names: Option<Vec<String>>,
    dir: &Path,
    p: &mut Problems,
    warnings: &mut Vec<String>,
) -> Option<RootBundle> {
    let names =
        names.unwrap_or_else(|| roots::DEFAULT_ROOTS.iter().map(|s| s.to_string()).collect());
    let mut sources = Vec::new();
    let mut ok = true;
    for n in &names {
        let arg = if roots::bundled(n).is_some() {
            n.clone()
        } else {
            dir.join(n).display().to_string()
        };
        match RootSource::parse(&arg) {
            Ok(s) => sources.push(s),
            Err(e) => {
                ok = false;
                p.push(format!(
                    "[tls] root_cas: {}",
                    e.to_string().replace("--root-ca ", "")
                ));
            }
        }
    }
    if !ok {
        return None;
    }
    match roots::assemble(&sources, time::OffsetDateTime::now_utc()) {
        Ok(bundle) => {
            warnings.extend(
                bundle
                    .warnings
                    .iter()
                    .map(|w| format!("[tls] root_cas: {}", w.replace("--root-ca ", ""))),
            );
            Some(bundle)
        }
        Err(e) => {
            p.push(format!(
                "[tls] root_cas: {}",
                e.to_string().replace("--root-ca ", "")
            ));
            None
        }
    }
}

fn id_plan(t: &Table, dir: &Path, station: &str, p: &mut Problems) -> Option<IdPlan> {
    let allow_uppercase = p.bool(t, "ids", "allow_uppercase").unwrap_or(false);
    let manifest = p.str(t, "ids", "manifest");
    let template = p.str(t, "ids", "template");
    let source = p.str(t, "ids", "source");
    let source = match (source.as_deref(), &manifest, &template) {
        (Some("manifest"), _, _) => "manifest",
        (Some("template"), _, _) => "template",
        (Some(other), _, _) => {
            p.push(format!(
                "[ids] source: {other:?} is not a source; use \"manifest\" or \"template\""
            ));
            return None;
        }
        (None, Some(_), None) => "manifest",
        (None, None, Some(_)) => "template",
        (None, None, None) => {
            p.push("[ids]: no ID source; set source = \"template\" with template = \"{prefix}-{seq:05}\", or source = \"manifest\" with manifest = \"manifest.csv\"");
            return None;
        }
        (None, Some(_), Some(_)) => {
            p.push("[ids] source: both manifest and template are set; add source = \"manifest\" or source = \"template\"");
            return None;
        }
    };
    if source == "manifest" {
        let Some(m) = manifest else {
            p.push("[ids] manifest: source is \"manifest\" but no manifest file is named; add manifest = \"manifest.csv\"");
            return None;
        };
        return match Manifest::load(&dir.join(m), allow_uppercase) {
            Ok(m) => Some(IdPlan::Manifest(m)),
            Err(errs) => {
                errs.into_iter()
                    .for_each(|e| p.push(format!("[ids] manifest: {e}")));
                None
            }
        };
    }
    let Some(text) = template else {
        p.push("[ids] template: source is \"template\" but no template is given; add template = \"{prefix}-{seq:05}\"");
        return None;
    };
    let prefix = p.str(t, "ids", "prefix").unwrap_or_default();
    let first_seq = p
        .int(
            t,
            "ids",
            "first_seq",
            "give the first sequence number, e.g. 1",
        )
        .unwrap_or(1) as u64;
    match Template::parse(&text, &prefix, station, first_seq, allow_uppercase) {
        Ok(t) => Some(IdPlan::Template(t)),
        Err(errs) => {
            errs.into_iter().for_each(|e| p.push(e));
            None
        }
    }
}

fn gates(t: &Table, p: &mut Problems) -> Gates {
    let chip = match p.str(t, "gates", "chip") {
        None => Some(Chip::Esp32s3),
        Some(s) if s.eq_ignore_ascii_case("any") => None,
        Some(s) => match Chip::from_str(&s.to_ascii_lowercase().replace('-', "")) {
            Ok(c) => Some(c),
            Err(_) => {
                p.push(format!(
                    "[gates] chip: {s:?} is not a chip espflash knows; use \"esp32s3\""
                ));
                Some(Chip::Esp32s3)
            }
        },
    };
    let mb = |p: &mut Problems, key: &str, what: &str| {
        p.int(
            t,
            "gates",
            key,
            &format!("give the minimum {what} in MB, e.g. 2"),
        )
        .map(|v| v as u32)
    };
    let min_psram_mb = mb(p, "min_psram_mb", "PSRAM");
    let min_flash_mb = mb(p, "min_flash_mb", "flash size");
    let firmware_project = p.str(t, "gates", "firmware_project");
    if firmware_project.as_deref() == Some("") {
        p.push("[gates] firmware_project: empty; give the project name from the firmware's app descriptor (idf.py's PROJECT_NAME), or remove the line");
    }
    let min_firmware_version =
        p.str(t, "gates", "min_firmware_version")
            .and_then(|v| match Version::parse(&v) {
                Some(ver) => Some(ver),
                None => {
                    p.push(format!(
                    "[gates] min_firmware_version: {v:?} is not a version; write it like \"1.2.0\""
                ));
                    None
                }
            });
    Gates {
        chip,
        min_psram_mb,
        min_flash_mb,
        firmware_project,
        min_firmware_version,
    }
}

fn serial(t: &Table, p: &mut Problems) -> Serial {
    let baud = p
        .int(
            t,
            "serial",
            "baud",
            "use 921600 (or 115200 for long cables)",
        )
        .and_then(|b| {
            if (9600..=4_000_000).contains(&b) {
                Some(b as u32)
            } else {
                p.push(format!(
                    "[serial] baud: {b} is out of range; use 921600 (or 115200 for long cables)"
                ));
                None
            }
        });
    let before = match p.str(t, "serial", "before") {
        None => Before::DefaultReset,
        Some(s) => Before::from_name(&s).unwrap_or_else(|| {
            p.push(format!("[serial] before: {s:?} is not a mode; use \"default-reset\", \"no-reset\" or \"usb-reset\""));
            Before::DefaultReset
        }),
    };
    let after = match p.str(t, "serial", "after") {
        None => After::HardReset,
        Some(s) => After::from_name(&s).unwrap_or_else(|| {
            p.push(format!(
                "[serial] after: {s:?} is not a mode; use \"hard-reset\" or \"no-reset\""
            ));
            After::HardReset
        }),
    };
    let use_stub = p.bool(t, "serial", "stub").unwrap_or(true);
    Serial {
        baud,
        before,
        after,
        use_stub,
    }
}

fn ports(t: &Table, p: &mut Problems) -> PortSelection {
    let mut usb = Vec::new();
    for f in p.str_list(t, "ports", "usb").unwrap_or_default() {
        match parse_vid_pid(&f) {
            Some(v) => usb.push(v),
            None => p.push(format!("[ports] usb: {f:?} is not VID:PID; write it like \"303a:1001\" (hex, PID may be *)")),
        }
    }
    let paths = p.str_list(t, "ports", "paths").unwrap_or_default();
    for path in &paths {
        if !path.starts_with('/') {
            p.push(format!("[ports] paths: {path:?} is not an absolute path; write it like \"/dev/ttyUSB0\" or \"/dev/serial/by-id/usb-Espressif*\""));
        }
    }
    let exclude = p.str_list(t, "ports", "exclude").unwrap_or_default();
    let parallel = p.int(t, "ports", "parallel", "give how many boards to provision at once, e.g. 8").and_then(|n| {
        if n == 0 {
            p.push("[ports] parallel: 0 would provision nothing; give at least 1 (or remove it for one worker per port)");
            None
        } else {
            Some(n as usize)
        }
    });
    PortSelection {
        usb,
        paths,
        exclude,
        parallel,
    }
}

fn parse_vid_pid(s: &str) -> Option<(u16, Option<u16>)> {
    let (v, pid) = s.trim().split_once(':')?;
    let vid = u16::from_str_radix(v, 16).ok()?;
    let pid = if pid == "*" {
        None
    } else {
        Some(u16::from_str_radix(pid, 16).ok()?)
    };
    Some((vid, pid))
}

/// A firmware version as the app descriptor carries it (`1.2.3`, `v1.2.3-rc1`, `1.2.3-4-gabc`):
/// numeric parts compared as numbers; a suffix makes it a pre-release of its numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub numbers: Vec<u64>,
    pub pre: bool,
    pub text: String,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.trim();
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        let (core, suffix) = match t.find(['-', '+', ' ']) {
            Some(i) => (&t[..i], &t[i..]),
            None => (t, ""),
        };
        let numbers: Option<Vec<u64>> = core.split('.').map(|n| n.parse().ok()).collect();
        let numbers = numbers.filter(|n| !n.is_empty())?;
        Some(Version {
            numbers,
            pre: suffix.starts_with('-'),
            text: text.trim().into(),
        })
    }

    /// `self >= min`, where `1.2` equals `1.2.0` and `1.2.0-rc1` is below `1.2.0`.
    pub fn at_least(&self, min: &Version) -> bool {
        let n = self.numbers.len().max(min.numbers.len());
        let get = |v: &Version, i: usize| v.numbers.get(i).copied().unwrap_or(0);
        for i in 0..n {
            match get(self, i).cmp(&get(min, i)) {
                std::cmp::Ordering::Greater => return true,
                std::cmp::Ordering::Less => return false,
                std::cmp::Ordering::Equal => {}
            }
        }
        !self.pre || min.pre
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.2.0").at_least(&v("1.2")));
        assert!(v("v1.10.0").at_least(&v("1.9.9")));
        assert!(!v("1.2.0-rc1").at_least(&v("1.2.0")));
        assert!(v("1.2.1-rc1").at_least(&v("1.2.0")));
        assert!(!v("0.9").at_least(&v("1.0.0")));
        assert!(v("1.2.3-4-gabcdef").at_least(&v("1.2.3-rc1")));
        assert!(Version::parse("dev").is_none());
        assert!(Version::parse("").is_none());
    }

    #[test]
    fn vid_pid() {
        assert_eq!(parse_vid_pid("303a:1001"), Some((0x303a, Some(0x1001))));
        assert_eq!(parse_vid_pid("10C4:*"), Some((0x10c4, None)));
        assert_eq!(parse_vid_pid("303a"), None);
        assert_eq!(parse_vid_pid("zz:1001"), None);
    }
}
