//! The listener side of TLS: a rustls server configuration with certificates chosen per
//! connection by SNI (exact names first, then wildcards, else the first certificate), ALPN and
//! a minimum version.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

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
    /// Lowest accepted version.
    pub min_version: MinVersion,
    /// ALPN protocols offered, in preference order.
    pub alpn: Vec<String>,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
}

/// Picks a certificate by SNI: exact name, then `*.parent` wildcard, then the default.
#[derive(Debug)]
pub(crate) struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return Arc::clone(&self.default);
        };
        if let Some(key) = self.exact.get(&name) {
            return Arc::clone(key);
        }
        let parent = name.split_once('.').map(|(_, parent)| parent);
        parent
            .and_then(|parent| self.wildcard.get(parent))
            .map_or_else(|| Arc::clone(&self.default), Arc::clone)
    }
}

impl SniResolver {
    /// Whether a request for `host` may be served on a connection set up for `server_name`:
    /// the same certificate would have been presented for both (RFC 9110 §7.4: else the
    /// client is sent to make a connection of its own, with `421`).
    pub(crate) fn same_certificate(&self, server_name: &str, host: &str) -> bool {
        server_name.eq_ignore_ascii_case(host)
            || Arc::ptr_eq(&self.pick(Some(server_name)), &self.pick(Some(host)))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// Builds the rustls server configuration for `settings`, reading every file now, with the
/// certificate resolver it uses (to tell which requests a connection may carry).
pub(crate) fn server_config(
    settings: &TlsSettings,
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), TlsError> {
    let mut loaded = Vec::with_capacity(settings.certificates.len());
    for files in &settings.certificates {
        loaded.push(load::certificate(files)?);
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
    let Some(default) = loaded.first().map(|c| Arc::clone(&c.key)) else {
        return Err(TlsError::Config(rustls::Error::General(
            "no certificate configured".to_owned(),
        )));
    };
    let resolver = Arc::new(SniResolver {
        exact,
        wildcard,
        default,
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
    Ok((Arc::new(config), resolver))
}

/// Every file a listener's TLS settings read, for watching.
pub(crate) fn files(settings: &TlsSettings) -> impl Iterator<Item = &Path> {
    settings
        .certificates
        .iter()
        .flat_map(|files| [files.cert.as_path(), files.key.as_path()])
}
