//! `[listeners.rate_limit]` and a route's `rate_limit`: the rate, the burst, what a request is
//! counted against, and whose `X-Forwarded-For` is believed.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use toml::Spanned;

use super::checker::{Checker, MAX_DURATION};
use crate::config::raw::RawRateLimit;
use crate::config::types::{Protocol, RateLimitConfig, RateLimitKey};

/// Bound on `requests_per_second`: one request per 100 ns per key is more than any client.
const MAX_REQUESTS_PER_SECOND: f64 = 10_000_000.0;
/// Bound on `burst`.
const MAX_BURST: i64 = 1_000_000;

impl Checker<'_> {
    /// The rate limit at `key` of a `protocol` listener (`route`: a route's).
    pub(super) fn rate_limit(
        &mut self,
        key: &str,
        raw: &Spanned<RawRateLimit>,
        protocol: Protocol,
    ) -> Option<RateLimitConfig> {
        let raw = raw.get_ref();
        let interval = self.rate(key, &raw.requests_per_second);
        let burst = match &raw.burst {
            // One second's worth, at least one request.
            None => interval.map(|interval| {
                let per_second = (1.0 / interval.as_secs_f64()).ceil();
                // In 1..=MAX_REQUESTS_PER_SECOND by `rate`, so the cast is exact.
                NonZeroU32::new(per_second as u32).unwrap_or(NonZeroU32::MIN)
            }),
            Some(burst) => self
                .int_in(burst, &format!("{key}.burst"), 1, MAX_BURST)
                .and_then(|n| u32::try_from(n).ok())
                .and_then(NonZeroU32::new),
        };
        let limit_key = match &raw.key {
            None => Some(RateLimitKey::ClientIp),
            Some(text) => self.rate_limit_key(&format!("{key}.key"), text, protocol),
        };
        let mut trusted_proxies = Vec::new();
        let mut ok = true;
        for (index, proxy) in raw.trusted_proxies.iter().flatten().enumerate() {
            match parse_network(proxy.get_ref()) {
                Some(network) => trusted_proxies.push(network),
                None => {
                    self.report(
                        proxy,
                        &format!("{key}.trusted_proxies[{index}]"),
                        format!(
                            "{:?} is not an address or CIDR network (e.g. \"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\")",
                            proxy.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
        }
        if let (Protocol::Tcp, Some(first)) = (
            protocol,
            raw.trusted_proxies.as_ref().and_then(|list| list.first()),
        ) {
            self.warn(
                first,
                &format!("{key}.trusted_proxies"),
                "ignored on tcp listeners, which read no X-Forwarded-For (with proxy_protocol = true the PROXY header's address is the client)",
            );
        }
        if let (Some(interval), Some(burst)) = (interval, burst) {
            // GCRA's bucket depth in nanoseconds must fit a u64; a year is far inside that.
            if interval.saturating_mul(burst.get()) > MAX_DURATION {
                self.report(
                    &raw.requests_per_second,
                    &format!("{key}.requests_per_second"),
                    "burst / requests_per_second (the time an empty bucket takes to refill) must be at most 365 days",
                );
                ok = false;
            }
        }
        ok.then_some(())?;
        Some(RateLimitConfig {
            interval: interval?,
            burst: burst?,
            key: limit_key?,
            trusted_proxies,
        })
    }

    /// `requests_per_second` → the time per request.
    fn rate(&mut self, key: &str, raw: &Spanned<f64>) -> Option<Duration> {
        let rate = *raw.get_ref();
        let key = format!("{key}.requests_per_second");
        if !(rate > 0.0 && rate <= MAX_REQUESTS_PER_SECOND) {
            self.report(
                raw,
                &key,
                format!(
                    "{rate} is out of range (must be greater than 0, fractions allowed, e.g. 0.5; at most {MAX_REQUESTS_PER_SECOND})"
                ),
            );
            return None;
        }
        match Duration::try_from_secs_f64(1.0 / rate) {
            Ok(interval) if interval <= MAX_DURATION => Some(interval.max(Duration::from_nanos(1))),
            _ => {
                self.report(
                    raw,
                    &key,
                    format!("{rate} is too small (at least one request per 365 days)"),
                );
                None
            }
        }
    }

    fn rate_limit_key(
        &mut self,
        key: &str,
        raw: &Spanned<String>,
        protocol: Protocol,
    ) -> Option<RateLimitKey> {
        let text = raw.get_ref();
        if text == "client_ip" {
            return Some(RateLimitKey::ClientIp);
        }
        let Some(name) = text.strip_prefix("header:") else {
            self.report(
                raw,
                key,
                format!("{text:?} is not a rate limit key (\"client_ip\" or \"header:NAME\")"),
            );
            return None;
        };
        if protocol == Protocol::Tcp {
            self.report(
                raw,
                key,
                "tcp listeners limit connections by client_ip only (a connection has no headers)",
            );
            return None;
        }
        match http::HeaderName::try_from(name) {
            Ok(name) => Some(RateLimitKey::Header(name)),
            Err(_) => {
                self.report(
                    raw,
                    key,
                    format!("{name:?} is not a valid header name (in {text:?})"),
                );
                None
            }
        }
    }
}

/// `"10.0.0.0/8"`, `"2001:db8::/32"`, or a bare address (one host). The host bits of a CIDR
/// are cleared: `10.1.2.3/8` means `10.0.0.0/8`.
fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    if let Ok(network) = text.parse::<ipnet::IpNet>() {
        return Some(network.trunc());
    }
    text.parse::<IpAddr>().ok().map(ipnet::IpNet::from)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{Config, ConfigError, RateLimitKey};

    const FILE: &str = "config/test.toml";

    /// An http listener `web` (line 1) whose `[listeners.rate_limit]` table (line 7 on) holds
    /// `limit`, and a route with `route_limit` as its inline `rate_limit` when given.
    fn parse(limit: &str, route_limit: Option<&str>) -> Result<Config, ConfigError> {
        let route = route_limit.map_or(String::new(), |route| {
            format!(
                "\n[[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api\"\npool = \"app\"\nrate_limit = {route}\n"
            )
        });
        Config::parse(
            FILE,
            &format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[listeners.rate_limit]\n{limit}\n{route}\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n"
            ),
        )
    }

    fn error(limit: &str, route_limit: Option<&str>) -> String {
        match parse(limit, route_limit) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn listener_and_route_limits_parse_with_defaults() {
        let config = parse(
            "requests_per_second = 100",
            Some(
                r#"{ requests_per_second = 0.5, burst = 3, key = "header:X-Api-Key", trusted_proxies = ["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"] }"#,
            ),
        )
        .expect("valid");
        let listener = config.listeners[0].rate_limit.as_ref().expect("a limit");
        assert_eq!(listener.interval, Duration::from_millis(10));
        assert_eq!(listener.burst.get(), 100, "one second's worth by default");
        assert_eq!(listener.key, RateLimitKey::ClientIp);
        assert!(listener.trusted_proxies.is_empty());
        let route = config.listeners[0].routes[0]
            .rate_limit
            .as_ref()
            .expect("a route limit");
        assert_eq!(route.interval, Duration::from_secs(2));
        assert_eq!(route.requests_per_second(), 0.5);
        assert_eq!(route.burst.get(), 3);
        assert_eq!(route.key.to_string(), "header:x-api-key");
        let proxies: Vec<String> = route
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(proxies, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        let slow = parse("requests_per_second = 0.1", None).expect("valid");
        let slow = slow.listeners[0].rate_limit.as_ref().expect("a limit");
        assert_eq!(slow.burst.get(), 1, "at least one request");
    }

    #[test]
    fn requests_per_second_must_be_positive_and_bounded() {
        for (value, column) in [("0", 23), ("-1.5", 23), ("nan", 23), ("1e9", 23)] {
            let err = error(&format!("requests_per_second = {value}"), None);
            assert!(
                err.contains(&format!(
                    "{FILE}:7:{column}: listeners[0].rate_limit.requests_per_second: "
                )) && err.contains("must be greater than 0, fractions allowed"),
                "{value}: {err}"
            );
        }
        let err = error("requests_per_second = 0.00000001", None);
        assert!(err.contains("at least one request per 365 days"), "{err}");
        let err = error("requests_per_second = 0.0001\nburst = 100000", None);
        assert!(err.contains("must be at most 365 days"), "{err}");
    }

    #[test]
    fn burst_must_be_at_least_one() {
        let err = error("requests_per_second = 1\nburst = 0", None);
        assert!(
            err.contains(&format!(
                "{FILE}:8:9: listeners[0].rate_limit.burst: 0 is out of range"
            )),
            "{err}"
        );
    }

    #[test]
    fn key_is_client_ip_or_a_header() {
        let err = error("requests_per_second = 1\nkey = \"cookie:session\"", None);
        assert!(
            err.contains(&format!(
                "{FILE}:8:7: listeners[0].rate_limit.key: \"cookie:session\" is not a rate limit key"
            )),
            "{err}"
        );
        let err = error("requests_per_second = 1\nkey = \"header:bad name\"", None);
        assert!(err.contains("is not a valid header name"), "{err}");
        let err = error("requests_per_second = 1\nkey = \"header:\"", None);
        assert!(err.contains("is not a valid header name"), "{err}");
    }

    #[test]
    fn trusted_proxies_must_be_networks() {
        let err = error(
            "requests_per_second = 1\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
            None,
        );
        assert!(
            err.contains(&format!(
                "{FILE}:8:34: listeners[0].rate_limit.trusted_proxies[1]: \"10.0.0.0/33\" is not an address or CIDR network"
            )),
            "{err}"
        );
    }

    #[test]
    fn route_limits_are_checked_with_their_route_key() {
        let err = error(
            "requests_per_second = 1",
            Some("{ requests_per_second = 1, burst = -2 }"),
        );
        assert!(
            err.contains("listeners[0].routes[0].rate_limit.burst: -2 is out of range"),
            "{err}"
        );
    }

    #[test]
    fn tcp_listeners_limit_connections_by_client_ip_only() {
        let tcp = |limit: &str, route: &str| {
            Config::parse(
                FILE,
                &format!(
                    "[[listeners]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\n{route}\n[listeners.rate_limit]\n{limit}\n\n[pools.db]\nbackends = [\"127.0.0.1:5432\"]\n"
                ),
            )
        };
        let config = tcp("requests_per_second = 5", "").expect("valid");
        assert!(config.listeners[0].rate_limit.is_some());
        let err = tcp("requests_per_second = 5\nkey = \"header:x-api-key\"", "")
            .expect_err("no headers on tcp");
        assert!(
            err.to_string().contains(
                "listeners[0].rate_limit.key: tcp listeners limit connections by client_ip only"
            ),
            "{err}"
        );
        let config = tcp(
            "requests_per_second = 5\ntrusted_proxies = [\"10.0.0.0/8\"]",
            "",
        )
        .expect("valid, with a warning");
        let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(&format!(
                "{FILE}:9:20: listeners[0].rate_limit.trusted_proxies: ignored on tcp listeners"
            )),
            "{warnings:?}"
        );
        let err = tcp(
            "requests_per_second = 5",
            "[[listeners.routes]]\nsni = \"db.example.com\"\npool = \"db\"\nrate_limit = { requests_per_second = 1 }\n",
        )
        .expect_err("tcp routes have no limits of their own");
        assert!(
            err.to_string().contains(
                "listeners[0].routes[0].rate_limit: does not apply to routes of tcp listeners"
            ),
            "{err}"
        );
    }
}
