//! The emulator's TLS identity: a private CA and a server certificate it signs.
//!
//! Devices verify the server against a root CA they carry, so the emulator needs a CA of its
//! own that `dpskit config build --root-ca emulator` can embed. The CA (EC P-256, what mbedTLS
//! on the ESP32 verifies cheaply) is made once per state directory and reused, so a board
//! flashed yesterday still trusts today's emulator. The server leaf carries SANs (`localhost`,
//! `127.0.0.1`, and any `--san`): clients such as the Python SDK check the host name against
//! SANs and ignore a CN. The leaf is re-issued from the same CA whenever it lacks a requested
//! SAN or is near expiry; only the CA matters to devices.
//!
//! Keys are written 0600; the CA certificate 0644 (it is public and goes on devices).

use anyhow::{anyhow, bail, Context, Result};
use dpskit_factory::files::{write_file, write_private_file};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::{Duration, OffsetDateTime};

/// File names inside the state directory.
pub const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const SERVER_CERT_FILE: &str = "server.pem";
const SERVER_KEY_FILE: &str = "server-key.pem";

/// Names every server certificate carries.
pub const DEFAULT_SANS: [&str; 2] = ["localhost", "127.0.0.1"];

const CA_COMMON_NAME: &str = "dpskit emulator CA";
const CA_LIFETIME_DAYS: i64 = 3650;
const LEAF_LIFETIME_DAYS: i64 = 365;
/// Re-issue the leaf when it has less than this left.
const LEAF_RENEW_DAYS: i64 = 30;

/// The CA certificate (PEM) of the emulator whose state lives in `state_dir`; what devices
/// must trust. The file exists once `dpskit emulate` has run with that state directory.
pub fn ca_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CA_CERT_FILE)
}

/// The files of one state directory's TLS identity.
#[derive(Debug, Clone)]
pub struct ServerIdentity {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// True when this call created the CA (first run).
    pub created_ca: bool,
    /// True when this call (re-)issued the server certificate.
    pub issued_leaf: bool,
}

/// Loads the CA and server certificate from `state_dir`, creating what is missing.
/// `extra_sans` are added to [`DEFAULT_SANS`].
pub fn load_or_create(state_dir: &Path, extra_sans: &[String]) -> Result<ServerIdentity> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("--state-dir: cannot create {}", state_dir.display()))?;
    let now = OffsetDateTime::now_utc();
    let ca_cert = state_dir.join(CA_CERT_FILE);
    let ca_key_path = state_dir.join(CA_KEY_FILE);
    let (ca_key, created_ca) = match (ca_cert.exists(), ca_key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&ca_key_path)
                .with_context(|| format!("cannot read {}", ca_key_path.display()))?;
            let key = KeyPair::from_pem(&pem).map_err(|e| {
                anyhow!(
                    "{}: not a usable key ({e}); delete {} and {} to make a new CA (boards must then be re-flashed with the new CA)",
                    ca_key_path.display(),
                    ca_key_path.display(),
                    ca_cert.display()
                )
            })?;
            (key, false)
        }
        (false, false) => {
            let key = KeyPair::generate().context("cannot generate the CA key")?;
            let cert = ca_params(now)
                .self_signed(&key)
                .context("cannot create the CA certificate")?;
            write_private_file(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_file(&ca_cert, cert.pem().as_bytes(), 0o644)?;
            (key, true)
        }
        _ => bail!(
            "{}: the CA certificate and its key ({CA_CERT_FILE}, {CA_KEY_FILE}) must both exist or both be absent; restore the missing one or delete both to make a new CA",
            state_dir.display()
        ),
    };

    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for s in extra_sans {
        if !sans.iter().any(|have| have.eq_ignore_ascii_case(s)) {
            sans.push(s.clone());
        }
    }
    let server_cert = state_dir.join(SERVER_CERT_FILE);
    let server_key = state_dir.join(SERVER_KEY_FILE);
    let reusable = !created_ca
        && server_key.exists()
        && leaf_still_fits(&server_cert, &sans, now).unwrap_or(false);
    if !reusable {
        let issuer = Issuer::new(ca_params(now), &ca_key);
        let key = KeyPair::generate().context("cannot generate the server key")?;
        let cert = leaf_params(&sans, now)?
            .signed_by(&key, &issuer)
            .context("cannot sign the server certificate")?;
        write_private_file(&server_key, key.serialize_pem().as_bytes())?;
        write_file(&server_cert, cert.pem().as_bytes(), 0o644)?;
    }
    Ok(ServerIdentity {
        ca_cert,
        server_cert,
        server_key,
        created_ca,
        issued_leaf: !reusable,
    })
}

/// The CA's parameters. Deterministic apart from dates, so a leaf signed on a later run
/// names the same issuer (subject and key identifier come from the same DN and key).
fn ca_params(now: OffsetDateTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "dpskit");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(CA_LIFETIME_DAYS);
    p
}

fn leaf_params(sans: &[String], now: OffsetDateTime) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(sans.to_vec())
        .map_err(|e| anyhow!("--san: {e}; give a host name or an IP address"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, sans[0].as_str());
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(LEAF_LIFETIME_DAYS);
    Ok(p)
}

/// True when the stored leaf names every SAN in `sans` and is not close to expiry.
fn leaf_still_fits(path: &Path, sans: &[String], now: OffsetDateTime) -> Result<bool> {
    use x509_parser::extensions::GeneralName;
    let pem = std::fs::read(path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).map_err(|e| anyhow!("{e}"))?;
    let cert = pem.parse_x509().map_err(|e| anyhow!("{e}"))?;
    if cert.validity().not_after.timestamp()
        < (now + Duration::days(LEAF_RENEW_DAYS)).unix_timestamp()
    {
        return Ok(false);
    }
    let mut have: Vec<String> = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => have.push(d.to_ascii_lowercase()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        have.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        have.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(sans.iter().all(|s| {
        let s = s.to_ascii_lowercase();
        have.contains(&s)
    }))
}

/// A rustls server configuration for `identity`: TLS 1.2 (the Python SDK and mbedTLS on the
/// ESP32 speak only that) and TLS 1.3, no client certificates.
pub fn server_config(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>> {
    let certs = read_certs(&identity.server_cert)?;
    let key = read_key(&identity.server_key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS: protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS: the server certificate does not match its key")?;
    Ok(Arc::new(config))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("{}: not a PEM key", path.display()))?
        .with_context(|| format!("{}: no private key in it", path.display()))
}

/// A rustls client configuration that trusts only the CA in `ca_pem` (TLS 1.2 and 1.3);
/// what the tests, the benchmark and the virtual devices use to reach the emulator.
pub fn client_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_pem)? {
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable CA certificate", ca_pem.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS: protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_reuses_and_reissues_for_new_sans() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), &[]).unwrap();
        assert!(first.created_ca && first.issued_leaf);
        let ca = std::fs::read(&first.ca_cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join(CA_KEY_FILE)), 0o600);
            assert_eq!(mode(&first.server_key), 0o600);
        }

        let second = load_or_create(dir.path(), &[]).unwrap();
        assert!(!second.created_ca && !second.issued_leaf);
        let third = load_or_create(dir.path(), &["emu.local".into()]).unwrap();
        assert!(!third.created_ca && third.issued_leaf);
        assert_eq!(
            std::fs::read(&third.ca_cert).unwrap(),
            ca,
            "the CA never changes"
        );
        assert!(leaf_still_fits(
            &third.server_cert,
            &["localhost".into(), "127.0.0.1".into(), "emu.local".into()],
            OffsetDateTime::now_utc()
        )
        .unwrap());
        server_config(&third).unwrap();
        client_config(&third.ca_cert).unwrap();
    }

    #[test]
    fn half_a_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let e = load_or_create(dir.path(), &[]).unwrap_err().to_string();
        assert!(e.contains("both exist or both be absent"), "{e}");
    }
}
