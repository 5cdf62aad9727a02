//! What a route does: `pool`, `split`, `redirect` or `respond` (exactly one), its `mirror`,
//! and the routes of tcp listeners, which send TLS connections by `sni` to a pool.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use toml::Spanned;

use super::checker::Checker;
use crate::config::raw::{RawConfig, RawMirror, RawRoute, RawSplit};
use crate::config::types::{MirrorConfig, RouteAction, RouteConfig};

/// Most entries in one `split`.
const MAX_SPLIT: usize = 16;
/// Largest weight of a `split` entry.
const MAX_SPLIT_WEIGHT: i64 = 1000;
/// Longest fixed response body, in bytes.
const MAX_RESPOND_BODY: usize = 64 * 1024;

impl Checker<'_> {
    /// A tcp listener's route: TLS server names (`sni`) to a pool, nothing else.
    pub(super) fn sni_route(
        &mut self,
        key: &str,
        index: usize,
        raw: &RawRoute,
        config: &RawConfig,
    ) -> Option<RouteConfig> {
        self.reject_keys(
            key,
            "routes of tcp listeners (they route by sni to a pool)",
            &[
                ("host", raw.host.as_ref().map(Spanned::span)),
                ("path", raw.path.as_ref().map(Spanned::span)),
                ("path_prefix", raw.path_prefix.as_ref().map(Spanned::span)),
                ("methods", raw.methods.as_ref().map(Spanned::span)),
                ("split", raw.split.as_ref().map(Spanned::span)),
                ("redirect", raw.redirect.as_ref().map(Spanned::span)),
                ("respond", raw.respond.as_ref().map(Spanned::span)),
                ("strip_prefix", raw.strip_prefix.as_ref().map(Spanned::span)),
                ("mirror", raw.mirror.as_ref().map(Spanned::span)),
                (
                    "request_timeout",
                    raw.request_timeout.as_ref().map(Spanned::span),
                ),
                ("retries", raw.retries.as_ref().map(Spanned::span)),
                ("rate_limit", raw.rate_limit.as_ref().map(Spanned::span)),
            ],
        );
        if raw.headers.is_some() || raw.set_request_headers.is_some() {
            self.report_at(
                self.route_offset(raw),
                key,
                "headers and set_request_headers do not apply to routes of tcp listeners",
            );
            return None;
        }
        let Some(sni) = &raw.sni else {
            self.report_at(
                self.route_offset(raw),
                key,
                "a route of a tcp listener needs sni",
            );
            return None;
        };
        let hosts = self.hosts(&format!("{key}.sni"), sni);
        let Some(pool) = &raw.pool else {
            self.report(sni, key, "a route of a tcp listener needs a pool");
            return None;
        };
        let pool = self.pool_name(pool, &format!("{key}.pool"), config);
        let name = self.route_name(key, index, raw);
        Some(RouteConfig {
            name: name?,
            hosts: hosts?,
            path: None,
            methods: Vec::new(),
            headers: Vec::new(),
            action: RouteAction::Pool(pool?),
            strip_prefix: false,
            set_request_headers: Vec::new(),
            mirror: None,
            request_timeout: None,
            retries: None,
            rate_limit: None,
        })
    }

    pub(super) fn action(
        &mut self,
        key: &str,
        raw: &RawRoute,
        config: &RawConfig,
    ) -> Option<RouteAction> {
        let set: Vec<&str> = [
            raw.pool.as_ref().map(|_| "pool"),
            raw.split.as_ref().map(|_| "split"),
            raw.redirect.as_ref().map(|_| "redirect"),
            raw.respond.as_ref().map(|_| "respond"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() != 1 {
            let message = if set.is_empty() {
                "a route needs one of pool, split, redirect or respond".to_owned()
            } else {
                format!(
                    "set only one of pool, split, redirect or respond (found {})",
                    set.join(", ")
                )
            };
            self.report_at(self.route_offset(raw), key, message);
            return None;
        }
        let local = raw.redirect.as_ref().map(Spanned::span);
        let local = local.or(raw.respond.as_ref().map(Spanned::span));
        if let (Some(headers), Some(_)) = (raw.set_request_headers.as_ref(), local) {
            if let Some((name, _)) = headers.iter().next() {
                self.report(
                    name,
                    &format!("{key}.set_request_headers"),
                    "applies only to routes that forward (pool or split)",
                );
                return None;
            }
        }
        if let (Some(strip), Some(_)) = (&raw.strip_prefix, &raw.respond) {
            self.report(
                strip,
                &format!("{key}.strip_prefix"),
                "does not apply to a fixed response",
            );
            return None;
        }
        if let Some(pool) = &raw.pool {
            return self
                .pool_name(pool, &format!("{key}.pool"), config)
                .map(RouteAction::Pool);
        }
        if let Some(split) = &raw.split {
            return self.split(&format!("{key}.split"), split, config);
        }
        if let Some(redirect) = &raw.redirect {
            let redirect = redirect.get_ref();
            let status = match &redirect.status {
                None => StatusCode::FOUND,
                Some(status) if [301, 302, 303, 307, 308].contains(status.get_ref()) => {
                    StatusCode::from_u16(*status.get_ref() as u16).ok()?
                }
                Some(status) => {
                    self.report(
                        status,
                        &format!("{key}.redirect.status"),
                        "must be 301, 302, 303, 307 or 308",
                    );
                    return None;
                }
            };
            let to = redirect.to.get_ref();
            let unknown = placeholders(to).find(|name| !["host", "path", "query"].contains(name));
            if to.is_empty() || unknown.is_some() {
                self.report(
                    &redirect.to,
                    &format!("{key}.redirect.to"),
                    match unknown {
                        Some(name) => format!(
                            "unknown placeholder {{{name}}} (use {{host}}, {{path}}, {{query}})"
                        ),
                        None => "must not be empty".to_owned(),
                    },
                );
                return None;
            }
            return Some(RouteAction::Redirect {
                to: Arc::from(to.as_str()),
                status,
            });
        }
        let respond = raw.respond.as_ref()?.get_ref();
        let status =
            match StatusCode::from_u16(u16::try_from(*respond.status.get_ref()).unwrap_or(0)) {
                Ok(status) if (200..=599).contains(&status.as_u16()) => status,
                _ => {
                    self.report(
                        &respond.status,
                        &format!("{key}.respond.status"),
                        "must be a status code from 200 to 599",
                    );
                    return None;
                }
            };
        let body = respond.body.clone().unwrap_or_default();
        if body.len() > MAX_RESPOND_BODY {
            self.report(
                &respond.status,
                &format!("{key}.respond.body"),
                format!("is {} bytes; at most {MAX_RESPOND_BODY}", body.len()),
            );
            return None;
        }
        Some(RouteAction::Respond {
            status,
            body: Bytes::from(body),
        })
    }

    fn split(
        &mut self,
        key: &str,
        raw: &Spanned<Vec<Spanned<RawSplit>>>,
        config: &RawConfig,
    ) -> Option<RouteAction> {
        let entries = raw.get_ref();
        if entries.is_empty() || entries.len() > MAX_SPLIT {
            self.report(raw, key, format!("needs 1 to {MAX_SPLIT} entries"));
            return None;
        }
        let mut split = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.get_ref();
            let entry_key = format!("{key}[{index}]");
            let pool = self.pool_name(&entry.pool, &format!("{entry_key}.pool"), config);
            let weight = self.int_in(
                &entry.weight,
                &format!("{entry_key}.weight"),
                1,
                MAX_SPLIT_WEIGHT,
            );
            let weight = weight
                .and_then(|w| u32::try_from(w).ok())
                .and_then(NonZeroU32::new);
            split.push((pool?, weight?));
        }
        Some(RouteAction::Split(split))
    }

    pub(super) fn mirror(
        &mut self,
        key: &str,
        route: &RawRoute,
        raw: &Spanned<RawMirror>,
        config: &RawConfig,
    ) -> Option<MirrorConfig> {
        if route.pool.is_none() && route.split.is_none() {
            self.report(
                raw,
                key,
                "applies only to routes that forward (pool or split)",
            );
            return None;
        }
        let mirror = raw.get_ref();
        let pool = self.pool_name(&mirror.pool, &format!("{key}.pool"), config);
        let mut number =
            |value: &Option<Spanned<i64>>, name: &str, (min, max, default): (i64, i64, i64)| {
                match value {
                    None => Some(default),
                    Some(value) => self.int_in(value, &format!("{key}.{name}"), min, max),
                }
            };
        let percent = number(&mirror.percent, "percent", (1, 100, 100));
        let max_in_flight = number(&mirror.max_in_flight, "max_in_flight", (1, 10_000, 64));
        let max_body = number(
            &mirror.max_body,
            "max_body",
            (0, 16 * 1024 * 1024, 64 * 1024),
        );
        Some(MirrorConfig {
            pool: pool?,
            percent: u8::try_from(percent?).ok()?,
            max_in_flight: usize::try_from(max_in_flight?).ok()?,
            max_body: usize::try_from(max_body?).ok()?,
        })
    }
}

/// The `{name}` placeholders in a redirect template.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .map(|rest| rest.split_once('}').map_or(rest, |(name, _)| name))
}
