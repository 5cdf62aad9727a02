//! `[pools.NAME]` tables: backends, timeouts, the queue, and `[pools.NAME.tls]` to backends.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::checker::{Checker, MAX_CONNECTIONS};
use crate::config::defaults;
use crate::config::raw::{
    RawAlgorithm, RawBackend, RawCheckKind, RawPool, RawProxyVersion, RawUpstreamTls,
};
use crate::config::types::{
    Algorithm, BackendConfig, PoolConfig, Protocol, ProxyProtocol, QueueConfig,
};
use crate::tls::UpstreamTlsConfig;

pub(super) const MAX_RETRIES: i64 = 16;
const MAX_WEIGHT: i64 = 10_000;

impl Checker<'_> {
    pub(super) fn pool(
        &mut self,
        name: &Spanned<String>,
        raw: &Spanned<RawPool>,
        protocol: Protocol,
    ) -> Option<PoolConfig> {
        let key = format!("pools.{}", name.get_ref());
        let raw = raw.get_ref();
        if protocol == Protocol::Tcp {
            let check = raw.health_check.as_ref().map(Spanned::get_ref);
            let passive = raw.passive.as_ref().map(Spanned::get_ref);
            self.reject_keys(
                &key,
                "tcp pools",
                &[
                    (
                        "request_timeout",
                        raw.request_timeout.as_ref().map(Spanned::span),
                    ),
                    ("try_timeout", raw.try_timeout.as_ref().map(Spanned::span)),
                    (
                        "max_idle_per_backend",
                        raw.max_idle_per_backend.as_ref().map(Spanned::span),
                    ),
                ],
            );
            if let Some(check) = check {
                let http_kind = check
                    .kind
                    .as_ref()
                    .filter(|kind| *kind.get_ref() == RawCheckKind::Http)
                    .map(Spanned::span);
                self.reject_keys(
                    &format!("{key}.health_check"),
                    "tcp pools (their checks are TCP connects)",
                    &[
                        ("kind", http_kind),
                        ("path", check.path.as_ref().map(Spanned::span)),
                        ("method", check.method.as_ref().map(Spanned::span)),
                        ("host", check.host.as_ref().map(Spanned::span)),
                        (
                            "expect_status",
                            check.expect_status.as_ref().map(Spanned::span),
                        ),
                    ],
                );
            }
            self.reject_keys(
                &key,
                "tcp pools",
                &[
                    ("http2", raw.http2.as_ref().map(Spanned::span)),
                    ("tls", raw.tls.as_ref().map(Spanned::span)),
                ],
            );
            if let Some(passive) = passive {
                self.reject_keys(
                    &format!("{key}.passive"),
                    "tcp pools",
                    &[(
                        "failure_statuses",
                        passive.failure_statuses.as_ref().map(Spanned::span),
                    )],
                );
            }
        } else {
            self.reject_keys(
                &key,
                "http pools",
                &[(
                    "proxy_protocol",
                    raw.proxy_protocol.as_ref().map(Spanned::span),
                )],
            );
        }
        let algorithm = match raw.algorithm.as_ref().map(|a| *a.get_ref()) {
            None | Some(RawAlgorithm::RoundRobin) => Algorithm::RoundRobin,
            Some(RawAlgorithm::LeastConnections) => Algorithm::LeastConnections,
            Some(RawAlgorithm::PeakEwma) => Algorithm::PeakEwma,
            Some(RawAlgorithm::ConsistentHash) => Algorithm::ConsistentHash,
        };
        let ewma = self.ewma(&key, raw);
        let retry_budget = self.retry_budget(&key, raw.retry_budget.as_ref());
        let balancing = self.balancing(&key, raw, algorithm, protocol);
        let discover = raw
            .discover
            .as_ref()
            .map(|discover| self.discover(&key, discover));
        let backends = match (&raw.backends, &discover) {
            (Some(backends), _) => self.backends(&key, backends, discover.is_some()),
            (None, Some(_)) => Some(Vec::new()),
            (None, None) => {
                self.report(
                    name,
                    &key,
                    "a pool needs `backends`, `discover` (backends found in DNS), or both",
                );
                None
            }
        };
        let connect_timeout = self.duration(
            raw.connect_timeout.as_ref(),
            &format!("{key}.connect_timeout"),
            defaults::CONNECT_TIMEOUT,
        );
        let request_timeout = self.duration(
            raw.request_timeout.as_ref(),
            &format!("{key}.request_timeout"),
            defaults::REQUEST_TIMEOUT,
        );
        let try_timeout = match &raw.try_timeout {
            None => Some(None),
            Some(raw) => self
                .duration(Some(raw), &format!("{key}.try_timeout"), Duration::ZERO)
                .map(Some),
        };
        let retries = match &raw.retries {
            None => Some(defaults::RETRIES),
            Some(n) => self
                .int_in(n, &format!("{key}.retries"), 0, MAX_RETRIES)
                .and_then(|n| u32::try_from(n).ok()),
        };
        let max_idle_per_backend = match &raw.max_idle_per_backend {
            None => Some(defaults::MAX_IDLE_PER_BACKEND),
            Some(n) => self
                .int_in(n, &format!("{key}.max_idle_per_backend"), 0, 65_536)
                .and_then(|n| usize::try_from(n).ok()),
        };
        let queue = self.queue(&key, raw);
        let idle_timeout = self.duration(
            raw.idle_timeout.as_ref(),
            &format!("{key}.idle_timeout"),
            match protocol {
                Protocol::Http => defaults::UPSTREAM_IDLE_TIMEOUT,
                Protocol::Tcp => defaults::TCP_IDLE_TIMEOUT,
            },
        );
        let slow_start = match &raw.slow_start {
            None => Some(None),
            Some(raw) => self
                .duration(Some(raw), &format!("{key}.slow_start"), Duration::ZERO)
                .map(Some),
        };
        let health_check = match &raw.health_check {
            None => Some(None),
            Some(check) => self
                .health_check(&format!("{key}.health_check"), check.get_ref(), protocol)
                .map(Some),
        };
        let passive = self.passive(
            &format!("{key}.passive"),
            raw.passive.as_ref().map(Spanned::get_ref),
        );
        let upstream_tls = match raw.tls.as_ref().filter(|_| protocol == Protocol::Http) {
            None => Some(None),
            Some(tls) => self
                .upstream_tls(&format!("{key}.tls"), tls.get_ref())
                .map(Some),
        };
        Some(PoolConfig {
            name: Arc::from(name.get_ref().as_str()),
            protocol,
            http2: raw.http2.as_ref().is_some_and(|h| *h.get_ref()),
            upstream_tls: upstream_tls?,
            proxy_protocol: raw.proxy_protocol.as_ref().map(|p| match p.get_ref() {
                RawProxyVersion::V1 => ProxyProtocol::V1,
                RawProxyVersion::V2 => ProxyProtocol::V2,
            }),
            algorithm,
            backends: backends?,
            discover: match discover {
                None => None,
                Some(discover) => Some(discover?),
            },
            connect_timeout: connect_timeout?,
            request_timeout: request_timeout?,
            try_timeout: try_timeout?,
            retries: retries?,
            max_idle_per_backend: max_idle_per_backend?,
            queue: queue?,
            idle_timeout: idle_timeout?,
            slow_start: slow_start?,
            fail_open: raw.fail_open.unwrap_or(false),
            health_check: health_check?,
            passive: passive?,
            ewma: ewma?,
            retry_budget: retry_budget?,
            hash_key: balancing.as_ref()?.hash_key.clone(),
            hash_balance_factor: balancing.as_ref()?.hash_balance_factor,
            sticky: balancing?.sticky,
        })
    }

    /// A pool's `max_connections` and the queue settings, which need it.
    fn queue(&mut self, key: &str, raw: &RawPool) -> Option<QueueConfig> {
        let max_connections = self.optional_count(
            raw.max_connections.as_ref(),
            &format!("{key}.max_connections"),
        );
        let backend_caps = raw
            .backends
            .iter()
            .flat_map(|backends| backends.get_ref())
            .any(|backend| backend.get_ref().max_connections.is_some());
        if raw.max_connections.is_none() && !backend_caps {
            self.reject_keys(
                key,
                "pools without max_connections (nothing is queued)",
                &[
                    ("max_queue", raw.max_queue.as_ref().map(Spanned::span)),
                    (
                        "queue_timeout",
                        raw.queue_timeout.as_ref().map(Spanned::span),
                    ),
                ],
            );
        }
        let max_queue = match &raw.max_queue {
            None => Some(defaults::MAX_QUEUE),
            Some(n) => self
                .int_in(n, &format!("{key}.max_queue"), 0, MAX_CONNECTIONS)
                .and_then(|n| usize::try_from(n).ok()),
        };
        let timeout = self.duration(
            raw.queue_timeout.as_ref(),
            &format!("{key}.queue_timeout"),
            defaults::QUEUE_TIMEOUT,
        );
        Some(QueueConfig {
            max_connections: max_connections?,
            max_queue: max_queue?,
            timeout: timeout?,
        })
    }

    fn backends(
        &mut self,
        pool_key: &str,
        raw: &Spanned<Vec<Spanned<RawBackend>>>,
        discovered: bool,
    ) -> Option<Vec<BackendConfig>> {
        let key = format!("{pool_key}.backends");
        if raw.get_ref().is_empty() && !discovered {
            self.report(
                raw,
                &key,
                "a pool needs at least one backend (or `discover`)",
            );
            return None;
        }
        let mut seen = HashSet::new();
        let mut backends = Vec::with_capacity(raw.get_ref().len());
        let mut ok = true;
        for (index, entry) in raw.get_ref().iter().enumerate() {
            let key = format!("{key}[{index}]");
            let backend = entry.get_ref();
            // The string form has no span of its own; use the entry's.
            let address_at = if backend.address.span().is_empty() {
                Spanned::new(entry.span(), backend.address.get_ref().clone())
            } else {
                backend.address.clone()
            };
            let address_key = if !backend.address.span().is_empty() {
                format!("{key}.address")
            } else {
                key.clone()
            };
            let address = self.address(&address_at, &address_key, false);
            let weight = match &backend.weight {
                None => NonZeroU32::new(1),
                Some(weight) => self
                    .int_in(weight, &format!("{key}.weight"), 1, MAX_WEIGHT)
                    .and_then(|w| u32::try_from(w).ok())
                    .and_then(NonZeroU32::new),
            };
            let max_connections = self.optional_count(
                backend.max_connections.as_ref(),
                &format!("{key}.max_connections"),
            );
            let (Some(address), Some(weight), Some(max_connections)) =
                (address, weight, max_connections)
            else {
                ok = false;
                continue;
            };
            if !seen.insert(address) {
                self.report(
                    &address_at,
                    &address_key,
                    format!("backend {address} is listed twice in this pool"),
                );
                ok = false;
                continue;
            }
            backends.push(BackendConfig {
                name: Arc::from(backend.address.get_ref().as_str()),
                address,
                weight,
                max_connections,
            });
        }
        ok.then_some(backends)
    }

    fn upstream_tls(&mut self, key: &str, raw: &RawUpstreamTls) -> Option<UpstreamTlsConfig> {
        let base = self.config_dir();
        let mut ok = true;
        if let Some(name) = &raw.server_name {
            if rustls_pki_types::ServerName::try_from(name.get_ref().as_str()).is_err() {
                self.report(
                    name,
                    &format!("{key}.server_name"),
                    format!("{:?} is not a valid server name", name.get_ref()),
                );
                ok = false;
            }
        }
        let ca = raw.ca.as_ref().map(|ca| (ca, base.join(ca.get_ref())));
        if let Some((at, path)) = &ca {
            if let Err(err) = crate::tls::load_roots(path) {
                self.report(*at, &format!("{key}.ca"), err.to_string());
                ok = false;
            }
        }
        ok.then(|| UpstreamTlsConfig {
            server_name: raw.server_name.as_ref().map(|n| n.get_ref().clone()),
            ca: ca.map(|(_, path)| path),
            insecure_skip_verify: raw.insecure_skip_verify.unwrap_or(false),
        })
    }
}
