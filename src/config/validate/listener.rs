//! `[[listeners]]` entries, with their `[listeners.tls]` settings.

use std::sync::Arc;

use toml::Spanned;

use super::checker::Checker;
use crate::config::defaults;
use crate::config::raw::{RawConfig, RawListener, RawProtocol, RawTls};
use crate::config::types::{ClientLimits, Http2Limits, ListenerConfig, Protocol};
use crate::tls::{CertificateFiles, MinVersion, TlsError, TlsSettings};

/// hyper's smallest read buffer; a head limit below it cannot be enforced.
const MIN_HEADER_BYTES: i64 = 8192;
const MAX_HEADER_BYTES: i64 = 1024 * 1024;
/// Bound on `http2_max_concurrent_streams`: each open stream may hold a backend request.
const MAX_CONCURRENT_STREAMS: i64 = 10_000;
/// Bound on `http2_max_cancelled_streams`.
const MAX_CANCELLED_STREAMS: i64 = 1_000_000;

impl Checker<'_> {
    pub(super) fn listener(
        &mut self,
        key: &str,
        raw: &RawListener,
        config: &RawConfig,
    ) -> Option<ListenerConfig> {
        let listen = self.address(&raw.listen, &format!("{key}.listen"), true);
        let protocol = protocol(raw);
        if protocol == Protocol::Tcp {
            self.reject_keys(
                key,
                "tcp listeners",
                &[
                    (
                        "header_read_timeout",
                        raw.header_read_timeout.as_ref().map(Spanned::span),
                    ),
                    ("idle_timeout", raw.idle_timeout.as_ref().map(Spanned::span)),
                    (
                        "max_header_bytes",
                        raw.max_header_bytes.as_ref().map(Spanned::span),
                    ),
                    ("tls", raw.tls.as_ref().map(Spanned::span)),
                    (
                        "http2_max_concurrent_streams",
                        raw.http2_max_concurrent_streams.as_ref().map(Spanned::span),
                    ),
                    (
                        "http2_max_cancelled_streams",
                        raw.http2_max_cancelled_streams.as_ref().map(Spanned::span),
                    ),
                ],
            );
        } else {
            self.reject_keys(
                key,
                "http listeners",
                &[(
                    "proxy_protocol",
                    raw.proxy_protocol.as_ref().map(Spanned::span),
                )],
            );
        }
        let tls = match raw.tls.as_ref().filter(|_| protocol == Protocol::Http) {
            None => Some(None),
            Some(tls) => self.tls(&format!("{key}.tls"), tls).map(Some),
        };
        let routes = if raw.routes.is_empty() {
            Some(Vec::new())
        } else {
            self.routes(key, &raw.routes, config, protocol)
        };
        let pool = match &raw.pool {
            Some(pool) => self
                .pool_name(pool, &format!("{key}.pool"), config)
                .map(Some),
            None if raw.routes.is_empty() => {
                self.report(
                    &raw.name,
                    &format!("{key}.pool"),
                    "a listener needs a pool, or routes (then pool is the fallback)",
                );
                None
            }
            None => Some(None),
        };
        let header_read_timeout = self.duration(
            raw.header_read_timeout.as_ref(),
            &format!("{key}.header_read_timeout"),
            defaults::HEADER_READ_TIMEOUT,
        );
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            defaults::CLIENT_IDLE_TIMEOUT,
        );
        let max_header_bytes = match &raw.max_header_bytes {
            None => Some(defaults::MAX_HEADER_BYTES),
            Some(bytes) => self
                .int_in(
                    bytes,
                    &format!("{key}.max_header_bytes"),
                    MIN_HEADER_BYTES,
                    MAX_HEADER_BYTES,
                )
                .and_then(|n| usize::try_from(n).ok()),
        };
        let http2 = self.http2_limits(key, raw);
        let max_connections = self.optional_count(
            raw.max_connections.as_ref(),
            &format!("{key}.max_connections"),
        );
        let rate_limit = match &raw.rate_limit {
            None => Some(None),
            Some(limit) => self
                .rate_limit(&format!("{key}.rate_limit"), limit, protocol)
                .map(Some),
        };
        let name = raw.name.get_ref();
        if name.is_empty() {
            self.report(&raw.name, &format!("{key}.name"), "must not be empty");
        }
        Some(ListenerConfig {
            max_connections: max_connections?,
            name: Arc::from(name.as_str()),
            listen: listen?,
            protocol,
            accept_proxy_protocol: raw.proxy_protocol.as_ref().is_some_and(|p| *p.get_ref()),
            tls: tls?,
            pool: pool?,
            routes: routes?,
            rate_limit: rate_limit?,
            limits: ClientLimits {
                header_read_timeout: header_read_timeout?,
                idle_timeout: idle_timeout?,
                max_header_bytes: max_header_bytes?,
                http2: http2?,
            },
        })
    }

    /// `http2_max_concurrent_streams` and `http2_max_cancelled_streams`.
    fn http2_limits(&mut self, key: &str, raw: &RawListener) -> Option<Http2Limits> {
        let mut count =
            |value: Option<&Spanned<i64>>, name: &str, default: u32, max: i64| match value {
                None => Some(default),
                Some(n) => self
                    .int_in(n, &format!("{key}.{name}"), 1, max)
                    .and_then(|n| u32::try_from(n).ok()),
            };
        let max_concurrent_streams = count(
            raw.http2_max_concurrent_streams.as_ref(),
            "http2_max_concurrent_streams",
            defaults::HTTP2_MAX_CONCURRENT_STREAMS,
            MAX_CONCURRENT_STREAMS,
        );
        let max_cancelled_streams = count(
            raw.http2_max_cancelled_streams.as_ref(),
            "http2_max_cancelled_streams",
            defaults::HTTP2_MAX_CANCELLED_STREAMS,
            MAX_CANCELLED_STREAMS,
        );
        Some(Http2Limits {
            max_concurrent_streams: max_concurrent_streams?,
            max_cancelled_streams: max_cancelled_streams?,
        })
    }

    fn tls(&mut self, key: &str, spanned: &Spanned<RawTls>) -> Option<TlsSettings> {
        let raw = spanned.get_ref();
        let base = self.config_dir();
        let entries = raw.certificates.as_ref().map_or(&[][..], |c| c.get_ref());
        if entries.is_empty() && raw.acme.is_none() {
            match &raw.certificates {
                Some(at) => self.report(
                    at,
                    &format!("{key}.certificates"),
                    "at least one certificate is required (or [listeners.tls.acme])",
                ),
                None => self.report(
                    spanned,
                    &format!("{key}.certificates"),
                    "at least one certificate is required (or [listeners.tls.acme])",
                ),
            }
        }
        let acme = match &raw.acme {
            None => Some(None),
            Some(acme) => self.acme(&format!("{key}.acme"), acme).map(Some),
        };
        let mut certificates = Vec::new();
        let mut ok = true;
        for (index, entry) in entries.iter().enumerate() {
            let entry_key = format!("{key}.certificates[{index}]");
            let files = CertificateFiles {
                cert: base.join(entry.get_ref().cert.get_ref()),
                key: base.join(entry.get_ref().key.get_ref()),
            };
            if let Err(err) = crate::tls::load_certificate(&files) {
                let (at, field) = match &err {
                    TlsError::NoKey(_)
                    | TlsError::UnsupportedKey { .. }
                    | TlsError::KeyMismatch { .. } => (&entry.get_ref().key, "key"),
                    TlsError::Read { path, .. } if *path == files.key => {
                        (&entry.get_ref().key, "key")
                    }
                    _ => (&entry.get_ref().cert, "cert"),
                };
                self.report(at, &format!("{entry_key}.{field}"), err.to_string());
                ok = false;
            }
            certificates.push(files);
        }
        let min_version = match raw.min_version.as_ref() {
            None => Some(MinVersion::Tls12),
            Some(version) => match version.get_ref().as_str() {
                "1.2" => Some(MinVersion::Tls12),
                "1.3" => Some(MinVersion::Tls13),
                other => {
                    self.report(
                        version,
                        &format!("{key}.min_version"),
                        format!("{other:?} is not a TLS version (\"1.2\" or \"1.3\")"),
                    );
                    None
                }
            },
        };
        let mut alpn = Vec::new();
        match &raw.alpn {
            None => alpn.extend(["h2".to_owned(), "http/1.1".to_owned()]),
            Some(list) => {
                for (index, protocol) in list.iter().enumerate() {
                    match protocol.get_ref().as_str() {
                        "h2" | "http/1.1" => alpn.push(protocol.get_ref().clone()),
                        other => {
                            self.report(
                                protocol,
                                &format!("{key}.alpn[{index}]"),
                                format!("{other:?} is not supported (\"h2\" or \"http/1.1\")"),
                            );
                            ok = false;
                        }
                    }
                }
            }
        }
        let handshake_timeout = self.duration(
            raw.handshake_timeout.as_ref(),
            &format!("{key}.handshake_timeout"),
            defaults::HANDSHAKE_TIMEOUT,
        );
        let acme = acme?;
        (ok && (!certificates.is_empty() || acme.is_some())).then_some(())?;
        Some(TlsSettings {
            certificates,
            acme,
            min_version: min_version?,
            alpn,
            handshake_timeout: handshake_timeout?,
        })
    }
}

/// The protocol a listener speaks; HTTP unless it says otherwise.
pub(super) fn protocol(raw: &RawListener) -> Protocol {
    match raw.protocol.as_ref().map(|p| *p.get_ref()) {
        None | Some(RawProtocol::Http) => Protocol::Http,
        Some(RawProtocol::Tcp) => Protocol::Tcp,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn listener(keys: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(
            "test.toml",
            &format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{keys}\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n"
            ),
        )
    }

    #[test]
    fn http2_limits_default_and_are_bounded() {
        let config = listener("").expect("valid");
        let http2 = config.listeners[0].limits.http2;
        assert_eq!(
            (http2.max_concurrent_streams, http2.max_cancelled_streams),
            (100, 200)
        );
        let config = listener("http2_max_concurrent_streams = 10\nhttp2_max_cancelled_streams = 3")
            .expect("valid");
        let http2 = config.listeners[0].limits.http2;
        assert_eq!(
            (http2.max_concurrent_streams, http2.max_cancelled_streams),
            (10, 3)
        );
        let err = listener("http2_max_concurrent_streams = 0").expect_err("zero streams");
        assert!(
            err.to_string().contains(
                "test.toml:5:32: listeners[0].http2_max_concurrent_streams: 0 is out of range"
            ),
            "{err}"
        );
        let err = listener("http2_max_cancelled_streams = 2000000").expect_err("too many");
        assert!(
            err.to_string().contains(
                "test.toml:5:31: listeners[0].http2_max_cancelled_streams: 2000000 is out of range"
            ),
            "{err}"
        );
    }

    #[test]
    fn http2_limits_do_not_apply_to_tcp_listeners() {
        let err = listener("protocol = \"tcp\"\nhttp2_max_cancelled_streams = 3")
            .expect_err("a tcp listener");
        assert!(
            err.to_string().contains(
                "listeners[0].http2_max_cancelled_streams: does not apply to tcp listeners"
            ),
            "{err}"
        );
    }
}
