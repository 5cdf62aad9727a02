//! The ACME cache on disk: per CA directory, the account credentials and each certificate's
//! chain and key. Directories are created 0700 and files written 0600 through a rename, so a
//! crash leaves the old file or the new one. Nothing here ever deletes.
//!
//! ```text
//! <cache>/<directory host and path>/account.json
//! <cache>/<directory host and path>/<first domain>.crt   (chain, leaf first)
//! <cache>/<directory host and path>/<first domain>.key
//! ```

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::tls::{AcmeSettings, Described};

/// Why the cache could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheError {
    /// The file system refused.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A cached certificate and key do not load.
    #[error("{}: {source}", path.display())]
    Unusable {
        /// The certificate file.
        path: PathBuf,
        /// rustls's reason.
        #[source]
        source: rustls::Error,
    },
}

/// A certificate read from the cache.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) key: Arc<CertifiedKey>,
    pub(super) described: Described,
}

/// The cache directory of `settings`' CA: one per directory URL, so switching CAs (staging to
/// production) never serves the other CA's certificates.
pub(super) fn ca_dir(settings: &AcmeSettings) -> PathBuf {
    let url = settings
        .directory
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let name: String = url
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    settings.cache.join(name)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and its parents) with mode 0700 if missing.
pub(super) fn ensure_dir(dir: &Path) -> Result<(), CacheError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// Writes `contents` to `path` with mode 0600 through a temporary file and a rename.
pub(super) fn write_private(path: &Path, contents: &[u8]) -> Result<(), CacheError> {
    if let Some(dir) = path.parent() {
        ensure_dir(dir)?;
    }
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    file.write_all(contents).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

/// Reads `path`; `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CacheError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CacheError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The account credentials file of `settings`' CA.
pub(super) fn account_file(settings: &AcmeSettings) -> PathBuf {
    ca_dir(settings).join("account.json")
}

/// The chain and key files of `settings`' certificate.
fn certificate_files(settings: &AcmeSettings) -> (PathBuf, PathBuf) {
    let dir = ca_dir(settings);
    let stem = settings
        .domains
        .first()
        .map_or("certificate", String::as_str);
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// The cached certificate of `settings`, if there is one.
pub(super) fn load_certificate(settings: &AcmeSettings) -> Result<Option<Cached>, CacheError> {
    let (cert_path, key_path) = certificate_files(settings);
    let (Some(chain), Some(key)) = (read_optional(&cert_path)?, read_optional(&key_path)?) else {
        return Ok(None);
    };
    let key = crate::tls::certified_key_from_pem(&chain, &key).map_err(|source| {
        CacheError::Unusable {
            path: cert_path.clone(),
            source,
        }
    })?;
    let described = key
        .cert
        .first()
        .and_then(|leaf| Described::of(leaf))
        .ok_or_else(|| CacheError::Unusable {
            path: cert_path,
            source: rustls::Error::General("the certificate does not parse".to_owned()),
        })?;
    Ok(Some(Cached { key, described }))
}

/// Stores a newly issued chain and key for `settings` (the key first: a chain without its key
/// is useless, a key without a chain is ignored).
pub(super) fn store_certificate(
    settings: &AcmeSettings,
    chain_pem: &str,
    key_pem: &str,
) -> Result<(), CacheError> {
    let (cert_path, key_path) = certificate_files(settings);
    write_private(&key_path, key_pem.as_bytes())?;
    write_private(&cert_path, chain_pem.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::Challenge;

    fn settings(cache: &Path) -> AcmeSettings {
        AcmeSettings {
            domains: vec!["a.example.com".to_owned()],
            email: None,
            directory: "https://ca.example:14000/dir".to_owned(),
            directory_ca: None,
            cache: cache.to_owned(),
            challenge: Challenge::TlsAlpn01,
            renew_before: None,
            challenge_port: 80,
        }
    }

    #[test]
    fn the_cache_is_private_and_per_directory() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("fulcrum-acme-cache-{}", std::process::id()));
        let settings = settings(&root.join("cache"));
        assert_eq!(
            ca_dir(&settings),
            root.join("cache").join("ca.example_14000_dir")
        );
        assert!(load_certificate(&settings).expect("readable").is_none());
        write_private(&account_file(&settings), b"{}").expect("written");
        let mode = |path: &Path| {
            std::fs::metadata(path)
                .expect("exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(&root.join("cache")), 0o700);
        assert_eq!(mode(&ca_dir(&settings)), 0o700);
        assert_eq!(mode(&account_file(&settings)), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }
}
