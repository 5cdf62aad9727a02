//! Keys and certificates fulcrum makes itself: the fresh key and CSR of an order (ECDSA P-256),
//! the TLS-ALPN-01 validation certificate (RFC 8737), and the self-signed stand-in served until
//! the CA issues.

use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why fulcrum could not make a key or certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MaterialError {
    /// rcgen refused the parameters or could not sign.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the result.
    #[error("generated certificate unusable: {0}")]
    Load(#[from] rustls::Error),
}

/// A fresh ECDSA P-256 key (PEM) and a CSR (DER) for `domains`.
pub(super) fn key_and_csr(domains: &[String]) -> Result<(String, Vec<u8>), MaterialError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(domains.to_vec())?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.der().to_vec()))
}

/// A certificate for `name` with the `acmeIdentifier` extension over `digest` (the SHA-256 of
/// the key authorization), served only to `acme-tls/1` handshakes (RFC 8737 §3).
pub(super) fn validation_certificate(
    name: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, MaterialError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(digest));
    sign_self(params)
}

/// A self-signed certificate for `domains`, served until the CA issues one (clients see a
/// warning instead of a failed handshake, and the listener can answer TLS-ALPN-01 meanwhile).
pub(super) fn self_signed(domains: &[String]) -> Result<Arc<CertifiedKey>, MaterialError> {
    let mut params = CertificateParams::new(domains.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        "fulcrum self-signed (ACME certificate pending)",
    );
    params.distinguished_name = name;
    sign_self(params)
}

fn sign_self(params: CertificateParams) -> Result<Arc<CertifiedKey>, MaterialError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `keys_match`: webpki refuses to parse the validation certificate's critical
    // acmeIdentifier extension, and this key signed this certificate a line above.
    let signing_key = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing_key,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_validation_certificate_carries_the_acme_identifier() {
        let digest = [7u8; 32];
        let key = validation_certificate("a.example.com", &digest).expect("generated");
        let (_, cert) = x509_parser::parse_x509_certificate(key.cert[0].as_ref()).expect("parses");
        // id-pe-acmeIdentifier, RFC 8737 §6.1: critical, an OCTET STRING of the digest.
        let extension = cert
            .extensions()
            .iter()
            .find(|ext| ext.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier present");
        assert!(extension.critical);
        assert_eq!(&extension.value[2..], &digest);
        let names = crate::tls::Described::of(key.cert[0].as_ref())
            .expect("described")
            .names;
        assert_eq!(names, vec!["a.example.com".to_owned()]);
    }

    #[test]
    fn a_csr_names_every_domain() {
        let domains = vec!["a.example.com".to_owned(), "b.example.com".to_owned()];
        let (key, csr) = key_and_csr(&domains).expect("generated");
        assert!(key.contains("PRIVATE KEY"));
        use x509_parser::prelude::FromDer;
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr)
                .expect("parses");
        let text = format!(
            "{:?}",
            request
                .requested_extensions()
                .map(|e| e.collect::<Vec<_>>())
        );
        assert!(
            text.contains("a.example.com") && text.contains("b.example.com"),
            "{text}"
        );
    }
}
