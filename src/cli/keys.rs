//! `dpskit derive`, `dpskit verify`, `dpskit sas`: everything about keys and tokens.

use super::key_args::{read_secret_file, GroupKeyArgs};
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use dpskit_core::sas::{dps_resource, hub_resource, human_duration, SasToken};
use dpskit_core::{DeviceKey, GroupKey, IdScope, RegistrationId};
use dpskit_factory::error::CheckFailed;
use dpskit_factory::files::write_private_file;
use dpskit_factory::keys::token::{self, Signer, TokenProblem};
use dpskit_factory::keys::{self, batch, verify};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct DeriveArgs {
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
    /// A registration ID (repeatable).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    /// File with one registration ID per line.
    #[arg(long = "ids", value_name = "FILE")]
    pub ids_file: Option<PathBuf>,
    /// A numbered range, e.g. 'sn-{0001..0100}'.
    #[arg(long, value_name = "PATTERN")]
    pub range: Option<String>,
    /// Accept upper-case letters in IDs (the key covers the exact bytes).
    #[arg(long)]
    pub allow_uppercase: bool,
    /// Output format (default: table on the terminal; for -o, from the file extension).
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Write the keys to FILE (mode 0600) instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Show full keys in the table (they are masked by default).
    #[arg(long)]
    pub show_keys: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// CSV of `registration_id,device_key` rows to check.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
    /// File with the group's secondary key, to recognise keys derived from it.
    #[arg(long, value_name = "FILE")]
    pub secondary_key_file: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SasCommand {
    /// A DPS registration token (resource `{scope}/registrations/{id}`, skn=registration).
    Dps(SasDpsArgs),
    /// An IoT Hub device token (resource `{hub}/devices/{device}`).
    Hub(SasHubArgs),
    /// Decode a token and, given the device key, check its signature.
    Inspect(SasInspectArgs),
}

/// Where the signing key comes from: a derived key file, or the group key plus the ID.
#[derive(Args, Debug)]
pub struct SigningKeyArgs {
    /// File holding the derived device key (base64).
    #[arg(long, value_name = "FILE")]
    pub device_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
    /// Token lifetime, e.g. 3600, 90m, 1h, 2d.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: u64,
}

#[derive(Args, Debug)]
pub struct SasDpsArgs {
    #[arg(long)]
    pub id_scope: String,
    #[arg(long)]
    pub registration_id: String,
    #[arg(long)]
    pub allow_uppercase: bool,
    #[command(flatten)]
    pub key: SigningKeyArgs,
}

#[derive(Args, Debug)]
pub struct SasHubArgs {
    /// The IoT Hub host name, e.g. myhub.azure-devices.net.
    #[arg(long)]
    pub hub: String,
    #[arg(long)]
    pub device_id: String,
    #[arg(long)]
    pub allow_uppercase: bool,
    #[command(flatten)]
    pub key: SigningKeyArgs,
}

#[derive(Args, Debug)]
pub struct SasInspectArgs {
    /// The token, or '-' to read it from standard input.
    pub token: String,
    /// File holding the device key, to check the signature.
    #[arg(long, value_name = "FILE")]
    pub device_key_file: Option<PathBuf>,
    /// Or the group key: the device key is derived for the token's ID, and a bad signature is
    /// explained (group key used directly, ID spelled differently, sr encoded differently).
    #[command(flatten)]
    pub group_key: GroupKeyArgs,
}

pub fn derive(a: DeriveArgs) -> Result<()> {
    let ids = batch::collect(
        &a.ids,
        a.ids_file.as_deref(),
        a.range.as_deref(),
        a.allow_uppercase,
    )?;
    let group = a.group_key.read()?;
    let derived = keys::derive_all(&group, &ids);
    let format = a.format.unwrap_or_else(|| match &a.output {
        Some(p)
            if p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json")) =>
        {
            OutputFormat::Json
        }
        Some(_) => OutputFormat::Csv,
        None => OutputFormat::Table,
    });
    let mask = a.output.is_none() && format == OutputFormat::Table && !a.show_keys;
    let text = render_keys(&derived, format, mask)?;
    match &a.output {
        Some(path) => {
            write_private_file(path, text.as_bytes())?;
            eprintln!(
                "wrote {} device keys to {} (mode 0600)",
                derived.len(),
                path.display()
            );
        }
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

fn render_keys(keys: &[keys::DerivedKey], format: OutputFormat, mask: bool) -> Result<String> {
    Ok(match format {
        OutputFormat::Json => serde_json::to_string_pretty(keys)? + "\n",
        OutputFormat::Csv => {
            let mut s = String::from("registration_id,device_key\n");
            for k in keys {
                s.push_str(&format!(
                    "{},{}\n",
                    k.registration_id,
                    k.device_key.to_base64()
                ));
            }
            s
        }
        OutputFormat::Table => {
            let width = keys
                .iter()
                .map(|k| k.registration_id.len())
                .max()
                .unwrap_or(0)
                .max(15);
            let mut s = format!("{:width$}  DEVICE KEY\n", "REGISTRATION ID");
            for k in keys {
                let shown = if mask {
                    k.device_key.masked()
                } else {
                    k.device_key.to_base64()
                };
                s.push_str(&format!("{:width$}  {shown}\n", k.registration_id));
            }
            if mask {
                s.push_str("(keys masked; --show-keys to print them, or -o FILE to save them)\n");
            }
            s
        }
    })
}

pub fn verify(a: VerifyArgs) -> Result<()> {
    let rows = verify::read_rows(&a.input)?;
    let primary = a.group_key.read()?;
    let secondary = a
        .secondary_key_file
        .as_deref()
        .map(|p| -> Result<GroupKey> {
            Ok(GroupKey::parse(
                &read_secret_file(p, "--secondary-key-file")?,
                "secondary key (--secondary-key-file)",
            )?)
        })
        .transpose()?;
    let results = verify::verify_rows(&primary, secondary.as_ref(), &rows);
    let bad = results.iter().filter(|r| !r.ok).count();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        for r in &results {
            match &r.problem {
                None => println!("ok        line {:>4}  {}", r.line, r.registration_id),
                Some(p) => println!("MISMATCH  line {:>4}  {}: {p}", r.line, r.registration_id),
            }
        }
        println!("{} of {} keys match", results.len() - bad, results.len());
    }
    if bad > 0 {
        return Err(CheckFailed(format!("{bad} of {} keys do not match", results.len())).into());
    }
    Ok(())
}

pub fn sas(c: SasCommand) -> Result<()> {
    match c {
        SasCommand::Dps(a) => {
            let (scope, warning) = IdScope::parse(&a.id_scope)?;
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            let id = RegistrationId::parse(&a.registration_id, a.allow_uppercase)?;
            let key = signing_key(&a.key, id.as_str())?;
            let token = SasToken::generate(
                &key,
                &dps_resource(scope.as_str(), id.as_str()),
                now() + a.key.ttl,
                Some("registration"),
            );
            println!("{token}");
        }
        SasCommand::Hub(a) => {
            if a.hub.is_empty() || a.hub.contains(['/', ' ']) {
                bail!(
                    "--hub: {:?} is not a host name; use e.g. myhub.azure-devices.net",
                    a.hub
                );
            }
            let id = RegistrationId::parse(&a.device_id, a.allow_uppercase)
                .map_err(|e| anyhow::anyhow!("--device-id: {e}"))?;
            let key = signing_key(&a.key, id.as_str())?;
            let token = SasToken::generate(
                &key,
                &hub_resource(&a.hub, id.as_str()),
                now() + a.key.ttl,
                None,
            );
            println!("{token}");
        }
        SasCommand::Inspect(a) => inspect(a)?,
    }
    Ok(())
}

fn signing_key(a: &SigningKeyArgs, id: &str) -> Result<DeviceKey> {
    match (&a.device_key_file, a.group_key.is_given()) {
        (Some(path), false) => {
            Ok(DeviceKey::parse(&read_secret_file(path, "--device-key-file")?, "device key (--device-key-file)")?)
        }
        (None, true) => Ok(a.group_key.read()?.derive(id)),
        (Some(_), true) => bail!(
            "signing key: both --device-key-file and a group key given; use one (DPSKIT_GROUP_KEY counts as given)"
        ),
        (None, false) => bail!(
            "signing key: none given; use --device-key-file FILE, or the group key (--group-key-file, --group-key-stdin, DPSKIT_GROUP_KEY)"
        ),
    }
}

fn inspect(a: SasInspectArgs) -> Result<()> {
    if a.token == "-" && a.group_key.group_key_stdin {
        bail!("TOKEN '-' and --group-key-stdin both read standard input; give the group key with --group-key-file or DPSKIT_GROUP_KEY");
    }
    let device_key = match (&a.device_key_file, a.group_key.is_given()) {
        (Some(_), true) => bail!(
            "signing key: both --device-key-file and a group key given; use one (DPSKIT_GROUP_KEY counts as given)"
        ),
        (Some(path), false) => Some(DeviceKey::parse(
            &read_secret_file(path, "--device-key-file")?,
            "device key (--device-key-file)",
        )?),
        (None, _) => None,
    };
    let group_key = match a.group_key.is_given() {
        true => Some(a.group_key.read()?),
        false => None,
    };
    let text = if a.token == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        a.token.clone()
    };
    let signer = match (&device_key, &group_key) {
        (Some(k), _) => Some(Signer::Device(k)),
        (None, Some(g)) => Some(Signer::Group {
            primary: g,
            secondary: None,
        }),
        (None, None) => None,
    };
    let found = token::inspect(&text, signer, now()).map_err(|e| match e {
        // The parser's own words when the text is no key either.
        TokenProblem::Malformed { error, .. } => anyhow::anyhow!("{error}"),
        other => anyhow::anyhow!("{other}"),
    })?;
    let kind = match &found.audience {
        Some(token::Audience::Dps { .. }) => "DPS registration",
        Some(token::Audience::Hub { .. }) => "IoT Hub device",
        None => "unknown resource",
    };
    let t = &found.token;
    println!("resource (sr): {}  [{kind}]", found.resource);
    println!("sr as sent:    {}", t.sr_encoded);
    let when = utc(t.expiry);
    match &found.expired {
        Some(e) => println!(
            "expires (se):  {when} (EXPIRED {} ago)",
            human_duration(e.now - e.expiry)
        ),
        None => println!(
            "expires (se):  {when} (in {})",
            human_duration(t.expiry - now().min(t.expiry))
        ),
    }
    println!("policy (skn):  {}", t.skn.as_deref().unwrap_or("(none)"));
    let whose = if device_key.is_some() {
        "the given device key"
    } else {
        "the key derived from the group key"
    };
    match &found.signature {
        None => {}
        Some(Ok(_)) => println!("signature:     valid for {whose}"),
        Some(Err(why)) => match &device_key {
            Some(k) => println!(
                "signature:     INVALID for {whose} (key {}): {why}",
                k.masked()
            ),
            None => println!("signature:     INVALID for {whose}: {why}"),
        },
    }
    for w in &found.warnings {
        println!("warning:       {w}");
    }
    let problems = found.problems();
    if !problems.is_empty() {
        return Err(CheckFailed(problems.join("; ")).into());
    }
    Ok(())
}

/// Current Unix time in seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

use dpskit_factory::timestamp::utc_words as utc;

/// Parses `3600`, `90s`, `30m`, `1h`, `2d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3600, 30m, 1h or 2d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use s, m, h or d")),
    };
    let v = n.checked_mul(mult).ok_or("duration too large")?;
    if v == 0 {
        return Err("a token lifetime must be at least 1 second".into());
    }
    Ok(v)
}
