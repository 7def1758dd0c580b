//! Enrollment groups: what the emulator serves (ID scope, group keys, assigned hub), read from
//! the flags or a `--groups` TOML file, and the one question asked of them for every CONNECT:
//! does this password pass for this audience? The answer and its plain-words diagnosis come
//! from [`dpskit_factory::keys::token`], the same code `dpskit sas inspect` runs.

use dpskit_core::{GroupKey, IdScope};
use dpskit_factory::keys::token::{self, Audience, Signer};
use dpskit_factory::keys::{KeySource, SourceError};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use dpskit_factory::keys::token::{Accepted, KeySlot};

/// Default host name the emulator assigns devices to: what the server certificate carries.
pub const DEFAULT_HUB_HOST: &str = "localhost";

/// One symmetric-key enrollment group.
#[derive(Debug, Clone)]
pub struct Group {
    pub id_scope: String,
    pub primary: GroupKey,
    pub secondary: Option<GroupKey>,
    /// The hub DPS assigns this group's devices to (`assignedHub`).
    pub hub_host: String,
    /// Answer the first N register requests of this group with 429 (to rehearse throttling).
    pub throttle_first_n: u32,
}

impl Group {
    pub fn new(id_scope: &str, primary: GroupKey) -> Self {
        Group {
            id_scope: id_scope.to_string(),
            primary,
            secondary: None,
            hub_host: DEFAULT_HUB_HOST.to_string(),
            throttle_first_n: 0,
        }
    }

    fn signer(&self) -> Signer<'_> {
        Signer::Group {
            primary: &self.primary,
            secondary: self.secondary.as_ref(),
        }
    }
}

/// Why the enrollment groups could not be set up. Messages name the file, group and field;
/// they never quote a line of the file (it may hold a key by mistake).
#[derive(Debug, thiserror::Error)]
pub enum GroupsError {
    #[error(
        "--scope: no enrollment group configured; give --scope and a group key, or --groups FILE"
    )]
    None,
    #[error("{0}")]
    Scope(String),
    #[error("hub host {0:?}: give a host name such as localhost")]
    HubHost(String),
    #[error(
        "ID scope {0}: configured twice; each enrollment group needs its own scope in the emulator"
    )]
    Twice(String),
    #[error("--groups: cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--groups {}: {what}{}; see `dpskit emulate --help` for the [[group]] keys", path.display(), .line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Toml {
        path: PathBuf,
        line: Option<usize>,
        what: String,
    },
    #[error("{at}: {problem}")]
    Key { at: String, problem: String },
}

/// The groups the emulator serves, looked up by ID scope (case-insensitively, like DPS).
#[derive(Debug, Clone, Default)]
pub struct Enrollments {
    groups: Vec<Arc<Group>>,
}

impl Enrollments {
    /// Refuses an empty list, bad scopes and a scope given twice.
    pub fn new(groups: Vec<Group>) -> Result<Self, GroupsError> {
        if groups.is_empty() {
            return Err(GroupsError::None);
        }
        let mut out: Vec<Arc<Group>> = Vec::new();
        for g in groups {
            IdScope::parse(&g.id_scope).map_err(|e| GroupsError::Scope(e.to_string()))?;
            if g.hub_host.is_empty() || g.hub_host.contains(['/', ' ']) {
                return Err(GroupsError::HubHost(g.hub_host));
            }
            if out
                .iter()
                .any(|o| o.id_scope.eq_ignore_ascii_case(&g.id_scope))
            {
                return Err(GroupsError::Twice(g.id_scope));
            }
            out.push(Arc::new(g));
        }
        Ok(Enrollments { groups: out })
    }

    pub fn by_scope(&self, scope: &str) -> Option<&Arc<Group>> {
        self.groups
            .iter()
            .find(|g| g.id_scope.eq_ignore_ascii_case(scope))
    }

    pub fn groups(&self) -> &[Arc<Group>] {
        &self.groups
    }

    /// The configured scopes, for messages (scopes are not secret).
    pub fn scope_list(&self) -> String {
        self.groups
            .iter()
            .map(|g| g.id_scope.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The `--groups` TOML file: `[[group]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsFile {
    group: Vec<GroupEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupEntry {
    id_scope: String,
    /// Path of a file holding the primary key (relative to the TOML file).
    primary_key_file: Option<String>,
    /// Or the name of an environment variable holding it.
    primary_key_env: Option<String>,
    secondary_key_file: Option<String>,
    secondary_key_env: Option<String>,
    hub_host: Option<String>,
    #[serde(default)]
    throttle_first_n: u32,
}

/// Every key a `[[group]]` table may have: the only words of a file a message may repeat.
const GROUP_KEYS: [&str; 7] = [
    "id_scope",
    "primary_key_file",
    "primary_key_env",
    "secondary_key_file",
    "secondary_key_env",
    "hub_host",
    "throttle_first_n",
];

/// Reads a `--groups` file. Keys come from files or environment variables named there, never
/// from the TOML itself, so the file can be shared and committed.
pub fn load_groups_file(path: &Path) -> Result<Vec<Group>, GroupsError> {
    let text = std::fs::read_to_string(path).map_err(|source| GroupsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file: GroupsFile = toml::from_str(&text).map_err(|e| GroupsError::Toml {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(&text, s.start)),
        what: toml_problem(&text, &e),
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, e) in file.group.into_iter().enumerate() {
        let at = format!(
            "--groups {} group {} ({})",
            path.display(),
            i + 1,
            e.id_scope
        );
        let primary = read_key(base, &at, "primary", e.primary_key_file, e.primary_key_env)?
            .ok_or_else(|| GroupsError::Key {
                at: at.clone(),
                problem: "give primary_key_file or primary_key_env".into(),
            })?;
        let secondary = read_key(
            base,
            &at,
            "secondary",
            e.secondary_key_file,
            e.secondary_key_env,
        )?;
        let mut g = Group::new(&e.id_scope, primary);
        g.secondary = secondary;
        if let Some(h) = e.hub_host {
            g.hub_host = h;
        }
        g.throttle_first_n = e.throttle_first_n;
        out.push(g);
    }
    Ok(out)
}

/// 1-based line of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// What is wrong, in words that quote nothing from the file but the known key names: toml's
/// own message shows the offending line and serde's may repeat a value, and either could be a
/// group key pasted into the wrong place.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let message = e.message();
    let key_on_line = e.span().and_then(|s| {
        let start = text[..s.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = text[start..].lines().next().unwrap_or("");
        let key = line.split('=').next()?.trim();
        GROUP_KEYS.contains(&key).then(|| key.to_string())
    });
    let known = |m: &str| GROUP_KEYS.iter().find(|k| m.contains(&format!("`{k}`")));
    if message.starts_with("missing field") {
        if let Some(k) = known(message) {
            return format!("a [[group]] table lacks {k}");
        }
        return "a required key is missing (every file needs [[group]] tables with id_scope)"
            .into();
    }
    if message.starts_with("unknown field") {
        return format!(
            "a key that is not one of {}; keys are named, never written, in this file (primary_key_file or primary_key_env)",
            GROUP_KEYS.join(", ")
        );
    }
    let what = if message.starts_with("invalid type") || message.starts_with("invalid value") {
        "a value of the wrong type"
    } else if message.contains("duplicate key") {
        "a key given twice"
    } else {
        "not valid TOML"
    };
    match key_on_line {
        Some(k) => format!("{k}: {what}"),
        None => what.to_string(),
    }
}

fn read_key(
    base: &Path,
    at: &str,
    which: &str,
    file: Option<String>,
    env: Option<String>,
) -> Result<Option<GroupKey>, GroupsError> {
    let fail = |problem: String| GroupsError::Key {
        at: at.to_string(),
        problem,
    };
    let source = match (file, env) {
        (Some(_), Some(_)) => {
            return Err(fail(format!(
                "give {which}_key_file or {which}_key_env, not both"
            )))
        }
        (Some(f), None) => KeySource::File(base.join(f)),
        (None, Some(v)) => KeySource::Env(v),
        (None, None) => return Ok(None),
    };
    let field = if which == "primary" {
        "primary group key"
    } else {
        "secondary group key"
    };
    match source.group_key(field) {
        Ok((key, warning)) => {
            if let Some(w) = warning {
                eprintln!("warning: {at}: {which}_key_file: {w}");
            }
            Ok(Some(key))
        }
        Err(SourceError::EnvUnset(v)) => {
            Err(fail(format!("{which}_key_env names {v}, which is not set")))
        }
        Err(SourceError::Key(e)) => Err(fail(e.to_string())),
        Err(e) => Err(fail(format!("{which}_key_file: {e}"))),
    }
}

/// Why a device was refused, in plain words; `status`/`error_code` as DPS would send them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub error_code: u32,
    pub reason: String,
}

impl Rejection {
    pub fn unauthorized(reason: impl Into<String>) -> Self {
        Rejection {
            status: 401,
            error_code: 401002,
            reason: reason.into(),
        }
    }

    pub fn bad_request(reason: impl Into<String>) -> Self {
        Rejection {
            status: 400,
            error_code: 400004,
            reason: reason.into(),
        }
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        Rejection {
            status: 404,
            error_code: 404002,
            reason: reason.into(),
        }
    }

    pub fn conflict(reason: impl Into<String>) -> Self {
        Rejection {
            status: 409,
            error_code: 409001,
            reason: reason.into(),
        }
    }

    pub fn throttled(reason: impl Into<String>) -> Self {
        Rejection {
            status: 429,
            error_code: 429001,
            reason: reason.into(),
        }
    }
}

/// Checks a CONNECT password as DPS / IoT Hub would, at Unix time `now`.
pub fn validate(
    group: &Group,
    audience: &Audience,
    password: &str,
    now: u64,
) -> Result<Accepted, Rejection> {
    let keys: Vec<&GroupKey> = std::iter::once(&group.primary)
        .chain(group.secondary.as_ref())
        .collect();
    token::parse("the password", password, &keys)
        .and_then(|t| token::check(&t, audience, group.signer(), now))
        .map_err(|p| Rejection::unauthorized(p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpskit_core::sas::dps_resource;
    use dpskit_core::SasToken;

    const G: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";

    #[test]
    fn validate_maps_the_diagnosis_to_a_401() {
        let g = Group::new("0ne00000000", GroupKey::parse(G, "g").unwrap());
        let audience = Audience::Dps {
            id_scope: "0ne00000000".into(),
            registration_id: "dev-1".into(),
        };
        let token = |k: &dpskit_core::DeviceKey| {
            SasToken::generate(k, &dps_resource("0ne00000000", "dev-1"), 2_000, None).to_string()
        };
        assert!(validate(&g, &audience, &token(&g.primary.derive("dev-1")), 1_000).is_ok());
        let r = validate(&g, &audience, G, 1_000).unwrap_err();
        assert_eq!((r.status, r.error_code), (401, 401002));
        assert!(r.reason.contains("group key itself"), "{}", r.reason);
    }

    #[test]
    fn groups_file_errors_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.key"), G).unwrap();
        std::fs::write(
            dir.path().join("groups.toml"),
            "[[group]]\nid_scope = \"0ne00000001\"\nprimary_key_file = \"a.key\"\nhub_host = \"hub-a.local\"\nthrottle_first_n = 2\n",
        )
        .unwrap();
        let groups = load_groups_file(&dir.path().join("groups.toml")).unwrap();
        assert_eq!(groups[0].hub_host, "hub-a.local");
        assert_eq!(groups[0].throttle_first_n, 2);
        let e = Enrollments::new(vec![groups[0].clone(), groups[0].clone()]).unwrap_err();
        assert!(e.to_string().contains("configured twice"));
        // The key pasted into the file, in every place a parser could quote it.
        for (body, want) in [
            (
                format!("[[group]]\nid_scope = \"0ne00000001\"\nprimary_key = \"{G}\"\n"),
                "line 3",
            ),
            (
                format!("[[group]]\nid_scope = \"0ne00000001\"\nthrottle_first_n = \"{G}\"\n"),
                "throttle_first_n: a value of the wrong type (line 3)",
            ),
            (
                format!("[[group]]\nid_scope = \"0ne00000001\"\n{G}\n"),
                "not valid TOML (line 3)",
            ),
            (
                format!("[[group]]\nid_scope = \"0ne00000001\"\nprimary_key_file = {G}\n"),
                "line 3",
            ),
            (format!("[[group]]\n\"{G}\" = 1\n"), "line 2"),
        ] {
            std::fs::write(dir.path().join("bad.toml"), &body).unwrap();
            let e = load_groups_file(&dir.path().join("bad.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains(&G[..12]), "the key leaked: {e}");
        }
    }
}
