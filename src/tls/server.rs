//! The listener side of TLS: a rustls server configuration with certificates chosen per
//! connection by SNI (exact file names first, then ACME names, then wildcards, else the first
//! certificate), ALPN and a minimum version. A handshake offering `acme-tls/1` for a name with
//! a pending TLS-ALPN-01 challenge gets the validation certificate (RFC 8737), nothing else.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::issued::{
    ACME_TLS_ALPN, AcmeSettings, CertificateBook, CertificateInfo, Challenge, Described,
    IssuedCertificates, Source,
};
use super::load::{self, CertificateFiles, TlsError};

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// A listener's TLS settings (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Certificates; the first is the default when SNI matches none.
    pub certificates: Vec<CertificateFiles>,
    /// A certificate obtained from an ACME CA; the default when there are no files.
    pub acme: Option<AcmeSettings>,
    /// Lowest accepted version.
    pub min_version: MinVersion,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
}

/// Picks a certificate by SNI: exact file name, ACME name, then `*.parent` wildcard, then the
/// default.
#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The first file certificate; `None`: the ACME certificate is the default.
    default: Option<Arc<CertifiedKey>>,
    /// The listener's ACME domains (lower case) and the store their certificates are in.
    acme: Option<(Vec<String>, Arc<IssuedCertificates>)>,
    /// Whether `acme-tls/1` handshakes are answered (TLS-ALPN-01 configured).
    tls_alpn: bool,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return self.fallback();
        };
        if let Some(key) = self.exact.get(&name) {
            return Some(Arc::clone(key));
        }
        if let Some((domains, issued)) = &self.acme {
            if domains.contains(&name) {
                if let Some(key) = issued.serving(&name) {
                    return Some(key);
                }
            }
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        parent
            .and_then(|parent| self.wildcard.get(parent))
            .map(Arc::clone)
            .or_else(|| self.fallback())
    }

    /// The certificate for a handshake no name matched.
    fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.default.clone().or_else(|| {
            let (domains, issued) = self.acme.as_ref()?;
            issued.serving(domains.first()?)
        })
    }
}

impl SniResolver {
    /// Whether a request for `host` may be served on a connection set up for `server_name`:
    /// the same certificate would have been presented for both (RFC 9110 §7.4: else the
    /// client is sent to make a connection of its own, with `421`).
    pub(crate) fn same_certificate(&self, server_name: &str, host: &str) -> bool {
        server_name.eq_ignore_ascii_case(host)
            || match (self.pick(Some(server_name)), self.pick(Some(host))) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a, &b),
                _ => false,
            }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.tls_alpn {
            let mut offered = hello.alpn().into_iter().flatten();
            if offered.any(|protocol| protocol == ACME_TLS_ALPN) {
                // RFC 8737 §3: only the validation certificate, and only for a pending name.
                let (_, issued) = self.acme.as_ref()?;
                return issued.validation(hello.server_name()?);
            }
        }
        self.pick(hello.server_name())
    }
}

/// Where a listener's resolver finds certificates beyond its files, and records what it serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Certificates<'a> {
    /// The server's store of ACME certificates.
    pub(crate) issued: &'a Arc<IssuedCertificates>,
    /// Where the file certificates loaded are recorded, under the listener's name.
    pub(crate) book: Option<(&'a CertificateBook, &'a Arc<str>)>,
}

/// Builds the rustls server configuration for `settings`, reading every file now, with the
/// certificate resolver it uses (to tell which requests a connection may carry).
pub(crate) fn server_config(
    settings: &TlsSettings,
    certificates: Certificates<'_>,
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), TlsError> {
    let mut loaded = Vec::with_capacity(settings.certificates.len());
    for files in &settings.certificates {
        loaded.push(load::certificate(files)?);
    }
    if let Some((book, listener)) = certificates.book {
        book.forget(listener, Source::File, None);
        for certificate in &loaded {
            let Some(described) = certificate
                .key
                .cert
                .first()
                .and_then(|leaf| Described::of(leaf))
            else {
                continue;
            };
            book.record(CertificateInfo {
                listener: Arc::clone(listener),
                names: described.names.clone(),
                issuer: described.issuer.clone(),
                not_after_unix: described.not_after_unix(),
                source: Source::File,
                next_renewal_unix: None,
                last_error: None,
            });
        }
    }
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    for certificate in &loaded {
        for name in &certificate.names {
            let target = match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()),
                None => exact.entry(name.clone()),
            };
            // The first certificate listed for a name wins.
            target.or_insert_with(|| Arc::clone(&certificate.key));
        }
    }
    let default = loaded.first().map(|c| Arc::clone(&c.key));
    if default.is_none() && settings.acme.is_none() {
        return Err(TlsError::Config(rustls::Error::General(
            "no certificate configured".to_owned(),
        )));
    }
    let tls_alpn = settings
        .acme
        .as_ref()
        .is_some_and(|acme| acme.challenge == Challenge::TlsAlpn01);
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
        acme: settings
            .acme
            .as_ref()
            .map(|acme| (acme.domains.clone(), Arc::clone(certificates.issued))),
        tls_alpn,
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match settings.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = settings
        .alpn
        .iter()
        .map(|protocol| protocol.as_bytes().to_vec())
        .collect();
    if tls_alpn {
        // Last: rustls picks the first of ours the client offers, and only a CA's validation
        // handshake offers this one (alone).
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok((Arc::new(config), resolver))
}

/// Every file a listener's TLS settings read, for watching.
pub(crate) fn files(settings: &TlsSettings) -> impl Iterator<Item = &Path> {
    settings
        .certificates
        .iter()
        .flat_map(|files| [files.cert.as_path(), files.key.as_path()])
}
