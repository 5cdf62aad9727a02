//! A pool's balancing extras: `hash_key` and `hash_balance_factor` (for `consistent_hash`) and
//! `[pools.NAME.sticky]`.

use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::checker::Checker;
use crate::config::raw::{RawPool, RawSticky};
use crate::config::types::{Algorithm, HashKey, Protocol, StickyConfig};

/// The cookie name `[pools.NAME.sticky]` uses unless it sets `cookie`.
pub(super) const DEFAULT_STICKY_COOKIE: &str = "fulcrum_sticky";
/// The shortest sticky `ttl`: `Max-Age` counts whole seconds. (The longest is a year, as for
/// every duration.)
const MIN_STICKY_TTL: Duration = Duration::from_secs(1);

/// What `hash_key` may say, for messages.
const HASH_KEY_FORMS: &str = r#""header:NAME", "cookie:NAME", "client_ip", "path" or "uri""#;

/// What the balancing keys of one pool produce.
pub(super) struct Balancing {
    pub(super) hash_key: Option<HashKey>,
    pub(super) hash_balance_factor: u16,
    pub(super) sticky: Option<StickyConfig>,
}

impl Checker<'_> {
    /// Checks `hash_key`, `hash_balance_factor` and `sticky` of the pool at `key`.
    pub(super) fn balancing(
        &mut self,
        key: &str,
        raw: &RawPool,
        algorithm: Algorithm,
        protocol: Protocol,
    ) -> Option<Balancing> {
        let hashing = algorithm == Algorithm::ConsistentHash;
        if !hashing {
            let not_used = "has no effect unless algorithm = \"consistent_hash\"";
            if let Some(at) = &raw.hash_key {
                self.warn(at, &format!("{key}.hash_key"), not_used);
            }
            if let Some(at) = &raw.hash_balance_factor {
                self.warn(at, &format!("{key}.hash_balance_factor"), not_used);
            }
        }
        let hash_key = match (&raw.hash_key, protocol) {
            (Some(at), _) => self.hash_key(at, &format!("{key}.hash_key"), protocol),
            // TCP connections carry nothing else to hash.
            (None, Protocol::Tcp) => Some(Some(HashKey::ClientIp)),
            (None, Protocol::Http) if hashing => {
                let at = raw.algorithm.as_ref().map_or(0, |at| at.span().start);
                self.report_at(
                    at,
                    format!("{key}.hash_key"),
                    format!("consistent_hash needs hash_key: {HASH_KEY_FORMS}"),
                );
                None
            }
            (None, Protocol::Http) => Some(None),
        };
        let hash_balance_factor = match &raw.hash_balance_factor {
            None => Some(0),
            Some(at) => self.balance_factor(at, &format!("{key}.hash_balance_factor")),
        };
        let sticky = match &raw.sticky {
            None => Some(None),
            Some(at) if protocol == Protocol::Tcp => {
                self.report(
                    at,
                    &format!("{key}.sticky"),
                    "does not apply to tcp pools (a cookie needs HTTP)",
                );
                None
            }
            Some(at) => self
                .sticky(&format!("{key}.sticky"), at.get_ref())
                .map(Some),
        };
        Some(Balancing {
            hash_key: hash_key?.filter(|_| hashing),
            hash_balance_factor: hash_balance_factor?,
            sticky: sticky?,
        })
    }

    fn hash_key(
        &mut self,
        at: &Spanned<String>,
        key: &str,
        protocol: Protocol,
    ) -> Option<Option<HashKey>> {
        let text = at.get_ref().as_str();
        let parsed = match text.split_once(':') {
            None => match text {
                "client_ip" => Ok(HashKey::ClientIp),
                "path" => Ok(HashKey::Path),
                "uri" => Ok(HashKey::Uri),
                _ => Err(format!("{text:?} is not a hash key; use {HASH_KEY_FORMS}")),
            },
            Some(("header", name)) => http::HeaderName::from_bytes(name.as_bytes())
                .map(HashKey::Header)
                .map_err(|_| format!("{name:?} is not a valid header name")),
            Some(("cookie", name)) if is_cookie_name(name) => Ok(HashKey::Cookie(name.into())),
            Some(("cookie", name)) => Err(format!("{name:?} is not a valid cookie name")),
            Some(_) => Err(format!("{text:?} is not a hash key; use {HASH_KEY_FORMS}")),
        };
        match parsed {
            Ok(hash_key) if protocol == Protocol::Http || hash_key == HashKey::ClientIp => {
                Some(Some(hash_key))
            }
            Ok(_) => {
                self.report(
                    at,
                    key,
                    format!("tcp pools can only hash \"client_ip\", not {text:?}"),
                );
                None
            }
            Err(message) => {
                self.report(at, key, message);
                None
            }
        }
    }

    fn balance_factor(&mut self, at: &Spanned<i64>, key: &str) -> Option<u16> {
        let value = *at.get_ref();
        if value == 0 || (100..=1000).contains(&value) {
            u16::try_from(value).ok()
        } else {
            self.report(
                at,
                key,
                format!(
                    "{value} is out of range (0 turns bounded load off; otherwise from 100 to 1000 percent of the mean)"
                ),
            );
            None
        }
    }

    fn sticky(&mut self, key: &str, raw: &RawSticky) -> Option<StickyConfig> {
        let cookie = match &raw.cookie {
            None => Some(DEFAULT_STICKY_COOKIE.into()),
            Some(at) if is_cookie_name(at.get_ref()) => Some(at.get_ref().as_str().into()),
            Some(at) => {
                self.report(
                    at,
                    &format!("{key}.cookie"),
                    format!(
                        "{:?} is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                        at.get_ref()
                    ),
                );
                None
            }
        };
        let ttl = match &raw.ttl {
            None => Some(None),
            Some(at) => {
                let ttl_key = format!("{key}.ttl");
                match self.duration(Some(at), &ttl_key, Duration::ZERO) {
                    Some(ttl) if ttl < MIN_STICKY_TTL => {
                        self.report(at, &ttl_key, "must be at least 1s (Max-Age is in seconds)");
                        None
                    }
                    ttl => ttl.map(Some),
                }
            }
        };
        let secret = match &raw.secret {
            None => Some(None),
            Some(at) if at.get_ref().is_empty() => {
                self.report(at, &format!("{key}.secret"), "must not be empty");
                None
            }
            Some(at) => Some(Some(Arc::from(at.get_ref().as_str()))),
        };
        Some(StickyConfig {
            cookie: cookie?,
            ttl: ttl?,
            secret: secret?,
        })
    }
}

/// Whether `name` is a cookie name: an RFC 9110 token (RFC 6265 §4.1.1).
pub(crate) fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte))
}
