//! Sticky sessions: a cookie that names the backend which served the client, so its next
//! requests go there first (any algorithm picks the first one).
//!
//! The cookie value is 16 hex digits: SipHash-2-4 of the backend's address as written in the
//! config, keyed by `xxh3_128("fulcrum sticky v1" 0 pool 0 secret)`. So it is
//! - the same on every instance with the same config and across reloads and restarts (nothing
//!   random, nothing process-dependent), and one reload that keeps a backend keeps its value;
//! - opaque: it does not show the address, and with a `sticky.secret` nobody who lacks the
//!   secret can tell which address a value stands for (SipHash is a keyed PRF); without one, the
//!   key is derived from the pool name alone, and someone who knows it could try candidate
//!   addresses;
//! - unforgeable only in the sense that matters here: a value naming no backend of the pool
//!   (garbage, an old backend) is simply no pin.

use std::hash::Hasher;

use http::{HeaderMap, HeaderValue};
use metrics::Counter;
use siphasher::sip::SipHasher24;
use xxhash_rust::xxh3::xxh3_128;

use super::key::cookie_values;
use crate::backend::Endpoint;
use crate::config::StickyConfig;
use crate::metrics::names;

/// A pool's sticky cookie: its name, each backend's value, and the `Set-Cookie` fields.
#[derive(Debug)]
pub struct Sticky {
    /// The cookie's name.
    cookie: Box<str>,
    /// `(value, endpoint index)`, sorted by value for lookups.
    ids: Box<[(u64, u32)]>,
    /// Per endpoint: the `Set-Cookie` value for plain and for TLS (`Secure`) connections.
    set_cookie: Box<[[HeaderValue; 2]]>,
    /// Pins made: `[new client, moved from a backend that could not serve]`.
    pins: [Counter; 2],
}

/// Why a response pins its client anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repin {
    /// The request named no backend of the pool.
    New,
    /// Its backend could not serve it (down, draining, at its cap, or failed this request).
    Moved,
}

impl Sticky {
    /// The cookie of pool `pool` over `endpoints` (in their order).
    pub fn new(pool: &str, config: &StickyConfig, endpoints: &[Endpoint]) -> Self {
        let mut seed = Vec::with_capacity(64);
        seed.extend_from_slice(b"fulcrum sticky v1\0");
        seed.extend_from_slice(pool.as_bytes());
        seed.push(0);
        if let Some(secret) = &config.secret {
            seed.extend_from_slice(secret.as_bytes());
        }
        let key = xxh3_128(&seed).to_le_bytes();
        let values: Vec<u64> = endpoints
            .iter()
            .map(|endpoint| {
                let mut hasher = SipHasher24::new_with_key(&key);
                hasher.write(endpoint.backend.name.as_bytes());
                hasher.finish()
            })
            .collect();
        let mut ids: Vec<(u64, u32)> = values
            .iter()
            .enumerate()
            .filter_map(|(index, &value)| Some((value, u32::try_from(index).ok()?)))
            .collect();
        ids.sort_unstable();
        let max_age = config
            .ttl
            .map(|ttl| format!("; Max-Age={}", ttl.as_secs()))
            .unwrap_or_default();
        let set_cookie = values
            .iter()
            .map(|value| {
                let field = format!(
                    "{}={value:016x}; Path=/{max_age}; HttpOnly; SameSite=Lax",
                    config.cookie
                );
                let secure = format!("{field}; Secure");
                [field, secure].map(|field| {
                    HeaderValue::try_from(field)
                        .expect("a validated cookie name, hex digits and fixed attributes")
                })
            })
            .collect();
        let counter = |reason: &'static str| metrics::counter!(names::STICKY_PINS, "pool" => pool.to_owned(), "reason" => reason);
        Sticky {
            cookie: config.cookie.clone(),
            ids: ids.into_boxed_slice(),
            set_cookie,
            pins: [counter("new"), counter("moved")],
        }
    }

    /// The cookie's name.
    pub fn cookie(&self) -> &str {
        &self.cookie
    }

    /// The endpoint the request's cookie names, if it names one of this pool's. A value that
    /// is not 16 hex digits, or names no backend, counts as no cookie.
    pub fn pinned(&self, headers: &HeaderMap) -> Option<usize> {
        cookie_values(headers, &self.cookie).find_map(|value| {
            if value.len() != 16 || !value.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            let value = u64::from_str_radix(std::str::from_utf8(value).ok()?, 16).ok()?;
            let at = self.ids.binary_search_by_key(&value, |&(id, _)| id).ok()?;
            Some(self.ids[at].1 as usize)
        })
    }

    /// The `Set-Cookie` value pinning a client to the endpoint at `index`, counted as a pin
    /// made for `why`.
    pub fn pin(&self, index: usize, secure: bool, why: Repin) -> Option<HeaderValue> {
        let value = self.set_cookie.get(index)?[usize::from(secure)].clone();
        self.pins[why as usize].increment(1);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backend::test_endpoints;

    fn config(secret: Option<&str>, ttl: Option<Duration>) -> StickyConfig {
        StickyConfig {
            cookie: "srv".into(),
            ttl,
            secret: secret.map(Into::into),
        }
    }

    fn value_of(field: &HeaderValue) -> String {
        let text = field.to_str().expect("ascii");
        let (pair, _) = text.split_once(';').expect("attributes");
        pair.trim_start_matches("srv=").to_owned()
    }

    #[test]
    fn each_backend_gets_a_stable_opaque_value_that_finds_it_again() {
        let endpoints = test_endpoints(&[1, 1, 1]);
        let sticky = Sticky::new("app", &config(None, None), &endpoints);
        let again = Sticky::new("app", &config(None, None), &endpoints);
        for index in 0..3 {
            let field = sticky.pin(index, false, Repin::New).expect("a field");
            assert_eq!(field, again.pin(index, false, Repin::New).expect("a field"));
            let value = value_of(&field);
            assert_eq!(value.len(), 16, "{value}");
            assert!(!field.to_str().expect("ascii").contains("192.0.2.1"));
            let mut headers = HeaderMap::new();
            let cookie = format!("other=1; srv={value}");
            headers.insert("cookie", HeaderValue::try_from(cookie).expect("valid"));
            assert_eq!(sticky.pinned(&headers), Some(index));
        }
    }

    #[test]
    fn the_value_depends_on_the_pool_and_the_secret() {
        let endpoints = test_endpoints(&[1]);
        let value = |pool: &str, secret: Option<&str>| {
            let sticky = Sticky::new(pool, &config(secret, None), &endpoints);
            value_of(&sticky.pin(0, false, Repin::New).expect("a field"))
        };
        let plain = value("app", None);
        assert_ne!(plain, value("web", None));
        assert_ne!(plain, value("app", Some("s3cret")));
        assert_eq!(value("app", Some("s3cret")), value("app", Some("s3cret")));
    }

    #[test]
    fn attributes_follow_the_config_and_the_connection() {
        let endpoints = test_endpoints(&[1]);
        let hour = Some(Duration::from_secs(3600));
        let sticky = Sticky::new("app", &config(None, hour), &endpoints);
        let plain = sticky.pin(0, false, Repin::New).expect("a field");
        let plain = plain.to_str().expect("ascii");
        assert!(
            plain.ends_with("; Path=/; Max-Age=3600; HttpOnly; SameSite=Lax"),
            "{plain}"
        );
        let secure = sticky.pin(0, true, Repin::Moved).expect("a field");
        assert!(secure.to_str().expect("ascii").ends_with("; Secure"));
        let session = Sticky::new("app", &config(None, None), &endpoints);
        let session = session.pin(0, false, Repin::New).expect("a field");
        assert!(!session.to_str().expect("ascii").contains("Max-Age"));
    }

    #[test]
    fn garbage_and_unknown_values_are_no_pin() {
        let endpoints = test_endpoints(&[1, 1]);
        let sticky = Sticky::new("app", &config(None, None), &endpoints);
        for cookie in [
            "srv=",
            "srv=zzzzzzzzzzzzzzzz",
            "srv=0123456789abcdef",
            "srv=0123456789abcdef0",
            "srv=+123456789abcdef",
            "srv",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("cookie", HeaderValue::from_static(cookie));
            assert_eq!(sticky.pinned(&headers), None, "{cookie}");
        }
    }
}
