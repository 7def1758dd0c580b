//! TLS for the virtual device: trust exactly the root CAs in the config image, nothing from
//! the PC, and check certificates at the device's clock (which a test may set wrong).
//!
//! Certificate failures are turned into plain words here, where the chain is at hand: which
//! host, who issued the server certificate, which roots the config holds, and for date errors
//! the certificate's dates next to the device's time (a wrong clock is the usual cause, P5).

use super::clock::HostClock;
use anyhow::{anyhow, bail, Context, Result};
use dpskit_factory::blob::roots::{self, CertInfo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::fmt;
use std::sync::Arc;
use time::OffsetDateTime;

/// A certificate refusal explained; carried inside the rustls error to the connect site.
#[derive(Debug)]
pub struct CertificateProblem(pub String);

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertificateProblem {}

/// The roots of one config: the rustls store and their names for messages.
#[derive(Debug, Clone)]
pub struct Trust {
    pub certs: Vec<CertInfo>,
    store: Arc<rustls::RootCertStore>,
}

impl Trust {
    /// Parses the config's `root_ca` PEM bundle; every certificate must load.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let certs = roots::describe_pem_bundle(pem)?;
        let mut store = rustls::RootCertStore::empty();
        for (n, der) in rustls_pemfile::certs(&mut pem.as_bytes()).enumerate() {
            let der =
                der.map_err(|e| anyhow!("root_ca: certificate {} does not parse ({e})", n + 1))?;
            store.add(der).map_err(|e| {
                anyhow!(
                    "root_ca: certificate {} ({}) cannot be used as a trust anchor ({e})",
                    n + 1,
                    certs.get(n).map_or("?", |c| c.common_name.as_str())
                )
            })?;
        }
        if store.is_empty() {
            bail!("root_ca: no certificate in the config; rebuild the image with --root-ca");
        }
        Ok(Trust {
            certs,
            store: Arc::new(store),
        })
    }

    /// `DigiCert Global Root G2, Microsoft RSA Root Certificate Authority 2017`.
    pub fn names(&self) -> String {
        self.certs
            .iter()
            .map(|c| c.common_name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A rustls client configuration trusting only `trust`, checking dates at `clock`'s time.
pub fn client_config(trust: &Trust, clock: Arc<HostClock>) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(trust.store.clone(), provider.clone())
        .build()
        .context("TLS: cannot build the certificate verifier from root_ca")?;
    let verifier = Arc::new(Verifier {
        inner,
        roots: trust.names(),
    });
    let config = rustls::ClientConfig::builder_with_details(provider, clock)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .context("TLS: protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// webpki's verification, with failures explained.
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    roots: String,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                let text = explain(&e, end_entity, intermediates, server_name, now, &self.roots);
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    CertificateProblem(text),
                ))))
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a presented certificate says about itself.
struct Presented {
    subject: String,
    issuer: String,
    names: Vec<String>,
    not_before: i64,
    not_after: i64,
}

fn presented(der: &[u8]) -> Option<Presented> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = |n: &x509_parser::x509::X509Name<'_>| {
        n.iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| n.to_string())
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    if let Ok(a) = <[u8; 4]>::try_from(*b) {
                        names.push(std::net::Ipv4Addr::from(a).to_string());
                    } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                        names.push(std::net::Ipv6Addr::from(a).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(Presented {
        subject: cn(cert.subject()),
        issuer: cn(cert.issuer()),
        names,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn date(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(roots::rfc3339)
        .unwrap_or_else(|_| unix.to_string())
}

fn host(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_string(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// One line: what was wrong with the chain and what to do about it.
fn explain(
    error: &rustls::Error,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    server_name: &ServerName<'_>,
    now: UnixTime,
    roots: &str,
) -> String {
    let name = host(server_name);
    let leaf = presented(end_entity);
    let now_secs = now.as_secs() as i64;
    let clock = date(now_secs);
    let cert_error = match error {
        rustls::Error::InvalidCertificate(c) => c,
        other => return format!("the certificate of {name} was refused: {other}"),
    };
    match cert_error {
        CertificateError::UnknownIssuer => {
            // The top of the presented chain names the root it claims to come from.
            let top = intermediates
                .last()
                .and_then(|d| presented(d))
                .map(|p| p.issuer)
                .or_else(|| leaf.as_ref().map(|l| l.issuer.clone()))
                .unwrap_or_else(|| "an unknown issuer".into());
            format!(
                "the certificate of {name} chains to \"{top}\", which is not among the root CAs in the config ({roots}); put that root on the device (Azure: DigiCert Global Root G2 with Microsoft RSA Root Certificate Authority 2017 as backup; the local emulator: `--root-ca emulator`)"
            )
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            let from = leaf
                .as_ref()
                .map_or_else(|| "later".into(), |l| date(l.not_before));
            format!(
                "certificate not yet valid: the certificate of {name} is valid from {from}, but the device clock says {clock}; the clock is behind (SNTP not done, or a time-zone offset applied to UTC)"
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            let until = leaf
                .as_ref()
                .map_or_else(|| "earlier".into(), |l| date(l.not_after));
            format!(
                "certificate expired: the certificate of {name} was valid until {until}, but the device clock says {clock}; the clock is ahead, or the server's certificate really expired"
            )
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            let names = leaf
                .as_ref()
                .map(|l| l.names.join(", "))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "no host names".into());
            format!(
                "the certificate presented for {name} is for {names}, not {name}; connect with a name the certificate carries (the DPS host in the config, the hub DPS assigned, or --tls-server-name)"
            )
        }
        other => {
            let who = leaf.map_or_else(|| name.clone(), |l| format!("{name} (\"{}\")", l.subject));
            format!(
                "the certificate of {who} was refused: {other:?}; the config's roots are {roots}"
            )
        }
    }
}

/// The explanation from a failed handshake, if it was a certificate refusal.
pub fn certificate_problem(error: &std::io::Error) -> Option<String> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    match inner {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(e))) => Some(
            e.downcast_ref::<CertificateProblem>()
                .map_or_else(|| e.to_string(), |p| p.0.clone()),
        ),
        rustls::Error::InvalidCertificate(c) => {
            Some(format!("the server certificate was refused: {c:?}"))
        }
        _ => None,
    }
}

/// Plain words for another TLS failure (alerts, protocol versions), if it was one.
pub fn tls_problem(error: &std::io::Error) -> Option<String> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match inner {
        rustls::Error::AlertReceived(a) => {
            format!("the server ended the TLS handshake with alert {a:?}")
        }
        rustls::Error::PeerIncompatible(p) => {
            format!("the server's TLS is incompatible ({p:?}); DPS and IoT Hub need TLS 1.2")
        }
        other => format!("TLS failed: {other}"),
    })
}
