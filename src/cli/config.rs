//! `dpskit config build|show`: a board's config blob (an ESP-IDF NVS partition image).
//!
//! `build` validates everything before it writes anything, derives the device key in memory
//! (the group key never leaves this process) and writes the image mode 0600, since it holds the
//! device key. `show` decodes an image and prints it with the key masked.

use super::key_args::{read_secret_file, GroupKeyArgs};
use anyhow::{anyhow, bail, Result};
use dpskit_core::config::DEFAULT_DPS_HOST;
use dpskit_core::{DeviceConfig, DeviceKey, IdScope, RegistrationId};
use dpskit_factory::blob::nvs;
use dpskit_factory::blob::roots::{self, RootSource};
use dpskit_factory::files::write_private_file;
use dpskit_factory::keys::GROUP_KEY_ENV;
use std::path::PathBuf;
use time::OffsetDateTime;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Build the NVS image for one board (flash it to the dps_cfg partition).
    Build(Box<BuildArgs>),
    /// Decode an NVS image and print what it holds (key masked).
    Show(ShowArgs),
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Where to write the image (created mode 0600: it holds the device key).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub fields: ConfigFields,
}

/// Everything a board's config is built from; shared by `config build` and `write-config`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigFields {
    /// The DPS ID scope, from the DPS overview page (like 0ne00ABCDEF). Required.
    #[arg(long)]
    pub id_scope: Option<String>,
    /// The board's registration ID (becomes its IoT Hub device ID). Required.
    #[arg(long)]
    pub registration_id: Option<String>,
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
    /// File holding an already derived device key, instead of a group key.
    #[arg(long, value_name = "FILE")]
    pub device_key_file: Option<PathBuf>,
    /// Root CA: digicert-g2, microsoft-rsa-2017, digicert-g3, microsoft-ecc-2017, or a PEM file.
    /// Repeatable. Default: digicert-g2 and microsoft-rsa-2017.
    #[arg(long, value_name = "NAME|PATH")]
    pub root_ca: Vec<String>,
    /// DPS endpoint the board connects to.
    #[arg(long, default_value = DEFAULT_DPS_HOST)]
    pub dps_host: String,
    /// Wi-Fi network the board joins.
    #[arg(long)]
    pub wifi_ssid: Option<String>,
    /// File holding the Wi-Fi password (a secret, so never an argument).
    #[arg(long, value_name = "FILE")]
    pub wifi_password_file: Option<PathBuf>,
    /// NTP server the board sets its clock from: IP address or host name, optional `:PORT`
    /// (default pool.ntp.org; factories without internet time name their own).
    #[arg(long, value_name = "HOST[:PORT]")]
    pub ntp_server: Option<String>,
    /// Lifetime of the SAS tokens the board makes, in seconds (181 to 31536000; default an
    /// hour). The board renews its hub connection 120 s before expiry.
    #[arg(long, value_name = "SECS")]
    pub token_ttl: Option<u32>,
    /// NVS partition size, as in the partition table (multiple of 0x1000, at least 0x3000).
    #[arg(long, default_value = "0x6000")]
    pub size: String,
    /// Accept a registration ID with upper-case letters (the key covers its exact bytes).
    #[arg(long)]
    pub allow_uppercase: bool,
}

#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The NVS image to decode.
    pub file: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the device key and Wi-Fi password in full.
    #[arg(long)]
    pub show_secrets: bool,
}

pub fn run(c: ConfigCommand) -> Result<()> {
    match c {
        ConfigCommand::Build(a) => build(*a),
        ConfigCommand::Show(a) => show(a),
    }
}

/// Where the device key came from, for the summary.
enum KeySource {
    Derived,
    File,
}

fn device_key(a: &ConfigFields, reg: &RegistrationId) -> Result<(DeviceKey, KeySource)> {
    let explicit_group = a.group_key.group_key_file.is_some() || a.group_key.group_key_stdin;
    match (&a.device_key_file, a.group_key.is_given()) {
        (Some(_), true) => {
            let which = if explicit_group {
                "--group-key-file/--group-key-stdin"
            } else {
                "DPSKIT_GROUP_KEY (environment)"
            };
            bail!("--device-key-file: given together with {which}; give either the group key (dpskit derives the device key) or a derived device key, not both")
        }
        (None, false) => bail!(
            "group key: none given; use --group-key-file FILE, --group-key-stdin or set {GROUP_KEY_ENV}, or give a derived key with --device-key-file FILE"
        ),
        (Some(path), false) => {
            let text = read_secret_file(path, "--device-key-file")?;
            let key = DeviceKey::parse(&text, "device key (--device-key-file)")?;
            Ok((key, KeySource::File))
        }
        (None, true) => {
            let group = a.group_key.read()?;
            Ok((group.derive(reg.as_str()), KeySource::Derived))
        }
    }
}

/// The Wi-Fi password file holds the password and at most one line ending.
fn wifi_password(a: &ConfigFields) -> Result<Option<String>> {
    let Some(path) = &a.wifi_password_file else {
        return Ok(None);
    };
    let text = read_secret_file(path, "--wifi-password-file")?;
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.contains(['\n', '\r']) {
        bail!("--wifi-password-file: holds more than one line; put only the password in the file");
    }
    Ok(Some(text.to_string()))
}

/// A `--root-ca` value: `emulator` (the local emulator's CA, from its state directory), a
/// bundled name, or a file.
fn root_source(arg: &str) -> Result<RootSource> {
    #[cfg(not(feature = "rehearsal"))]
    if arg.eq_ignore_ascii_case("emulator") {
        bail!("--root-ca emulator: this dpskit was built without the rehearsal tools (the emulator); give the emulator's ca.pem as a file");
    }
    #[cfg(feature = "rehearsal")]
    if arg.eq_ignore_ascii_case("emulator") {
        let dir = dpskit_rehearsal::emulator::default_state_dir();
        let path = dpskit_rehearsal::emulator::ca_path(&dir);
        if !path.exists() {
            bail!(
                "--root-ca emulator: no emulator CA at {}; run `dpskit emulate` once (it creates the CA), or set {} to its --state-dir",
                path.display(),
                dpskit_rehearsal::emulator::STATE_DIR_ENV
            );
        }
        return Ok(RootSource::File(path));
    }
    RootSource::parse(arg)
}

/// A validated, encoded config image and what went into it.
pub struct BuiltImage {
    pub image: Vec<u8>,
    pub config: DeviceConfig,
    pub certs: Vec<roots::CertInfo>,
    pub warnings: Vec<String>,
    key_source: KeySource,
    pages: nvs::PageCounts,
}

/// Validates every field, derives the key in memory and encodes the image; writes nothing.
pub fn build_image(a: &ConfigFields) -> Result<BuiltImage> {
    let now = OffsetDateTime::now_utc();
    let mut warnings = Vec::new();
    let size = nvs::parse_size(&a.size)?;
    let scope = a.id_scope.as_deref().ok_or_else(|| {
        anyhow!(
            "--id-scope: missing; copy the ID scope from the DPS overview page (like 0ne00ABCDEF)"
        )
    })?;
    let reg = a
        .registration_id
        .as_deref()
        .ok_or_else(|| anyhow!("--registration-id: missing; give the board's registration ID"))?;
    let (id_scope, scope_warning) =
        IdScope::parse(scope).map_err(|e| anyhow!("--id-scope: {e}"))?;
    warnings.extend(scope_warning);
    let registration_id = RegistrationId::parse(reg, a.allow_uppercase)
        .map_err(|e| anyhow!("--registration-id: {e}"))?;
    let sources = if a.root_ca.is_empty() {
        RootSource::defaults()
    } else {
        a.root_ca
            .iter()
            .map(|s| root_source(s))
            .collect::<Result<Vec<_>>>()?
    };
    let bundle = roots::assemble(&sources, now)?;
    warnings.extend(bundle.warnings.iter().cloned());
    let wifi_password = wifi_password(a)?;
    let (device_key, key_source) = device_key(a, &registration_id)?;
    let cfg = DeviceConfig {
        id_scope,
        registration_id,
        device_key,
        root_ca_pem: bundle.pem,
        dps_host: a.dps_host.clone(),
        wifi_ssid: a.wifi_ssid.clone(),
        wifi_password,
        ntp_server: a.ntp_server.clone(),
        token_ttl_secs: a.token_ttl,
    };
    let image = nvs::build_image(&cfg, size)?;
    // Read it back before writing: what goes to disk is what a board will decode.
    let back = nvs::decode_image(&image)?;
    if back != cfg {
        bail!("internal: the image does not decode to the config it was built from; please report this");
    }
    let pages = nvs::check_nvs_pages(&image)?;
    Ok(BuiltImage {
        image,
        config: cfg,
        certs: bundle.certs,
        warnings,
        key_source,
        pages,
    })
}

fn build(a: BuildArgs) -> Result<()> {
    let BuiltImage {
        image,
        config: cfg,
        certs,
        warnings,
        key_source,
        pages,
    } = build_image(&a.fields)?;
    write_private_file(&a.output, &image)?;

    for w in &warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} ({} bytes, NVS namespace 'dps', {} of {} pages used)",
        a.output.display(),
        image.len(),
        pages.in_use,
        pages.total
    );
    println!("  ID scope:        {}", cfg.id_scope);
    println!("  registration ID: {}", cfg.registration_id);
    let how = match key_source {
        KeySource::Derived => "derived from the group key",
        KeySource::File => "from --device-key-file",
    };
    println!("  device key:      {} ({how})", cfg.device_key.masked());
    println!("  DPS host:        {}", cfg.dps_host);
    print_optional(&cfg);
    for c in &certs {
        println!(
            "  root CA:         {} (expires {})",
            c.common_name,
            c.not_after.date()
        );
    }
    match &cfg.wifi_ssid {
        Some(ssid) => println!(
            "  Wi-Fi:           {ssid:?}, password {}",
            if cfg.wifi_password.is_some() {
                "set (redacted)"
            } else {
                "none (open network)"
            }
        ),
        None => println!("  Wi-Fi:           not set"),
    }
    Ok(())
}

/// The keys a config carries only when set.
fn print_optional(cfg: &DeviceConfig) {
    if let Some(ntp) = &cfg.ntp_server {
        println!("  NTP server:      {ntp}");
    }
    if let Some(ttl) = cfg.token_ttl_secs {
        println!("  token lifetime:  {ttl} s");
    }
}

fn show(a: ShowArgs) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    let image = std::fs::read(&a.file).map_err(|e| {
        anyhow!(
            "{}: cannot read ({e}); give the image file `dpskit config build` wrote",
            a.file.display()
        )
    })?;
    let cfg = nvs::decode_image(&image).map_err(|e| anyhow!("{}: {e}", a.file.display()))?;
    let pages = nvs::check_nvs_pages(&image)?;
    let certs = roots::describe_pem_bundle(&cfg.root_ca_pem);
    let key_text = if a.show_secrets {
        cfg.device_key.to_base64()
    } else {
        cfg.device_key.masked()
    };
    let password_text = cfg.wifi_password.as_ref().map(|p| {
        if a.show_secrets {
            p.clone()
        } else {
            "<redacted>".into()
        }
    });

    if a.json {
        let (root_cas, root_ca_error) = match &certs {
            Ok(list) => (
                list.iter().map(|c| c.to_json(now)).collect::<Vec<_>>(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let out = serde_json::json!({
            "file": a.file.display().to_string(),
            "size": image.len(),
            "pages_used": pages.in_use,
            "pages_total": pages.total,
            "id_scope": cfg.id_scope.as_str(),
            "registration_id": cfg.registration_id.as_str(),
            "dps_host": cfg.dps_host,
            "device_key": key_text,
            "device_key_fingerprint": cfg.device_key.fingerprint(),
            "wifi_ssid": cfg.wifi_ssid,
            "wifi_password": password_text,
            "ntp_server": cfg.ntp_server,
            "token_ttl_secs": cfg.token_ttl_secs,
            "root_cas": root_cas,
            "root_ca_error": root_ca_error,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!(
        "{}: {} bytes, NVS namespace 'dps', {} of {} pages used",
        a.file.display(),
        image.len(),
        pages.in_use,
        pages.total
    );
    println!("  ID scope:        {}", cfg.id_scope);
    println!("  registration ID: {}", cfg.registration_id);
    println!("  DPS host:        {}", cfg.dps_host);
    print_optional(&cfg);
    println!("  device key:      {key_text}");
    println!("  key fingerprint: sha256:{}", cfg.device_key.fingerprint());
    match &cfg.wifi_ssid {
        Some(ssid) => println!("  Wi-Fi SSID:      {ssid:?}"),
        None => println!("  Wi-Fi SSID:      not set"),
    }
    println!(
        "  Wi-Fi password:  {}",
        password_text.as_deref().unwrap_or("not set")
    );
    match certs {
        Ok(list) => {
            for c in list {
                let state = if c.is_expired(now) {
                    "EXPIRED"
                } else {
                    "valid"
                };
                println!("  root CA:         {}", c.subject);
                println!(
                    "                   expires {} ({state}), sha256 {}",
                    c.not_after.date(),
                    c.sha256
                );
                if c.is_expired(now) {
                    eprintln!("warning: root CA {:?} in this image expired on {}; rebuild the image with current roots", c.common_name, c.not_after.date());
                }
            }
        }
        Err(e) => {
            println!("  root CA:         cannot parse");
            eprintln!("warning: {e}");
        }
    }
    Ok(())
}
