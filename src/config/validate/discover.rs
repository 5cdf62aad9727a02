//! `[dns]` and a pool's `discover`: the resolver's servers, and what a pool looks up.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::checker::Checker;
use crate::config::defaults;
use crate::config::raw::{RawDiscover, RawDns};
use crate::config::types::{DiscoverConfig, DiscoverTarget, DnsConfig};

/// Shortest `refresh`: below it a pool would query its name servers many times a second.
const MIN_REFRESH: Duration = Duration::from_millis(100);
const MAX_REFRESH: Duration = DiscoverConfig::MAX_REFRESH;
/// Longest DNS name (RFC 1035, presentation form without the final dot).
const MAX_NAME: usize = 253;

impl Checker<'_> {
    pub(super) fn dns(&mut self, raw: Option<&Spanned<RawDns>>) -> Option<DnsConfig> {
        let Some(table) = raw else {
            return Some(DnsConfig {
                servers: Vec::new(),
                timeout: defaults::DNS_TIMEOUT,
            });
        };
        let raw = table.get_ref();
        let mut servers = Vec::new();
        let mut ok = true;
        for (index, server) in raw.servers.iter().flatten().enumerate() {
            let text = server.get_ref();
            let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                text.parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, defaults::DNS_PORT))
            });
            match parsed.filter(|address| address.port() != 0) {
                Some(address) => servers.push(address),
                None => {
                    self.report(
                        server,
                        &format!("dns.servers[{index}]"),
                        format!(
                            "{text:?} is not a name server address (an IP address, with an optional port: \"10.0.0.2\", \"127.0.0.1:5353\", \"[::1]:53\")"
                        ),
                    );
                    ok = false;
                }
            }
        }
        if raw.servers.as_ref().is_some_and(Vec::is_empty) {
            self.report(
                table,
                "dns.servers",
                "an empty list asks no one; leave servers out to use /etc/resolv.conf",
            );
            ok = false;
        }
        let timeout = self.duration(raw.timeout.as_ref(), "dns.timeout", defaults::DNS_TIMEOUT)?;
        ok.then_some(DnsConfig { servers, timeout })
    }

    /// The `discover` of pool `pool_key`.
    pub(super) fn discover(
        &mut self,
        pool_key: &str,
        raw: &Spanned<RawDiscover>,
    ) -> Option<DiscoverConfig> {
        let key = format!("{pool_key}.discover");
        let discover = raw.get_ref();
        let refresh = match &discover.refresh {
            None => Some(defaults::DISCOVER_REFRESH),
            Some(refresh) => self
                .duration(Some(refresh), &format!("{key}.refresh"), MIN_REFRESH)
                .and_then(|duration| {
                    if (MIN_REFRESH..=MAX_REFRESH).contains(&duration) {
                        Some(duration)
                    } else {
                        self.report(
                            refresh,
                            &format!("{key}.refresh"),
                            format!(
                                "{:?} is out of range (must be from 100ms to 5m)",
                                refresh.get_ref()
                            ),
                        );
                        None
                    }
                }),
        };
        let target = match (&discover.name, &discover.srv) {
            (Some(name), None) => {
                let port = match &discover.port {
                    Some(port) => self
                        .int_in(port, &format!("{key}.port"), 1, i64::from(u16::MAX))
                        .and_then(|port| u16::try_from(port).ok()),
                    None => {
                        self.report(
                            raw,
                            &format!("{key}.port"),
                            "`name` needs a `port`: A/AAAA records carry only addresses",
                        );
                        None
                    }
                };
                let name = self.dns_name(name, &format!("{key}.name"));
                Some(DiscoverTarget::Name {
                    name: name?,
                    port: port?,
                })
            }
            (None, Some(srv)) => {
                if let Some(port) = &discover.port {
                    self.report(
                        port,
                        &format!("{key}.port"),
                        "does not apply to `srv`: SRV records give each backend's port",
                    );
                }
                let name = self.dns_name(srv, &format!("{key}.srv"));
                discover
                    .port
                    .is_none()
                    .then_some(DiscoverTarget::Srv(name?))
            }
            (Some(_), Some(srv)) => {
                self.report(
                    srv,
                    &format!("{key}.srv"),
                    "`name` and `srv` exclude each other: give exactly one",
                );
                None
            }
            (None, None) => {
                self.report(
                    raw,
                    &key,
                    "needs exactly one of `name` (A/AAAA, with `port`) or `srv`",
                );
                None
            }
        };
        Some(DiscoverConfig {
            target: target?,
            refresh: refresh?,
        })
    }

    /// A DNS name: labels of letters, digits, `-` and `_`, an optional final dot.
    fn dns_name(&mut self, raw: &Spanned<String>, key: &str) -> Option<Arc<str>> {
        let name = raw.get_ref();
        let bare = name.strip_suffix('.').unwrap_or(name);
        let valid = !bare.is_empty()
            && bare.len() <= MAX_NAME
            && bare.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Some(Arc::from(name.as_str()))
        } else {
            self.report(
                raw,
                key,
                format!(
                    "{name:?} is not a DNS name (dot-separated labels of letters, digits, '-' and '_')"
                ),
            );
            None
        }
    }
}
