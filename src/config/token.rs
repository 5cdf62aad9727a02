//! The admin API's bearer token: read from `[admin] token_file`, never shown in `Debug` or
//! logs, compared in constant time.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Fewest characters a token may have: a guessable token is no lock.
pub(crate) const MIN_TOKEN_LEN: usize = 16;

/// A bearer token for the admin API, with the file it came from (re-read on reload and when
/// the file changes). `Debug` shows the file, never the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    file: PathBuf,
    secret: Arc<str>,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", file.display())]
    Read {
        /// The token file.
        file: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a usable token.
    #[error("{}: {why}", file.display())]
    Invalid {
        /// The token file.
        file: PathBuf,
        /// What is wrong with it (never the token itself).
        why: &'static str,
    },
}

impl AdminToken {
    /// Reads the token in `file`: its text without surrounding whitespace (a trailing newline
    /// is usual), at least [`MIN_TOKEN_LEN`] visible ASCII characters.
    pub fn read(file: &Path) -> Result<AdminToken, TokenError> {
        let text = std::fs::read_to_string(file).map_err(|source| TokenError::Read {
            file: file.to_owned(),
            source,
        })?;
        let invalid = |why| TokenError::Invalid {
            file: file.to_owned(),
            why,
        };
        let secret = text.trim();
        if !secret.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "the token must be one line of visible ASCII characters",
            ));
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(invalid("the token must be at least 16 characters long"));
        }
        Ok(AdminToken {
            file: file.to_owned(),
            secret: Arc::from(secret),
        })
    }

    /// The file the token was read from.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The token itself, for a client to send (`fulcrum --check --diff`).
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Whether `presented` is the token, in time that depends only on the lengths (a
    /// byte-by-byte comparison that stops at the first difference would let a client find the
    /// token one byte at a time by timing).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.secret.as_bytes();
        if presented.len() != expected.len() {
            return false;
        }
        let difference = presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::{AdminToken, TokenError};

    fn token_in(text: &str) -> Result<AdminToken, TokenError> {
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-token-{}-{}",
            std::process::id(),
            text.len()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join(format!(
            "token-{:x}",
            text.bytes().map(u64::from).sum::<u64>()
        ));
        std::fs::write(&file, text).expect("write token");
        let token = AdminToken::read(&file);
        let _ = std::fs::remove_file(&file);
        token
    }

    #[test]
    fn a_token_is_trimmed_and_matches_only_itself() {
        let token = token_in("0123456789abcdef-secret\n").expect("valid token");
        assert!(token.matches(b"0123456789abcdef-secret"));
        assert!(!token.matches(b"0123456789abcdef-secreT"));
        assert!(!token.matches(b"0123456789abcdef-secre"));
        assert!(!token.matches(b""));
        assert!(!format!("{token:?}").contains("secret\""), "{token:?}");
        assert!(!format!("{token:?}").contains("abcdef"), "{token:?}");
    }

    #[test]
    fn short_multiline_and_missing_tokens_are_rejected() {
        assert!(matches!(
            token_in("short\n"),
            Err(TokenError::Invalid { .. })
        ));
        assert!(matches!(
            token_in("0123456789abcdef\n0123456789abcdef\n"),
            Err(TokenError::Invalid { .. })
        ));
        assert!(matches!(
            AdminToken::read(std::path::Path::new("/nonexistent/token")),
            Err(TokenError::Read { .. })
        ));
    }
}
