//! TLS with rustls: termination on listeners, and TLS from fulcrum to a pool's backends.
//!
//! `load` reads PEM files (certificate chains and keys, CA roots); `server` builds a listener's
//! configuration (SNI, ALPN, minimum version); `client` builds the one towards backends.

mod client;
mod load;
mod server;

pub(crate) use client::{UpstreamTlsConfig, client_config};
pub(crate) use load::{CertificateFiles, TlsError, load_certificate, load_roots};
pub(crate) use server::{MinVersion, SniResolver, TlsSettings, files, server_config};
