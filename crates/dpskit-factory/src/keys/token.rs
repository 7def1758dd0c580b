//! What is wrong with a SAS token, in plain words: the one diagnosis behind the emulator's
//! refusals (a CONNECT password) and `dpskit sas inspect`.
//!
//! A device never sends its key; it signs `{sr}\n{se}`. To check a token the device key is
//! recomputed from the group key and the registration ID (primary and secondary both count),
//! or taken as given, and `sr` is signed exactly as received (`%2F` and `%2f` sign
//! differently). When the signature does not match, the known mistakes are replayed (the group
//! key used directly, an ID hashed with a newline or in another case, `sr` signed in another
//! encoding), so the answer says which one it was, not just "unauthorized".
//!
//! It lives here, not in the `no_std` core, because it needs the group key, which never
//! reaches a board: the firmware could not use it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dpskit_core::diagnosis::{id_spelling_mistakes, Mistake};
use dpskit_core::key::clean_key_text;
use dpskit_core::sas::{dps_resource, hub_resource, human_duration, SasError};
use dpskit_core::{DeviceKey, GroupKey, SasToken};
use std::fmt;

/// A token valid for longer than this draws a warning (clock ahead, or `se` in milliseconds).
pub const FAR_FUTURE_SECS: u64 = 366 * 24 * 3600;

/// What a token must be for: the resource it signs and the `skn` it may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// DPS: `{scope}/registrations/{id}`, `skn` absent or `registration`.
    Dps {
        id_scope: String,
        registration_id: String,
    },
    /// IoT Hub: `{host}/devices/{id}`, no `skn`.
    Hub { host: String, device_id: String },
}

impl Audience {
    /// The resource URI the token must sign (not encoded).
    pub fn resource(&self) -> String {
        match self {
            Audience::Dps {
                id_scope,
                registration_id,
            } => dps_resource(id_scope, registration_id),
            Audience::Hub { host, device_id } => hub_resource(host, device_id),
        }
    }

    /// The registration or device ID the key is derived for.
    pub fn id(&self) -> &str {
        match self {
            Audience::Dps {
                registration_id, ..
            } => registration_id,
            Audience::Hub { device_id, .. } => device_id,
        }
    }

    /// `DPS` or `IoT Hub`.
    pub fn service(&self) -> &'static str {
        match self {
            Audience::Dps { .. } => "DPS",
            Audience::Hub { .. } => "IoT Hub",
        }
    }

    /// The audience a decoded resource names, if it has one of the two shapes.
    pub fn from_resource(resource: &str) -> Option<Audience> {
        if let Some((scope, id)) = resource.split_once("/registrations/") {
            if !scope.is_empty() && !id.is_empty() && !id.contains('/') {
                return Some(Audience::Dps {
                    id_scope: scope.to_string(),
                    registration_id: id.to_string(),
                });
            }
        }
        if let Some((host, id)) = resource.split_once("/devices/") {
            if !host.is_empty() && !host.contains('/') && !id.is_empty() && !id.contains('/') {
                return Some(Audience::Hub {
                    host: host.to_string(),
                    device_id: id.to_string(),
                });
            }
        }
        None
    }
}

/// The key(s) a token is checked against.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// The enrollment group: the device key is derived for the token's ID from either key.
    Group {
        primary: &'a GroupKey,
        secondary: Option<&'a GroupKey>,
    },
    /// A device key as given (`sas inspect --device-key-file`).
    Device(&'a DeviceKey),
}

impl<'a> Signer<'a> {
    fn group_keys(&self) -> Vec<&'a GroupKey> {
        match *self {
            Signer::Group { primary, secondary } => {
                std::iter::once(primary).chain(secondary).collect()
            }
            Signer::Device(_) => Vec::new(),
        }
    }
}

/// Which key made a valid signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    /// Derived from the group's primary key.
    Primary,
    /// Derived from the group's secondary key.
    Secondary,
    /// The device key given.
    Given,
}

/// A token that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub key: KeySlot,
    pub expiry: u64,
    /// Things that work but deserve a note (a far-future expiry).
    pub warnings: Vec<String>,
}

/// An expired token, as of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub expiry: u64,
    pub now: u64,
}

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Expired { expiry, now } = *self;
        if expiry < 1_000_000_000 {
            return write!(
                f,
                "token expired long ago: se={expiry} is in {}; the device clock was not set when it signed (wait for SNTP before making the token)",
                1970 + expiry / 31_557_600
            );
        }
        write!(
            f,
            "token expired {} ago; is the device clock set (SNTP)? The token's se={expiry}, the checker's clock {now}; sign tokens with the current time",
            human_duration(now.saturating_sub(expiry))
        )
    }
}

/// Why a signature does not verify: the mistake that reproduces it, when one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureProblem {
    /// HMAC keyed with the group key itself (pitfall P1).
    GroupKeyItself { secondary: bool },
    /// The right key, but `sr` signed in another form than sent.
    SrForm { signed: String, sent: String },
    /// A device key derived from a mistaken spelling of the ID (pitfall P3).
    IdSpelling(Mistake),
    /// No group derivation matches.
    NoDerivation {
        id: String,
        hub: bool,
        has_secondary: bool,
    },
    /// The given device key does not match.
    NotGivenKey,
}

impl fmt::Display for SignatureProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureProblem::GroupKeyItself { secondary } => write!(
                f,
                "signed with the enrollment group {} key itself; flash the derived key (`dpskit derive` computes it from the group key and the registration ID) — the group key must never be on a device",
                if *secondary { "secondary" } else { "primary" }
            ),
            SignatureProblem::SrForm { signed, sent } => write!(
                f,
                "the key is right but the signature covers sr={signed:?} while the token sends sr={sent:?}; sign exactly the encoded string you send (%2F and %2f sign differently)"
            ),
            SignatureProblem::IdSpelling(m) => write!(f, "the device key was {m}"),
            SignatureProblem::NoDerivation {
                id,
                hub,
                has_secondary,
            } => write!(
                f,
                "the signature matches no key derived from this group's {} for {} {id:?}: the device holds a wrong key (run `dpskit derive` for exactly this ID), a key of another enrollment group, or a corrupted copy",
                if *has_secondary { "primary or secondary key" } else { "key" },
                if *hub { "device ID" } else { "registration ID" },
            ),
            SignatureProblem::NotGivenKey => f.write_str(
                "the signature does not match the given device key: the token was signed with another key, or the key file holds another device's key",
            ),
        }
    }
}

/// Everything that can make a token unacceptable, in the order a service checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// The group key itself where a token belongs.
    #[error("{what} is the enrollment group key itself; the device must hold the derived key (`dpskit derive`) and send a SAS token signed with it")]
    GroupKeyNotToken { what: &'static str },
    /// A bare key where a token belongs.
    #[error("{what} is a bare key; send a SAS token (SharedAccessSignature sr=…&sig=…&se=…) signed with it")]
    BareKey { what: &'static str },
    /// Not a token at all.
    #[error("{what} is not a SAS token: {error}")]
    Malformed { what: &'static str, error: SasError },
    /// A DPS token with a `skn` other than `registration`.
    #[error("the token has skn={0}; a DPS device token carries skn=registration or no skn at all")]
    DpsPolicy(String),
    /// A hub token with a `skn`: a shared-access-policy token, not a device token.
    #[error("the token has skn={0}, which marks a shared-access-policy token; a device token for IoT Hub carries no skn (was the DPS token, with skn=registration, reused for the hub?)")]
    HubPolicy(String),
    /// Signed for another resource.
    #[error("the token is signed for resource {found:?} but {service} expects {expected:?}{hint}; sr must be the {service} resource of this device")]
    Resource {
        found: String,
        expected: String,
        service: &'static str,
        hint: &'static str,
    },
    /// Signed right, but expired.
    #[error("{0}")]
    Expired(Expired),
    /// The signature does not verify (and the token may be expired as well).
    #[error("{why}{}", .expired.map(|e| format!("; besides, the {e}")).unwrap_or_default())]
    Signature {
        why: SignatureProblem,
        expired: Option<Expired>,
    },
}

/// Parses `text` as a token, or explains what it is instead: the group key itself (one of
/// `group_keys`), a bare device key, or what is wrong with it. `what` names the text in the
/// caller's words ("the password", "TOKEN").
pub fn parse(
    what: &'static str,
    text: &str,
    group_keys: &[&GroupKey],
) -> Result<SasToken, TokenProblem> {
    let error = match SasToken::parse(text) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let key_text = clean_key_text(text);
    if group_keys.iter().any(|g| key_text == g.to_base64()) {
        return Err(TokenProblem::GroupKeyNotToken { what });
    }
    if DeviceKey::parse(key_text, "key").is_ok() {
        return Err(TokenProblem::BareKey { what });
    }
    Err(TokenProblem::Malformed { what, error })
}

/// The `skn` rule: DPS wants none or `registration`, the hub none.
pub fn check_policy(token: &SasToken, audience: &Audience) -> Result<(), TokenProblem> {
    match (audience, token.skn.as_deref()) {
        (_, None) => Ok(()),
        (Audience::Dps { .. }, Some(s)) if s.eq_ignore_ascii_case("registration") => Ok(()),
        (Audience::Dps { .. }, Some(s)) => Err(TokenProblem::DpsPolicy(s.to_string())),
        (Audience::Hub { .. }, Some(s)) => Err(TokenProblem::HubPolicy(s.to_string())),
    }
}

/// The resource rule: `sr`, decoded, names this device (case-insensitively, as the services
/// compare).
pub fn check_resource(token: &SasToken, audience: &Audience) -> Result<(), TokenProblem> {
    let expected = audience.resource();
    let found = token.resource().unwrap_or_default();
    if found.eq_ignore_ascii_case(&expected) {
        return Ok(());
    }
    let hint = match audience {
        Audience::Dps { .. } if found.contains("/devices/") => {
            " (this is an IoT Hub token sent to DPS)"
        }
        Audience::Hub { .. } if found.contains("/registrations/") => {
            " (this is the DPS token sent to the hub)"
        }
        _ => "",
    };
    Err(TokenProblem::Resource {
        found,
        expected,
        service: audience.service(),
        hint,
    })
}

/// `Some` when the token has expired at `now` (Unix seconds).
pub fn expired(token: &SasToken, now: u64) -> Option<Expired> {
    (token.expiry <= now).then_some(Expired {
        expiry: token.expiry,
        now,
    })
}

/// Notes on a token that works: one valid for more than a year.
pub fn warnings(token: &SasToken, now: u64) -> Vec<String> {
    if token.expiry > now.saturating_add(FAR_FUTURE_SECS) {
        vec![format!(
            "the token is valid for another {}; accepted, but the device clock is ahead or se is in milliseconds instead of seconds",
            human_duration(token.expiry - now)
        )]
    } else {
        Vec::new()
    }
}

/// Finds the key that made the signature, or explains which mistake did. `id` is the
/// registration or device ID the key is derived for; `hub` words the answer for IoT Hub.
pub fn check_signature(
    token: &SasToken,
    id: &str,
    hub: bool,
    signer: Signer<'_>,
) -> Result<KeySlot, SignatureProblem> {
    let candidates: Vec<(DeviceKey, KeySlot)> = match signer {
        Signer::Device(k) => vec![(k.clone(), KeySlot::Given)],
        Signer::Group { primary, secondary } => {
            std::iter::once((primary.derive(id), KeySlot::Primary))
                .chain(secondary.map(|s| (s.derive(id), KeySlot::Secondary)))
                .collect()
        }
    };
    if let Some((_, slot)) = candidates.iter().find(|(k, _)| token.verify(k)) {
        return Ok(*slot);
    }
    let sig = B64.decode(&token.sig_base64).unwrap_or_default();
    let to_sign = |sr: &str| format!("{sr}\n{}", token.expiry);
    let same = |mac: &[u8]| {
        use subtle::ConstantTimeEq;
        mac.len() == sig.len() && bool::from(mac.ct_eq(&sig))
    };
    // The group key used directly as the device key: HMAC keyed with the group key's bytes is
    // exactly what derive_bytes computes.
    for (i, g) in signer.group_keys().into_iter().enumerate() {
        if same(
            g.derive_bytes(to_sign(&token.sr_encoded).as_bytes())
                .as_bytes(),
        ) {
            return Err(SignatureProblem::GroupKeyItself { secondary: i == 1 });
        }
    }
    let decoded = token.resource().unwrap_or_default();
    let forms = [
        decoded.clone(),
        token.sr_encoded.replace("%2F", "%2f"),
        token.sr_encoded.replace("%2f", "%2F"),
        dpskit_core::topic::encode_component(&decoded.to_ascii_lowercase()),
        dpskit_core::topic::encode_component(&decoded),
    ];
    for (key, _) in &candidates {
        for form in forms.iter().filter(|f| **f != token.sr_encoded) {
            if same(&key.sign(to_sign(form).as_bytes())) {
                return Err(SignatureProblem::SrForm {
                    signed: form.clone(),
                    sent: token.sr_encoded.clone(),
                });
            }
        }
    }
    let groups = signer.group_keys();
    if groups.is_empty() {
        return Err(SignatureProblem::NotGivenKey);
    }
    let variants = id_spelling_mistakes(id);
    for g in &groups {
        for (bytes, mistake) in &variants {
            if token.verify(&g.derive_bytes(bytes)) {
                return Err(SignatureProblem::IdSpelling(mistake.clone()));
            }
        }
    }
    Err(SignatureProblem::NoDerivation {
        id: id.to_string(),
        hub,
        has_secondary: groups.len() > 1,
    })
}

/// Checks a token as DPS or IoT Hub would, at Unix time `now`: policy, resource, signature,
/// expiry — the first problem wins, except that an expired token with a bad signature is
/// told both.
pub fn check(
    token: &SasToken,
    audience: &Audience,
    signer: Signer<'_>,
    now: u64,
) -> Result<Accepted, TokenProblem> {
    check_policy(token, audience)?;
    check_resource(token, audience)?;
    let expired = expired(token, now);
    let hub = matches!(audience, Audience::Hub { .. });
    let key = check_signature(token, audience.id(), hub, signer)
        .map_err(|why| TokenProblem::Signature { why, expired })?;
    if let Some(e) = expired {
        return Err(TokenProblem::Expired(e));
    }
    Ok(Accepted {
        key,
        expiry: token.expiry,
        warnings: warnings(token, now),
    })
}

/// What `dpskit sas inspect` finds in a token: each rule on its own, so every problem is
/// shown at once.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub token: SasToken,
    /// `sr`, decoded.
    pub resource: String,
    /// Whom the token is for, when `sr` has a DPS or IoT Hub shape.
    pub audience: Option<Audience>,
    pub policy: Result<(), TokenProblem>,
    pub expired: Option<Expired>,
    /// `None` when no key was given (or no ID to derive one for).
    pub signature: Option<Result<KeySlot, SignatureProblem>>,
    pub warnings: Vec<String>,
}

impl Inspection {
    /// Every problem, one line each; empty when the token is good.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.audience.is_none() {
            out.push(format!(
                "sr {:?} is neither a DPS resource ({{scope}}/registrations/{{id}}) nor an IoT Hub one ({{host}}/devices/{{id}})",
                self.resource
            ));
        }
        if let Err(p) = &self.policy {
            out.push(p.to_string());
        }
        if let Some(e) = &self.expired {
            out.push(e.to_string());
        }
        if let Some(Err(why)) = &self.signature {
            out.push(why.to_string());
        }
        out
    }
}

/// Inspects `text` as a token at `now`, checking the signature when a key is given.
pub fn inspect(
    text: &str,
    signer: Option<Signer<'_>>,
    now: u64,
) -> Result<Inspection, TokenProblem> {
    let group_keys = signer.map(|s| s.group_keys()).unwrap_or_default();
    let token = parse("TOKEN", text.trim(), &group_keys)?;
    let resource = token.resource().unwrap_or_default();
    let audience = Audience::from_resource(&resource);
    let policy = match &audience {
        Some(a) => check_policy(&token, a),
        None => Ok(()),
    };
    let signature = match (signer, &audience) {
        (Some(s @ Signer::Device(_)), a) => Some(check_signature(
            &token,
            a.as_ref().map_or("", |a| a.id()),
            matches!(a, Some(Audience::Hub { .. })),
            s,
        )),
        (Some(s), Some(a)) => Some(check_signature(
            &token,
            a.id(),
            matches!(a, Audience::Hub { .. }),
            s,
        )),
        _ => None,
    };
    Ok(Inspection {
        expired: expired(&token, now),
        warnings: warnings(&token, now),
        token,
        resource,
        audience,
        policy,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: &str =
        "8isrFI1sGsIlvvFSSFRiMfCNzv21fjbE/+ah/lSh3lF8e2YG1Te7w1KpZhJFFXJrqYKi9yegxkqIChbqOS9Egw==";
    const S: &str =
        "rLuyBPpIJ+hOre2SFIP9Ajvdty3j0EwSP/WvTVH9eZAw5HpDuEmf13nziHy5RRXmuTy84FCLpOnhhBPASSbHYg==";
    const ID: &str = "sn-007-888-abc-mac-a1-b2-c3-d4-e5-f6";
    const SCOPE: &str = "0ne00000000";
    const NOW: u64 = 1_700_000_000;

    fn keys() -> (GroupKey, GroupKey) {
        (
            GroupKey::parse(G, "g").unwrap(),
            GroupKey::parse(S, "s").unwrap(),
        )
    }

    fn dps() -> Audience {
        Audience::Dps {
            id_scope: SCOPE.into(),
            registration_id: ID.into(),
        }
    }

    fn token(key: &DeviceKey, expiry: u64) -> SasToken {
        SasToken::generate(key, &dps_resource(SCOPE, ID), expiry, Some("registration"))
    }

    fn group_check(t: &SasToken, audience: &Audience) -> Result<Accepted, TokenProblem> {
        let (g, s) = keys();
        check(
            t,
            audience,
            Signer::Group {
                primary: &g,
                secondary: Some(&s),
            },
            NOW,
        )
    }

    #[test]
    fn accepts_primary_and_secondary_derivations_and_lower_case_escapes() {
        let (g, s) = keys();
        let ok = group_check(&token(&g.derive(ID), NOW + 60), &dps()).unwrap();
        assert_eq!(ok.key, KeySlot::Primary);
        let ok = group_check(&token(&s.derive(ID), NOW + 60), &dps()).unwrap();
        assert_eq!(ok.key, KeySlot::Secondary);
        // The reference's %2f vector: signed over the lower-case form, valid at its expiry.
        let wire = "SharedAccessSignature sr=0ne00000000%2fregistrations%2fsn-007-888-abc-mac-a1-b2-c3-d4-e5-f6&sig=zbIlOWEYoHGEP2MF6mr2reJR%2BtoDRTIOMfzOZMhYfeQ%3D&se=1700000000";
        let t = SasToken::parse(wire).unwrap();
        let signer = Signer::Group {
            primary: &g,
            secondary: None,
        };
        assert!(check(&t, &dps(), signer, NOW - 10).is_ok());
    }

    #[test]
    fn explains_each_mistake() {
        let (g, _) = keys();
        let expired = group_check(&token(&g.derive(ID), NOW - 3 * 3600), &dps())
            .unwrap_err()
            .to_string();
        assert!(
            expired.contains("expired 3 h ago") && expired.contains("SNTP"),
            "{expired}"
        );
        // Group key itself: sign with the raw 64-byte group key.
        let sr = dpskit_core::topic::encode_component(&dps_resource(SCOPE, ID));
        let sig = B64.encode(
            g.derive_bytes(format!("{sr}\n{}", NOW + 60).as_bytes())
                .as_bytes(),
        );
        let wire = format!(
            "SharedAccessSignature sr={sr}&sig={}&se={}",
            dpskit_core::topic::encode_component(&sig),
            NOW + 60
        );
        let r = group_check(&SasToken::parse(&wire).unwrap(), &dps())
            .unwrap_err()
            .to_string();
        assert!(
            r.contains(
                "signed with the enrollment group primary key itself; flash the derived key"
            ),
            "{r}"
        );
        let newline = g.derive(&format!("{ID}\n"));
        let r = group_check(&token(&newline, NOW + 60), &dps())
            .unwrap_err()
            .to_string();
        assert!(r.contains("trailing newline"), "{r}");
        // A bad signature on an expired token is told both.
        let forged = DeviceKey::from_bytes([7; 32]);
        let r = group_check(&token(&forged, NOW - 60), &dps())
            .unwrap_err()
            .to_string();
        assert!(
            r.contains("matches no key derived") && r.contains("besides, the token expired"),
            "{r}"
        );
        let hub = SasToken::generate(
            &g.derive(ID),
            &hub_resource("localhost", ID),
            NOW + 60,
            None,
        );
        let r = group_check(&hub, &dps()).unwrap_err().to_string();
        assert!(r.contains("IoT Hub token sent to DPS"), "{r}");
        let hub_audience = Audience::Hub {
            host: "localhost".into(),
            device_id: ID.into(),
        };
        let r = group_check(&token(&g.derive(ID), NOW + 60), &hub_audience)
            .unwrap_err()
            .to_string();
        assert!(r.contains("skn=registration"), "{r}");
        let far = group_check(&token(&g.derive(ID), NOW * 1000), &dps()).unwrap();
        assert!(far.warnings[0].contains("milliseconds"));
        // A sr encoded differently from what was signed, found with a given device key too.
        let key = g.derive(ID);
        let mut t = token(&key, NOW + 60);
        t.sr_encoded = t.sr_encoded.replace("%2F", "%2f");
        let r = check_signature(&t, ID, false, Signer::Device(&key)).unwrap_err();
        assert!(matches!(r, SignatureProblem::SrForm { .. }), "{r}");
        let other = DeviceKey::from_bytes([1; 32]);
        assert_eq!(
            check_signature(&token(&key, NOW), ID, false, Signer::Device(&other)),
            Err(SignatureProblem::NotGivenKey)
        );
    }

    #[test]
    fn not_a_token_says_what_it_is() {
        let (g, _) = keys();
        let r = parse("the password", G, &[&g]).unwrap_err().to_string();
        assert!(r.contains("group key itself"), "{r}");
        let r = parse("TOKEN", &g.derive(ID).to_base64(), &[])
            .unwrap_err()
            .to_string();
        assert!(r.contains("bare key"), "{r}");
        let r = parse("TOKEN", "sr=a&sig=b&se=1", &[])
            .unwrap_err()
            .to_string();
        assert!(r.contains("SharedAccessSignature"), "{r}");
    }

    #[test]
    fn inspection_lists_every_problem() {
        let (g, s) = keys();
        let t = token(&g.derive(&format!("{ID}\n")), NOW - 60).to_string();
        let signer = Signer::Group {
            primary: &g,
            secondary: Some(&s),
        };
        let i = inspect(&t, Some(signer), NOW).unwrap();
        assert_eq!(i.audience, Some(dps()));
        let p = i.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("expired") && p[1].contains("trailing newline"),
            "{p:?}"
        );
        let good = token(&s.derive(ID), NOW + 60).to_string();
        let i = inspect(&good, Some(signer), NOW).unwrap();
        assert_eq!(i.signature, Some(Ok(KeySlot::Secondary)));
        assert!(i.problems().is_empty());
        let policy = "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=x&se=1&skn=iothubowner";
        let i = inspect(policy, None, NOW).unwrap();
        assert!(
            i.problems()[0].contains("shared-access-policy"),
            "{:?}",
            i.problems()
        );
        // se far beyond 2^63 neither panics nor wraps.
        let huge = format!(
            "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=x&se={}",
            u64::MAX
        );
        let i = inspect(&huge, None, NOW).unwrap();
        assert!(i.expired.is_none() && i.warnings[0].contains("years"));
    }
}
