//! Who may use the admin API. `/healthz` and `/readyz` are open to everyone (probes); every
//! other endpoint checks, in order:
//!
//! 1. `Host` (DNS rebinding): a page on `evil.example` whose name a resolver later points at
//!    127.0.0.1 reaches the admin listener with `Host: evil.example`. Accepted: IP literals
//!    (a rebinding attack always carries a name), `localhost`, and `allowed_hosts`; else `421`.
//! 2. `Origin` (cross-site requests from a browser): when present it must name an accepted
//!    host too; else `403`.
//! 3. The bearer token, when `token_file` is set: `Authorization: Bearer <token>`; else `401`
//!    with `WWW-Authenticate: Bearer`.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderMap, StatusCode, header};

use crate::config::{AdminConfig, AdminToken};

/// The access rules of the running admin listener; replaced whole on reload.
#[derive(Debug)]
pub(crate) struct Access {
    token: Option<AdminToken>,
    /// Lowercase names accepted besides IP literals and `localhost`.
    allowed_hosts: Vec<String>,
    pub(super) header_read_timeout: Duration,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No `Host` field.
    MissingHost,
    /// A `Host` that is not accepted.
    Host,
    /// A browser's `Origin` that is not accepted.
    Origin,
    /// A missing or wrong bearer token.
    Token,
}

impl Refusal {
    /// Label for logs and `fulcrum_admin_refused_total{reason}`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingHost | Refusal::Host => "host",
            Refusal::Origin => "origin",
            Refusal::Token => "token",
        }
    }

    /// The status and body the client gets.
    pub(crate) fn status(self) -> (StatusCode, &'static str) {
        match self {
            Refusal::MissingHost => (StatusCode::BAD_REQUEST, "missing Host header\n"),
            Refusal::Host => (
                StatusCode::MISDIRECTED_REQUEST,
                "this Host is not accepted here (see admin.allowed_hosts)\n",
            ),
            Refusal::Origin => (
                StatusCode::FORBIDDEN,
                "cross-origin requests are not accepted (see admin.allowed_hosts)\n",
            ),
            Refusal::Token => (
                StatusCode::UNAUTHORIZED,
                "a bearer token is required (Authorization: Bearer <token>)\n",
            ),
        }
    }
}

impl Access {
    /// The rules `config` describes.
    pub(crate) fn new(config: &AdminConfig) -> Self {
        Self {
            token: config.token.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            header_read_timeout: config.header_read_timeout,
        }
    }

    /// Open rules, for an admin state not (yet) given a config.
    pub(crate) fn open() -> Self {
        Self {
            token: None,
            allowed_hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
        }
    }

    /// The same rules with `token` instead (the token file changed).
    pub(crate) fn with_token(&self, token: AdminToken) -> Self {
        Self {
            token: Some(token),
            allowed_hosts: self.allowed_hosts.clone(),
            header_read_timeout: self.header_read_timeout,
        }
    }

    /// Checks a request's head against the rules; the token only when `token_needed`.
    pub(crate) fn check(&self, headers: &HeaderMap, token_needed: bool) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .ok_or(Refusal::MissingHost)?;
        if !self.host_accepted(host) {
            return Err(Refusal::Host);
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let authority = origin
                .to_str()
                .ok()
                .and_then(|origin| origin.parse::<http::Uri>().ok())
                .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
            if !authority.is_some_and(|authority| self.host_accepted(&authority)) {
                return Err(Refusal::Origin);
            }
        }
        let Some(token) = self.token.as_ref().filter(|_| token_needed) else {
            return Ok(());
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes)
            .and_then(bearer);
        match presented {
            Some(presented) if token.matches(presented) => Ok(()),
            _ => Err(Refusal::Token),
        }
    }

    /// Whether `authority` (`host[:port]`) names an accepted host.
    fn host_accepted(&self, authority: &str) -> bool {
        let host = match authority.strip_prefix('[') {
            // An IPv6 literal: `[::1]:9900`.
            Some(rest) => {
                return rest
                    .split_once(']')
                    .is_some_and(|(ip, _)| ip.parse::<IpAddr>().is_ok());
            }
            None => authority
                .rsplit_once(':')
                .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
                .map_or(authority, |(host, _)| host),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        host.parse::<IpAddr>().is_ok() || host == "localhost" || self.allowed_hosts.contains(&host)
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is case-insensitive,
/// RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::{Access, Refusal, bearer};
    use http::{HeaderMap, HeaderValue, header};

    fn access(hosts: &[&str]) -> Access {
        Access {
            token: None,
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            header_read_timeout: std::time::Duration::from_secs(1),
        }
    }

    fn headers(fields: &[(header::HeaderName, &str)]) -> HeaderMap {
        fields
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).expect("value")))
            .collect()
    }

    #[test]
    fn ip_literals_localhost_and_allowed_names_pass_the_host_check() {
        let access = access(&["fulcrum.internal"]);
        for host in [
            "127.0.0.1:9900",
            "10.1.2.3",
            "[::1]:9900",
            "[fe80::1]",
            "localhost:9900",
            "LOCALHOST",
            "localhost.",
            "fulcrum.internal:9900",
            "Fulcrum.Internal",
        ] {
            assert!(access.host_accepted(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9900",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[::1",
            "[not-an-ip]:1",
            "",
        ] {
            assert!(!access.host_accepted(host), "{host}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_and_a_missing_host_too() {
        let access = access(&[]);
        assert_eq!(access.check(&headers(&[]), true), Err(Refusal::MissingHost));
        let same = headers(&[
            (header::HOST, "127.0.0.1:9900"),
            (header::ORIGIN, "http://127.0.0.1:9900"),
        ]);
        assert_eq!(access.check(&same, true), Ok(()));
        let foreign = headers(&[
            (header::HOST, "127.0.0.1:9900"),
            (header::ORIGIN, "https://evil.example"),
        ]);
        assert_eq!(access.check(&foreign, true), Err(Refusal::Origin));
        let opaque = headers(&[(header::HOST, "localhost"), (header::ORIGIN, "null")]);
        assert_eq!(access.check(&opaque, true), Err(Refusal::Origin));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
