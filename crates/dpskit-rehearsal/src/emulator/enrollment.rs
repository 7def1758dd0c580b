//! Enrollment groups and token validation, the way DPS and IoT Hub check a device.
//!
//! A device never sends its key; it signs `{sr}\n{se}`. To check it the emulator recomputes
//! the device key from the group key and the registration ID (primary and secondary group key
//! both count), signs `sr` exactly as received (`%2F` and `%2f` sign differently), and checks
//! `skn` and the expiry. When the signature does not match, the known mistakes are replayed
//! (the group key used directly, an ID hashed with a newline or in another case, `sr` signed
//! in another encoding) so the rejection says which one it was, not just "unauthorized".

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dpskit_core::sas::{dps_resource, hub_resource, human_duration};
use dpskit_core::{GroupKey, IdScope, SasToken};
use dpskit_factory::keys::{KeySource, SourceError};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// Default host name the emulator assigns devices to: what the server certificate carries.
pub const DEFAULT_HUB_HOST: &str = "localhost";
/// A token valid for longer than this draws a warning (clock ahead, or `se` in milliseconds).
const FAR_FUTURE_SECS: u64 = 366 * 24 * 3600;

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
}

/// The groups the emulator serves, looked up by ID scope (case-insensitively, like DPS).
#[derive(Debug, Clone, Default)]
pub struct Enrollments {
    groups: Vec<Arc<Group>>,
}

impl Enrollments {
    /// Refuses an empty list, bad scopes and a scope given twice.
    pub fn new(groups: Vec<Group>) -> Result<Self> {
        if groups.is_empty() {
            bail!("--scope: no enrollment group configured; give --scope and a group key, or --groups FILE");
        }
        let mut out: Vec<Arc<Group>> = Vec::new();
        for g in groups {
            IdScope::parse(&g.id_scope).map_err(|e| anyhow!("{e}"))?;
            if g.hub_host.is_empty() || g.hub_host.contains('/') {
                bail!(
                    "hub host {:?}: give a host name such as localhost",
                    g.hub_host
                );
            }
            if out
                .iter()
                .any(|o| o.id_scope.eq_ignore_ascii_case(&g.id_scope))
            {
                bail!("ID scope {}: configured twice; each enrollment group needs its own scope in the emulator", g.id_scope);
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

/// Reads a `--groups` file. Keys come from files or environment variables named there, never
/// from the TOML itself, so the file can be shared and committed.
pub fn load_groups_file(path: &Path) -> Result<Vec<Group>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--groups: cannot read {}", path.display()))?;
    let file: GroupsFile = toml::from_str(&text)
        .map_err(|e| anyhow!("--groups {}: {}", path.display(), e.to_string().trim()))?;
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
            .ok_or_else(|| anyhow!("{at}: give primary_key_file or primary_key_env"))?;
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

fn read_key(
    base: &Path,
    at: &str,
    which: &str,
    file: Option<String>,
    env: Option<String>,
) -> Result<Option<GroupKey>> {
    let source = match (file, env) {
        (Some(_), Some(_)) => bail!("{at}: give {which}_key_file or {which}_key_env, not both"),
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
        Err(SourceError::EnvUnset(v)) => bail!("{at}: {which}_key_env names {v}, which is not set"),
        Err(SourceError::Key(e)) => bail!("{at}: {e}"),
        Err(e) => bail!("{which}_key_file: {e}"),
    }
}

/// Which group key the device's key was derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Primary,
    Secondary,
}

/// A token that passed.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub key: KeySlot,
    pub expiry: u64,
    /// Things that work but deserve a note (a far-future expiry).
    pub warnings: Vec<String>,
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
}

/// What a token must be for.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// DPS: `{scope}/registrations/{id}`, `skn` absent or `registration`.
    Dps {
        id_scope: &'a str,
        registration_id: &'a str,
    },
    /// IoT Hub: `{host}/devices/{id}`, no `skn`.
    Hub { host: &'a str, device_id: &'a str },
}

impl Audience<'_> {
    fn resource(&self) -> String {
        match self {
            Audience::Dps {
                id_scope,
                registration_id,
            } => dps_resource(id_scope, registration_id),
            Audience::Hub { host, device_id } => hub_resource(host, device_id),
        }
    }

    fn id(&self) -> &str {
        match self {
            Audience::Dps {
                registration_id, ..
            } => registration_id,
            Audience::Hub { device_id, .. } => device_id,
        }
    }

    fn service(&self) -> &'static str {
        match self {
            Audience::Dps { .. } => "DPS",
            Audience::Hub { .. } => "IoT Hub",
        }
    }
}

/// Checks a CONNECT password as DPS / IoT Hub would, at Unix time `now`.
pub fn validate(
    group: &Group,
    audience: Audience<'_>,
    password: &str,
    now: u64,
) -> Result<Accepted, Rejection> {
    let token = match SasToken::parse(password) {
        Ok(t) => t,
        Err(e) => return Err(Rejection::unauthorized(not_a_token(group, password, &e))),
    };
    match (&audience, token.skn.as_deref()) {
        (Audience::Dps { .. }, None) => {}
        (Audience::Dps { .. }, Some(s)) if s.eq_ignore_ascii_case("registration") => {}
        (Audience::Dps { .. }, Some(s)) => {
            return Err(Rejection::unauthorized(format!(
                "the token has skn={s}; a DPS device token carries skn=registration or no skn at all"
            )))
        }
        (Audience::Hub { .. }, None) => {}
        (Audience::Hub { .. }, Some(s)) => {
            return Err(Rejection::unauthorized(format!(
                "the token has skn={s}, which marks a shared-access-policy token; a device token for IoT Hub carries no skn (was the DPS token, with skn=registration, reused for the hub?)"
            )))
        }
    }
    let expected = audience.resource();
    let resource = token.resource().unwrap_or_default();
    if !resource.eq_ignore_ascii_case(&expected) {
        let hint = match audience {
            Audience::Dps { .. } if resource.contains("/devices/") => {
                " (this is an IoT Hub token sent to DPS)"
            }
            Audience::Hub { .. } if resource.contains("/registrations/") => {
                " (this is the DPS token sent to the hub)"
            }
            _ => "",
        };
        return Err(Rejection::unauthorized(format!(
            "the token is signed for resource {resource:?} but {} expects {expected:?}{hint}; sr must be the {} resource of this device",
            audience.service(),
            audience.service()
        )));
    }
    let expired_note = (token.expiry <= now).then(|| expired_text(token.expiry, now));
    let key = match signature_key(group, &audience, &token) {
        Ok(k) => k,
        Err(mut why) => {
            if let Some(note) = expired_note {
                why.push_str(&format!("; besides, the {note}"));
            }
            return Err(Rejection::unauthorized(why));
        }
    };
    if let Some(note) = expired_note {
        return Err(Rejection::unauthorized(note));
    }
    let mut warnings = Vec::new();
    if token.expiry > now + FAR_FUTURE_SECS {
        warnings.push(format!(
            "the token is valid for another {}; accepted, but the device clock is ahead or se is in milliseconds instead of seconds",
            human_duration(token.expiry - now)
        ));
    }
    Ok(Accepted {
        key,
        expiry: token.expiry,
        warnings,
    })
}

/// Plain words for an expired token, with the SNTP hint.
fn expired_text(expiry: u64, now: u64) -> String {
    if expiry < 1_000_000_000 {
        return format!(
            "token expired long ago: se={expiry} is in {}; the device clock was not set when it signed (wait for SNTP before making the token)",
            1970 + expiry / 31_557_600
        );
    }
    format!(
        "token expired {} ago; is the device clock set (SNTP)? The token's se={expiry}, the emulator's clock {now}; sign tokens with the current time",
        human_duration(now - expiry)
    )
}

/// Finds the key that made the signature, or explains which mistake did.
fn signature_key(
    group: &Group,
    audience: &Audience<'_>,
    token: &SasToken,
) -> Result<KeySlot, String> {
    let id = audience.id();
    let primary = group.primary.derive(id);
    if token.verify(&primary) {
        return Ok(KeySlot::Primary);
    }
    let secondary = group.secondary.as_ref().map(|s| s.derive(id));
    if let Some(k) = &secondary {
        if token.verify(k) {
            return Ok(KeySlot::Secondary);
        }
    }
    let sig = B64.decode(&token.sig_base64).unwrap_or_default();
    let to_sign = |sr: &str| format!("{sr}\n{}", token.expiry);
    // The group key used directly as the device key (pitfall P1).
    let groups = [
        (Some(&group.primary), "primary"),
        (group.secondary.as_ref(), "secondary"),
    ];
    for (g, which) in groups {
        if let Some(g) = g {
            // HMAC keyed with the group key's bytes is exactly what derive_bytes computes.
            if g.derive_bytes(to_sign(&token.sr_encoded).as_bytes())
                .as_bytes()[..]
                == sig[..]
            {
                return Err(format!(
                    "signed with the enrollment group {which} key itself; flash the derived key (`dpskit derive` computes it from the group key and the registration ID) — the group key must never be on a device"
                ));
            }
        }
    }
    // The right key, but `sr` signed in another form than sent.
    let decoded = token.resource().unwrap_or_default();
    let forms = [
        decoded.clone(),
        token.sr_encoded.replace("%2F", "%2f"),
        token.sr_encoded.replace("%2f", "%2F"),
        dpskit_core::topic::encode_component(&decoded.to_ascii_lowercase()),
        dpskit_core::topic::encode_component(&decoded),
    ];
    for key in std::iter::once(&primary).chain(secondary.as_ref()) {
        for form in forms.iter().filter(|f| **f != token.sr_encoded) {
            if key.sign(to_sign(form).as_bytes())[..] == sig[..] {
                return Err(format!(
                    "the key is right but the signature covers sr={form:?} while the token sends sr={:?}; sign exactly the encoded string you send (%2F and %2f sign differently)",
                    token.sr_encoded
                ));
            }
        }
    }
    // A device key derived from a mistaken spelling of the ID (pitfall P3).
    let variants = dpskit_core::diagnosis::id_spelling_mistakes(id);
    for g in std::iter::once(&group.primary).chain(group.secondary.as_ref()) {
        for (bytes, mistake) in &variants {
            if token.verify(&g.derive_bytes(bytes)) {
                return Err(format!("the device key was {mistake}"));
            }
        }
    }
    Err(format!(
        "the signature matches no key derived from this group's {} for {} {id:?}: the device holds a wrong key (run `dpskit derive` for exactly this ID), a key of another enrollment group, or a corrupted copy",
        if group.secondary.is_some() { "primary or secondary key" } else { "key" },
        match audience { Audience::Dps { .. } => "registration ID", Audience::Hub { .. } => "device ID" },
    ))
}

/// Explains a password that is not a SAS token at all (the rule lives in the core).
fn not_a_token(group: &Group, password: &str, parse_error: &dpskit_core::sas::SasError) -> String {
    let keys: Vec<&GroupKey> = std::iter::once(&group.primary)
        .chain(group.secondary.as_ref())
        .collect();
    dpskit_core::sas::not_a_token("the password", password, &keys, parse_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpskit_core::DeviceKey;

    const G: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    const S: &str =
        "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";
    const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
    const SCOPE: &str = "0ne00000000";
    const NOW: u64 = 1_700_000_000;

    fn group() -> Group {
        let mut g = Group::new(SCOPE, GroupKey::parse(G, "g").unwrap());
        g.secondary = Some(GroupKey::parse(S, "s").unwrap());
        g
    }

    fn dps() -> Audience<'static> {
        Audience::Dps {
            id_scope: SCOPE,
            registration_id: ID,
        }
    }

    fn token(key: &DeviceKey, expiry: u64) -> String {
        SasToken::generate(key, &dps_resource(SCOPE, ID), expiry, Some("registration")).to_string()
    }

    #[test]
    fn accepts_primary_and_secondary_derivations_and_lower_case_escapes() {
        let g = group();
        let ok = validate(&g, dps(), &token(&g.primary.derive(ID), NOW + 60), NOW).unwrap();
        assert_eq!(ok.key, KeySlot::Primary);
        let ok = validate(
            &g,
            dps(),
            &token(&g.secondary.as_ref().unwrap().derive(ID), NOW + 60),
            NOW,
        )
        .unwrap();
        assert_eq!(ok.key, KeySlot::Secondary);
        // The reference's %2f vector: signed over the lower-case form, valid at its expiry.
        let wire = "SharedAccessSignature sr=0ne00000000%2fregistrations%2fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=zbIlOWEYoHGEP2MF6mr2reJR%2BtoDRTIOMfzOZMhYfeQ%3D&se=1700000000";
        assert!(validate(&g, dps(), wire, NOW - 10).is_ok());
    }

    #[test]
    fn explains_each_mistake() {
        let g = group();
        let expired = validate(
            &g,
            dps(),
            &token(&g.primary.derive(ID), NOW - 3 * 3600),
            NOW,
        )
        .unwrap_err();
        assert!(
            expired.reason.contains("expired 3 h ago") && expired.reason.contains("SNTP"),
            "{}",
            expired.reason
        );
        // Group key itself: sign with the raw 64-byte group key.
        let sr = dpskit_core::topic::encode_component(&dps_resource(SCOPE, ID));
        let sig = B64.encode(
            g.primary
                .derive_bytes(format!("{sr}\n{}", NOW + 60).as_bytes())
                .as_bytes(),
        );
        let wire = format!(
            "SharedAccessSignature sr={sr}&sig={}&se={}",
            dpskit_core::topic::encode_component(&sig),
            NOW + 60
        );
        let r = validate(&g, dps(), &wire, NOW).unwrap_err();
        assert!(
            r.reason.contains(
                "signed with the enrollment group primary key itself; flash the derived key"
            ),
            "{}",
            r.reason
        );
        let newline = g.primary.derive(&format!("{ID}\n"));
        let r = validate(&g, dps(), &token(&newline, NOW + 60), NOW).unwrap_err();
        assert!(r.reason.contains("trailing newline"), "{}", r.reason);
        let forged = DeviceKey::from_bytes([7; 32]);
        let r = validate(&g, dps(), &token(&forged, NOW + 60), NOW).unwrap_err();
        assert!(r.reason.contains("matches no key derived"), "{}", r.reason);
        let r = validate(&g, dps(), G, NOW).unwrap_err();
        assert!(r.reason.contains("group key itself"), "{}", r.reason);
        let hub = SasToken::generate(
            &g.primary.derive(ID),
            &hub_resource("localhost", ID),
            NOW + 60,
            None,
        )
        .to_string();
        let r = validate(&g, dps(), &hub, NOW).unwrap_err();
        assert!(
            r.reason.contains("IoT Hub token sent to DPS"),
            "{}",
            r.reason
        );
        let r = validate(
            &g,
            Audience::Hub {
                host: "localhost",
                device_id: ID,
            },
            &token(&g.primary.derive(ID), NOW + 60),
            NOW,
        )
        .unwrap_err();
        assert!(r.reason.contains("skn=registration"), "{}", r.reason);
        let far = validate(&g, dps(), &token(&g.primary.derive(ID), NOW * 1000), NOW).unwrap();
        assert!(far.warnings[0].contains("milliseconds"));
    }

    #[test]
    fn groups_file() {
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
        std::fs::write(
            dir.path().join("bad.toml"),
            "[[group]]\nid_scope = \"0ne00000001\"\nprimary_key = \"x\"\n",
        )
        .unwrap();
        assert!(load_groups_file(&dir.path().join("bad.toml")).is_err());
    }
}
