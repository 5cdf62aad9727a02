//! HTTP-01 (RFC 8555 §8.3): the tokens of pending challenges and their key authorizations,
//! answered at `/.well-known/acme-challenge/<token>` on plain HTTP listeners before routing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The path prefix a CA requests (RFC 8555 §8.3).
const PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 tokens. With none armed, a request costs one atomic load.
#[derive(Debug, Default)]
pub(crate) struct Http01Tokens {
    armed: AtomicUsize,
    tokens: Mutex<HashMap<String, String>>,
}

impl Http01Tokens {
    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // The map is valid whatever panicked while holding the lock.
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key authorization to answer a request for `path` with, if it asks for a pending
    /// token; `None` lets the request be routed as usual.
    pub(crate) fn answer(&self, path: &str) -> Option<String> {
        if self.armed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let token = path.strip_prefix(PREFIX)?;
        self.tokens().get(token).cloned()
    }

    /// Answers `token` with `key_authorization` until disarmed.
    pub(super) fn arm(&self, token: &str, key_authorization: &str) {
        let mut tokens = self.tokens();
        if tokens
            .insert(token.to_owned(), key_authorization.to_owned())
            .is_none()
        {
            self.armed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stops answering `token`.
    pub(super) fn disarm(&self, token: &str) {
        if self.tokens().remove(token).is_some() {
            self.armed.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Http01Tokens;

    #[test]
    fn only_armed_tokens_are_answered() {
        let tokens = Http01Tokens::default();
        assert_eq!(tokens.answer("/.well-known/acme-challenge/abc"), None);
        tokens.arm("abc", "abc.thumb");
        assert_eq!(
            tokens.answer("/.well-known/acme-challenge/abc").as_deref(),
            Some("abc.thumb")
        );
        assert_eq!(tokens.answer("/.well-known/acme-challenge/other"), None);
        assert_eq!(tokens.answer("/abc"), None);
        tokens.disarm("abc");
        assert_eq!(tokens.answer("/.well-known/acme-challenge/abc"), None);
    }
}
