//! TLS with rustls: termination on listeners, and TLS from fulcrum to a pool's backends.
//!
//! `load` reads PEM files (certificate chains and keys, CA roots); `server` builds a listener's
//! configuration (SNI, ALPN, minimum version); `issued` holds certificates obtained at run time
//! (ACME) and the book of every certificate served; `client` builds the one towards backends.

mod client;
mod issued;
mod load;
mod server;

pub(crate) use client::{UpstreamTlsConfig, client_config};
pub(crate) use issued::{
    ACME_TLS_ALPN, AcmeSettings, CertificateBook, CertificateInfo, Challenge, Described,
    IssuedCertificates, Source, unix,
};
pub(crate) use load::{
    CertificateFiles, TlsError, certified_key_from_pem, load_certificate, load_roots,
};
pub(crate) use server::{Certificates, MinVersion, SniResolver, TlsSettings, files, server_config};
