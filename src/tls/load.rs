//! Reading TLS material from PEM files: certificate chains with their keys, and CA roots.
//!
//! Loading checks what operators get wrong: unreadable files, a PEM without a certificate or
//! key, a key that does not belong to the certificate. An expired or not-yet-valid certificate
//! is served (the operator may have no other) but logged as a warning.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// One certificate chain and its key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key.
    pub key: PathBuf,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The PEM file holds no certificate.
    #[error("{} contains no PEM certificate", .0.display())]
    NoCertificate(PathBuf),
    /// The PEM file holds no private key.
    #[error("{} contains no PEM private key", .0.display())]
    NoKey(PathBuf),
    /// The key type is not supported.
    #[error("{}: unsupported private key: {source}", path.display())]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
    /// The key does not belong to the certificate.
    #[error("{} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the settings.
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
}

/// A loaded certificate with the names it serves.
#[derive(Debug)]
pub(super) struct LoadedCertificate {
    /// The chain and its signing key.
    pub(super) key: Arc<CertifiedKey>,
    /// DNS names it serves, lower case; `*.` prefixes for wildcards.
    pub(super) names: Vec<String>,
}

/// Loads and checks one certificate chain and key.
pub(crate) fn load_certificate(files: &CertificateFiles) -> Result<(), TlsError> {
    certificate(files).map(drop)
}

/// Reads one certificate chain and key, checks that they belong together, and names them.
pub(super) fn certificate(files: &CertificateFiles) -> Result<LoadedCertificate, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate(files.cert.clone()));
    };
    let names = certificate_names(leaf, &files.cert);
    let key =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey(files.key.clone()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::UnsupportedKey {
            path: files.key.clone(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            });
        }
        // Key types whose public key cannot be compared are accepted as they are.
        Err(_) => {}
    }
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
    })
}

/// The DNS names of a certificate (subject alternative names, else the common name), lower
/// case. Warns when the certificate is outside its validity period.
fn certificate_names(leaf: &CertificateDer<'_>, path: &Path) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    if !cert.validity().is_valid() {
        tracing::warn!(
            cert = %path.display(),
            not_after = %cert.validity().not_after,
            not_before = %cert.validity().not_before,
            "certificate is expired or not yet valid"
        );
    }
    names_of(&cert)
}

/// The DNS names of a parsed certificate: subject alternative names, else the common name,
/// lower case.
pub(super) fn names_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// Reads trusted CA certificates from a PEM file.
pub(crate) fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
        roots.add(cert)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(roots)
}

/// A certificate chain and key read from PEM text (the ACME cache, a CA's answer), checked to
/// belong together.
pub(crate) fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(rustls::Error::General("no PEM certificate".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|_| rustls::Error::General("no PEM private key".to_owned()))?;
    certified_key(chain, key)
}

/// `chain` with its signing `key`, checked to belong together.
pub(super) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider.key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match()?;
    Ok(Arc::new(certified))
}
