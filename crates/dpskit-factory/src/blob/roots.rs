//! The root CAs a board trusts for its TLS connections to DPS and IoT Hub.
//!
//! Azure's servers chain to DigiCert Global Root G2; Microsoft RSA Root Certificate Authority
//! 2017 is the announced backup, so both go on every board by default. The ECC roots are
//! selectable for the ECC server certificates. Baltimore CyberTrust Root is bundled only so it
//! can be recognised (by name or by fingerprint) and refused: it expired on 2025-05-12, and a
//! board that trusts only Baltimore cannot connect at all.
//!
//! The bundled PEM files are Debian's ca-certificates copies; their SHA-256 fingerprints are
//! checked against Microsoft's published values in the tests below.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dpskit_core::config::MAX_NVS_STRING_BYTES;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use x509_parser::pem::Pem;

/// A root certificate shipped inside dpskit.
#[derive(Debug)]
pub struct BundledRoot {
    /// The name given to `--root-ca`.
    pub name: &'static str,
    /// The certificate's common name.
    pub title: &'static str,
    /// SHA-256 of the DER certificate, upper-case hex (as Microsoft publishes it).
    pub sha256: &'static str,
    pub pem: &'static str,
    /// False for roots dpskit recognises only to refuse them.
    pub usable: bool,
}

/// Every root dpskit knows by name, Baltimore (refused) included.
pub const BUNDLED: &[BundledRoot] = &[
    BundledRoot {
        name: "digicert-g2",
        title: "DigiCert Global Root G2",
        sha256: "CB3CCBB76031E5E0138F8DD39A23F9DE47FFC35E43C1144CEA27D46A5AB1CB5F",
        pem: include_str!("../../../../assets/roots/digicert-global-root-g2.pem"),
        usable: true,
    },
    BundledRoot {
        name: "microsoft-rsa-2017",
        title: "Microsoft RSA Root Certificate Authority 2017",
        sha256: "C741F70F4B2A8D88BF2E71C14122EF53EF10EBA0CFA5E64CFA20F418853073E0",
        pem: include_str!("../../../../assets/roots/microsoft-rsa-root-2017.pem"),
        usable: true,
    },
    BundledRoot {
        name: "digicert-g3",
        title: "DigiCert Global Root G3",
        sha256: "31AD6648F8104138C738F39EA4320133393E3A18CC02296EF97C2AC9EF6731D0",
        pem: include_str!("../../../../assets/roots/digicert-global-root-g3.pem"),
        usable: true,
    },
    BundledRoot {
        name: "microsoft-ecc-2017",
        title: "Microsoft ECC Root Certificate Authority 2017",
        sha256: "358DF39D764AF9E1B766E9C972DF352EE15CFAC227AF6AD1D70E8E4A6EDCBA02",
        pem: include_str!("../../../../assets/roots/microsoft-ecc-root-2017.pem"),
        usable: true,
    },
    BundledRoot {
        name: "baltimore",
        title: "Baltimore CyberTrust Root",
        sha256: BALTIMORE_SHA256,
        pem: include_str!("../../../../assets/roots/baltimore-cybertrust-root-EXPIRED.pem"),
        usable: false,
    },
];

const BALTIMORE_SHA256: &str = "16AF57A9F676B0AB126095AA5EBADEF22AB31119D644AC95CD4B93DBF3F26AEB";

/// What a board gets when no `--root-ca` is given: Azure's current root and its backup.
pub const DEFAULT_ROOTS: &[&str] = &["digicert-g2", "microsoft-rsa-2017"];

/// The bundled root called `name`, usable or not.
pub fn bundled(name: &str) -> Option<&'static BundledRoot> {
    let name = name.to_ascii_lowercase();
    BUNDLED
        .iter()
        .find(|r| r.name == name || (r.name == "baltimore" && name.starts_with("baltimore")))
}

fn bundled_by_fingerprint(sha256: &str) -> Option<&'static BundledRoot> {
    BUNDLED
        .iter()
        .find(|r| r.sha256.eq_ignore_ascii_case(sha256))
}

fn usable_names() -> String {
    BUNDLED
        .iter()
        .filter(|r| r.usable)
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn baltimore_refusal(origin: &str) -> anyhow::Error {
    anyhow!(
        "{origin}: Baltimore CyberTrust Root expired on 2025-05-12 and Azure no longer uses it; use digicert-g2 (DigiCert Global Root G2) instead"
    )
}

/// Where one `--root-ca` comes from.
///
/// Roots that live outside dpskit arrive as [`RootSource::File`]; that is also the hook for
/// names resolved by other parts of dpskit (the local emulator's CA, a PEM in its state
/// directory): map the name to its path and pass a `File`.
#[derive(Debug, Clone)]
pub enum RootSource {
    Bundled(&'static BundledRoot),
    File(PathBuf),
}

impl RootSource {
    /// A bundled name (case-insensitive) or else a path to a PEM (or DER) file.
    pub fn parse(arg: &str) -> Result<Self> {
        if let Some(root) = bundled(arg) {
            if !root.usable {
                return Err(baltimore_refusal(&format!("--root-ca {arg}")));
            }
            return Ok(RootSource::Bundled(root));
        }
        let path = PathBuf::from(arg);
        if !path.exists() {
            bail!(
                "--root-ca {arg}: neither a bundled root ({}) nor an existing file; give one of those names or a PEM file path",
                usable_names()
            );
        }
        Ok(RootSource::File(path))
    }

    /// The default pair (DigiCert Global Root G2 + Microsoft RSA Root 2017).
    pub fn defaults() -> Vec<Self> {
        DEFAULT_ROOTS
            .iter()
            .map(|n| RootSource::Bundled(bundled(n).expect("default roots are bundled")))
            .collect()
    }

    fn origin(&self) -> String {
        match self {
            RootSource::Bundled(r) => format!("--root-ca {}", r.name),
            RootSource::File(p) => format!("--root-ca {}", p.display()),
        }
    }
}

/// What `config show` and `inspect` print for one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The full subject, RFC 4514 style.
    pub subject: String,
    /// The subject's CN, or the full subject when there is none.
    pub common_name: String,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// SHA-256 of the DER certificate, upper-case hex.
    pub sha256: String,
    /// The bundled name, when the certificate is one dpskit ships.
    pub bundled_name: Option<&'static str>,
    pub self_signed: bool,
    pub is_ca: bool,
}

impl CertInfo {
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.not_after < now
    }

    /// The JSON form `config show --json` (and `inspect`) emit.
    pub fn to_json(&self, now: OffsetDateTime) -> serde_json::Value {
        serde_json::json!({
            "subject": self.subject,
            "common_name": self.common_name,
            "issuer": self.issuer,
            "not_before": rfc3339(self.not_before),
            "not_after": rfc3339(self.not_after),
            "expired": self.is_expired(now),
            "sha256": self.sha256,
            "bundled_name": self.bundled_name,
        })
    }
}

pub use crate::timestamp::rfc3339;

/// One certificate: its canonical PEM text and what it says about itself.
#[derive(Debug, Clone)]
pub struct ParsedCert {
    pub pem: String,
    pub info: CertInfo,
}

/// Parses every certificate in `data` (PEM with one or more blocks, or a single DER
/// certificate, which is how Microsoft publishes its roots). `origin` names the source in errors.
pub fn parse_certificates(data: &[u8], origin: &str) -> Result<Vec<ParsedCert>> {
    if data.first() == Some(&0x30) {
        // DER: a SEQUENCE tag; PEM text never starts with '0'.
        return Ok(vec![parse_der(data, origin)?]);
    }
    let mut out = Vec::new();
    for (n, block) in Pem::iter_from_buffer(data).enumerate() {
        let block = block.map_err(|e| {
            anyhow!("{origin}: PEM block {} does not parse ({e}); check the file is a complete PEM certificate", n + 1)
        })?;
        if block.label != "CERTIFICATE" {
            if block.label.contains("PRIVATE KEY") {
                bail!(
                    "{origin}: holds a private key ({}); give only the CA certificate",
                    block.label
                );
            }
            bail!(
                "{origin}: PEM block {} is a {:?}, not a CERTIFICATE; give the CA certificate",
                n + 1,
                block.label
            );
        }
        out.push(parse_der(
            &block.contents,
            &format!("{origin} (certificate {})", n + 1),
        )?);
    }
    if out.is_empty() {
        bail!("{origin}: no PEM certificate found (no '-----BEGIN CERTIFICATE-----' line); give a PEM or DER certificate file");
    }
    Ok(out)
}

fn parse_der(der: &[u8], origin: &str) -> Result<ParsedCert> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
        anyhow!("{origin}: not a valid X.509 certificate ({e}); check the file is a complete certificate")
    })?;
    let der = &der[..der.len() - rest.len()];
    let sha256 = hex::encode_upper(Sha256::digest(der));
    let subject = cert.subject().to_string();
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .unwrap_or_else(|| subject.clone());
    let is_ca = cert.is_ca();
    let info = CertInfo {
        common_name,
        issuer: cert.issuer().to_string(),
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        is_ca,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        bundled_name: bundled_by_fingerprint(&sha256).map(|r| r.name),
        sha256,
        subject,
    };
    Ok(ParsedCert {
        pem: to_pem(der),
        info,
    })
}

/// Canonical PEM (64-column base64, LF line ends): the same certificate always gives the same
/// bytes on the board, whatever the input file looked like (CRLF, comments, DER).
fn to_pem(der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut s = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    s.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// Describes the certificates in a PEM bundle as stored on a board (`root_ca`).
pub fn describe_pem_bundle(pem: &str) -> Result<Vec<CertInfo>> {
    Ok(parse_certificates(pem.as_bytes(), "root_ca")?
        .into_iter()
        .map(|c| c.info)
        .collect())
}

/// The checked set of roots for one board.
#[derive(Debug, Clone)]
pub struct RootBundle {
    /// Concatenated canonical PEM: the `root_ca` string.
    pub pem: String,
    pub certs: Vec<CertInfo>,
    /// Things to tell the operator on stderr; none of them stops the build.
    pub warnings: Vec<String>,
}

/// Loads, checks and concatenates the chosen roots. Refuses unparsable files, Baltimore and
/// any expired certificate (as of `now`), and a bundle too long for one NVS string.
pub fn assemble(sources: &[RootSource], now: OffsetDateTime) -> Result<RootBundle> {
    if sources.is_empty() {
        bail!("--root-ca: no root CA chosen; give digicert-g2 (and microsoft-rsa-2017 as backup)");
    }
    let mut certs: Vec<ParsedCert> = Vec::new();
    let mut warnings = Vec::new();
    for source in sources {
        let origin = source.origin();
        let parsed = match source {
            RootSource::Bundled(r) => parse_certificates(r.pem.as_bytes(), &origin)?,
            RootSource::File(path) => {
                let data = read_file(path, &origin)?;
                parse_certificates(&data, &origin)?
            }
        };
        for cert in parsed {
            check_cert(&cert.info, &origin, now, &mut warnings)?;
            if certs.iter().any(|c| c.info.sha256 == cert.info.sha256) {
                warnings.push(format!(
                    "{origin}: {} is already in the bundle; stored once",
                    cert.info.common_name
                ));
                continue;
            }
            certs.push(cert);
        }
    }
    if certs.len() == 1 {
        warnings.push(format!(
            "--root-ca: only one root CA ({}) configured; Azure advises DigiCert Global Root G2 plus Microsoft RSA Root Certificate Authority 2017 as backup, so a root change does not strand the board",
            certs[0].info.common_name
        ));
    }
    let pem: String = certs.iter().map(|c| c.pem.as_str()).collect();
    if pem.len() + 1 > MAX_NVS_STRING_BYTES {
        bail!(
            "--root-ca: {} certificates take {} bytes of PEM, but an NVS string holds at most {}; give fewer roots (the default digicert-g2 + microsoft-rsa-2017 is {} bytes)",
            certs.len(),
            pem.len(),
            MAX_NVS_STRING_BYTES - 1,
            default_bundle_len()
        );
    }
    Ok(RootBundle {
        pem,
        certs: certs.into_iter().map(|c| c.info).collect(),
        warnings,
    })
}

fn default_bundle_len() -> usize {
    DEFAULT_ROOTS
        .iter()
        .filter_map(|n| bundled(n))
        .map(|r| r.pem.len())
        .sum()
}

fn read_file(path: &Path, origin: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{origin}: cannot read the file"))
}

fn check_cert(
    info: &CertInfo,
    origin: &str,
    now: OffsetDateTime,
    warnings: &mut Vec<String>,
) -> Result<()> {
    if info.sha256 == BALTIMORE_SHA256 {
        return Err(baltimore_refusal(origin));
    }
    if info.is_expired(now) {
        bail!(
            "{origin}: certificate {:?} expired on {}; remove it and use digicert-g2 (DigiCert Global Root G2)",
            info.common_name,
            info.not_after.date()
        );
    }
    if info.not_before > now {
        warnings.push(format!(
            "{origin}: {:?} is not valid before {}; boards reject it until then",
            info.common_name,
            info.not_before.date()
        ));
    }
    if !info.self_signed || !info.is_ca {
        warnings.push(format!(
            "{origin}: {:?} is not a self-signed root CA (issuer {}); trust roots, not intermediates or server certificates, which Azure rotates",
            info.common_name, info.issuer
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 0:00 UTC);

    #[test]
    fn bundled_files_match_the_published_fingerprints() {
        for root in BUNDLED {
            let certs = parse_certificates(root.pem.as_bytes(), root.name).unwrap();
            assert_eq!(certs.len(), 1, "{}", root.name);
            let info = &certs[0].info;
            assert_eq!(info.sha256, root.sha256, "{}", root.name);
            assert_eq!(info.common_name, root.title);
            assert_eq!(info.bundled_name, Some(root.name));
            assert!(info.self_signed && info.is_ca, "{}", root.name);
            // The shipped files are already canonical, so the board gets them byte for byte.
            assert_eq!(certs[0].pem, root.pem, "{}", root.name);
        }
        let g2 =
            &parse_certificates(bundled("digicert-g2").unwrap().pem.as_bytes(), "t").unwrap()[0];
        assert_eq!(g2.info.not_after, datetime!(2038-01-15 12:00 UTC));
        let balt =
            &parse_certificates(bundled("baltimore").unwrap().pem.as_bytes(), "t").unwrap()[0];
        assert_eq!(balt.info.not_after, datetime!(2025-05-12 23:59 UTC));
    }

    #[test]
    fn default_pair_fits_one_nvs_string() {
        let b = assemble(&RootSource::defaults(), NOW).unwrap();
        assert_eq!(b.certs.len(), 2);
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        assert_eq!(b.pem.len(), default_bundle_len());
        assert!(b.pem.len() < MAX_NVS_STRING_BYTES);
        assert_eq!(describe_pem_bundle(&b.pem).unwrap(), b.certs);
    }

    #[test]
    fn baltimore_is_refused_by_name_and_by_content() {
        let e = RootSource::parse("baltimore").unwrap_err().to_string();
        assert!(
            e.contains("2025-05-12") && e.contains("DigiCert Global Root G2"),
            "{e}"
        );
        assert!(RootSource::parse("Baltimore-CyberTrust-Root").is_err());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.pem");
        std::fs::write(&p, bundled("baltimore").unwrap().pem).unwrap();
        // Refused even at a time it was still valid: Azure no longer serves it.
        let e = assemble(
            &[RootSource::parse(p.to_str().unwrap()).unwrap()],
            datetime!(2024-01-01 0:00 UTC),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("2025-05-12") && e.contains("b.pem"), "{e}");
    }

    #[test]
    fn expired_and_not_yet_valid() {
        let g3 = [RootSource::parse("digicert-g3").unwrap()];
        let e = assemble(&g3, datetime!(2040-01-01 0:00 UTC))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expired on 2038-01-15") && e.contains("digicert-g3"),
            "{e}"
        );
        let b = assemble(&g3, datetime!(2010-01-01 0:00 UTC)).unwrap();
        assert!(
            b.warnings.iter().any(|w| w.contains("not valid before")),
            "{:?}",
            b.warnings
        );
    }

    #[test]
    fn single_root_and_duplicates_warn() {
        let one = assemble(&[RootSource::parse("digicert-g2").unwrap()], NOW).unwrap();
        assert!(
            one.warnings.iter().any(|w| w.contains("only one root CA")),
            "{:?}",
            one.warnings
        );
        let twice = [
            RootSource::parse("digicert-g2").unwrap(),
            RootSource::parse("DIGICERT-G2").unwrap(),
        ];
        let b = assemble(&twice, NOW).unwrap();
        assert_eq!(b.certs.len(), 1);
        assert!(b
            .warnings
            .iter()
            .any(|w| w.contains("already in the bundle")));
    }

    #[test]
    fn file_inputs_der_crlf_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let g2 = bundled("digicert-g2").unwrap().pem;
        let der = B64
            .decode(
                g2.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>(),
            )
            .unwrap();
        let der_path = dir.path().join("g2.crt");
        std::fs::write(&der_path, &der).unwrap();
        let crlf_path = dir.path().join("g2-crlf.pem");
        std::fs::write(
            &crlf_path,
            format!("# comment\r\n{}", g2.replace('\n', "\r\n")),
        )
        .unwrap();
        for p in [&der_path, &crlf_path] {
            let b = assemble(&[RootSource::File(p.clone())], NOW).unwrap();
            assert_eq!(b.pem, g2, "{}", p.display());
        }
        let bad = dir.path().join("bad.pem");
        std::fs::write(
            &bad,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = assemble(&[RootSource::File(bad)], NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.pem") && e.contains("X.509"), "{e}");
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello\n").unwrap();
        let e = assemble(&[RootSource::File(text)], NOW)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notes.txt") && e.contains("no PEM certificate"),
            "{e}"
        );
        let key = dir.path().join("key.pem");
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = assemble(&[RootSource::File(key)], NOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("private key"), "{e}");
        let e = RootSource::parse("no-such-root").unwrap_err().to_string();
        assert!(
            e.contains("digicert-g2") && e.contains("no-such-root"),
            "{e}"
        );
    }

    #[test]
    fn too_long_for_one_nvs_string() {
        let all: Vec<_> = ["digicert-g2", "microsoft-rsa-2017", "digicert-g3"]
            .iter()
            .map(|n| RootSource::parse(n).unwrap())
            .collect();
        let e = assemble(&all, NOW).unwrap_err().to_string();
        assert!(e.contains("--root-ca") && e.contains("3999"), "{e}");
    }
}
