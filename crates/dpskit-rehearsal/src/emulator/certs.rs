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

use dpskit_factory::files::{write_file, write_private_file, WriteError};
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

/// Why the TLS identity could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("--state-dir: cannot create {}: {source}", path.display())]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("{}: not a usable key ({detail}); delete {} and {} to make a new CA (boards must then be re-flashed with the new CA)", path.display(), path.display(), ca_cert.display())]
    CaKey {
        path: PathBuf,
        ca_cert: PathBuf,
        detail: String,
    },
    #[error("{}: the CA certificate and its key ({CA_CERT_FILE}, {CA_KEY_FILE}) must both exist or both be absent; restore the missing one or delete both to make a new CA", .0.display())]
    HalfCa(PathBuf),
    #[error("--san {name:?}: {detail}; give a host name or an IP address")]
    San { name: String, detail: String },
    #[error("{}: {detail}", path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("cannot make the {what}: {detail}")]
    Generate { what: &'static str, detail: String },
    #[error("TLS: {0}")]
    Tls(String),
}

type Result<T> = std::result::Result<T, CertError>;

fn generate(what: &'static str) -> impl Fn(rcgen::Error) -> CertError {
    move |e| CertError::Generate {
        what,
        detail: e.to_string(),
    }
}

/// The names the server certificate carries: [`DEFAULT_SANS`], the extra `--san` names, and
/// every hub host the groups assign devices to (or devices could not verify the hub), each
/// once, case-insensitively.
pub fn server_names<'a>(
    extra_sans: &'a [String],
    hub_hosts: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
    for s in extra_sans.iter().map(String::as_str).chain(hub_hosts) {
        if !sans.iter().any(|have| have.eq_ignore_ascii_case(s)) {
            sans.push(s.to_string());
        }
    }
    sans
}

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
    std::fs::create_dir_all(state_dir).map_err(|source| CertError::StateDir {
        path: state_dir.to_path_buf(),
        source,
    })?;
    let now = OffsetDateTime::now_utc();
    let ca_cert = state_dir.join(CA_CERT_FILE);
    let ca_key_path = state_dir.join(CA_KEY_FILE);
    let (ca_key, created_ca) = match (ca_cert.exists(), ca_key_path.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&ca_key_path).map_err(|source| CertError::Read {
                path: ca_key_path.clone(),
                source,
            })?;
            let key = KeyPair::from_pem(&pem).map_err(|e| CertError::CaKey {
                path: ca_key_path.clone(),
                ca_cert: ca_cert.clone(),
                detail: e.to_string(),
            })?;
            (key, false)
        }
        (false, false) => {
            let key = KeyPair::generate().map_err(generate("CA key"))?;
            let cert = ca_params(now)
                .self_signed(&key)
                .map_err(generate("CA certificate"))?;
            write_private_file(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_file(&ca_cert, cert.pem().as_bytes(), 0o644)?;
            (key, true)
        }
        _ => return Err(CertError::HalfCa(state_dir.to_path_buf())),
    };

    let sans = server_names(extra_sans, []);
    let server_cert = state_dir.join(SERVER_CERT_FILE);
    let server_key = state_dir.join(SERVER_KEY_FILE);
    let reusable = !created_ca
        && server_key.exists()
        && leaf_still_fits(&server_cert, &sans, now).unwrap_or(false);
    if !reusable {
        let issuer = Issuer::new(ca_params(now), &ca_key);
        let key = KeyPair::generate().map_err(generate("server key"))?;
        let cert = leaf_params(&sans, now)?
            .signed_by(&key, &issuer)
            .map_err(generate("server certificate"))?;
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
    let mut p = CertificateParams::new(sans.to_vec()).map_err(|e| CertError::San {
        name: sans.join(", "),
        detail: e.to_string(),
    })?;
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
fn leaf_still_fits(path: &Path, sans: &[String], now: OffsetDateTime) -> Option<bool> {
    use x509_parser::extensions::GeneralName;
    let pem = std::fs::read(path).ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    if cert.validity().not_after.timestamp()
        < (now + Duration::days(LEAF_RENEW_DAYS)).unix_timestamp()
    {
        return Some(false);
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
    Some(sans.iter().all(|s| {
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
        .map_err(|e| CertError::Tls(format!("protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            CertError::Tls(format!(
                "the server certificate does not match its key ({e})"
            ))
        })?;
    Ok(Arc::new(config))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|_| pem_error(path, "not a PEM certificate file"))?;
    if certs.is_empty() {
        return Err(pem_error(path, "no certificate in it"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|_| pem_error(path, "not a PEM key"))?
        .ok_or_else(|| pem_error(path, "no private key in it"))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(path: &Path, detail: &str) -> CertError {
    CertError::Pem {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

/// A rustls client configuration that trusts only the CA in `ca_pem` (TLS 1.2 and 1.3);
/// what the tests, the benchmark and the virtual devices use to reach the emulator.
pub fn client_config(ca_pem: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(ca_pem)? {
        roots
            .add(cert)
            .map_err(|_| pem_error(ca_pem, "not a usable CA certificate"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| CertError::Tls(format!("protocol versions: {e}")))?
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
        assert_eq!(
            server_names(
                &["EMU.local".into(), "localhost".into()],
                ["emu.local", "hub.lan"]
            ),
            ["localhost", "127.0.0.1", "EMU.local", "hub.lan"]
        );
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
