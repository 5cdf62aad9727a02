//! `[[listeners.routes]]`: each route's conditions and action, the pools it names, and the
//! routes an earlier one already covers (a warning: valid, but never reached).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use toml::Spanned;

use super::checker::Checker;
use super::pool::MAX_RETRIES;
use crate::config::raw::{OneOrMany, RawConfig, RawMirror, RawRoute};
use crate::config::types::{
    HeaderMatch, HostMatch, MirrorConfig, PathMatch, Protocol, RouteAction, RouteConfig,
};

/// Most entries in one `split`.
const MAX_SPLIT: usize = 16;
/// Largest weight of a `split` entry.
const MAX_SPLIT_WEIGHT: i64 = 1000;
/// Longest fixed response body, in bytes.
const MAX_RESPOND_BODY: usize = 64 * 1024;

impl Checker<'_> {
    /// The routes of the listener at `key`; `None` if any is invalid (each problem reported).
    pub(super) fn routes(
        &mut self,
        key: &str,
        routes: &[Spanned<RawRoute>],
        config: &RawConfig,
        protocol: Protocol,
    ) -> Option<Vec<RouteConfig>> {
        let mut valid = Vec::with_capacity(routes.len());
        let mut failed = false;
        for (index, raw) in routes.iter().enumerate() {
            let route_key = format!("{key}.routes[{index}]");
            let route = match protocol {
                Protocol::Http => self.route(&route_key, index, raw.get_ref(), config),
                Protocol::Tcp => self.sni_route(&route_key, index, raw.get_ref(), config),
            };
            match route {
                Some(route) => valid.push(route),
                None => failed = true,
            }
        }
        if failed {
            return None;
        }
        for (index, route) in valid.iter().enumerate() {
            if valid[..index]
                .iter()
                .any(|earlier| earlier.name == route.name)
            {
                let at = routes[index].get_ref().name.as_ref();
                let message = format!("duplicate route name {:?}", route.name);
                match at {
                    Some(name) => {
                        self.report(name, &format!("{key}.routes[{index}].name"), message)
                    }
                    None => self.report(
                        &routes[index],
                        &format!("{key}.routes[{index}].name"),
                        message,
                    ),
                }
                return None;
            }
        }
        self.warn_shadowed(key, routes, &valid);
        Some(valid)
    }

    /// A tcp listener's route: TLS server names (`sni`) to a pool, nothing else.
    fn sni_route(
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
        })
    }

    fn route_name(&mut self, key: &str, index: usize, raw: &RawRoute) -> Option<Arc<str>> {
        match &raw.name {
            Some(name) if name.get_ref().is_empty() => {
                self.report(name, &format!("{key}.name"), "must not be empty");
                None
            }
            Some(name) => Some(Arc::from(name.get_ref().as_str())),
            None => Some(Arc::from(format!("route-{}", index + 1))),
        }
    }

    fn route(
        &mut self,
        key: &str,
        index: usize,
        raw: &RawRoute,
        config: &RawConfig,
    ) -> Option<RouteConfig> {
        if let Some(sni) = &raw.sni {
            self.report(
                sni,
                &format!("{key}.sni"),
                "applies to tcp listeners (TLS passthrough); http routes match host",
            );
            return None;
        }
        let name = self.route_name(key, index, raw);
        let hosts = match &raw.host {
            None => Some(Vec::new()),
            Some(host) => self.hosts(&format!("{key}.host"), host),
        };
        let path = self.path(key, raw);
        let methods = match &raw.methods {
            None => Some(Vec::new()),
            Some(methods) => self.methods(&format!("{key}.methods"), methods),
        };
        let headers = self.header_conditions(key, raw);
        let set_request_headers = self.set_headers(key, raw);
        let action = self.action(key, raw, config);
        let request_timeout = match &raw.request_timeout {
            None => Some(None),
            Some(timeout) => self
                .duration(
                    Some(timeout),
                    &format!("{key}.request_timeout"),
                    Duration::ZERO,
                )
                .map(Some),
        };
        let retries = match &raw.retries {
            None => Some(None),
            Some(retries) => self
                .int_in(retries, &format!("{key}.retries"), 0, MAX_RETRIES)
                .and_then(|n| u32::try_from(n).ok())
                .map(Some),
        };
        if let (Some(timeout), None, None) = (&raw.request_timeout, &raw.pool, &raw.split) {
            self.report(
                timeout,
                &format!("{key}.request_timeout"),
                "applies only to routes that forward (pool or split)",
            );
            return None;
        }
        if let (Some(retries), None, None) = (&raw.retries, &raw.pool, &raw.split) {
            self.report(
                retries,
                &format!("{key}.retries"),
                "applies only to routes that forward (pool or split)",
            );
            return None;
        }
        let mirror = match &raw.mirror {
            None => Some(None),
            Some(mirror) => self
                .mirror(&format!("{key}.mirror"), raw, mirror, config)
                .map(Some),
        };
        let strip_prefix = raw.strip_prefix.as_ref().is_some_and(|s| *s.get_ref());
        if let Some(strip) = &raw.strip_prefix {
            if *strip.get_ref() && raw.path_prefix.is_none() {
                self.report(
                    strip,
                    &format!("{key}.strip_prefix"),
                    "needs a path_prefix to strip",
                );
                return None;
            }
        }
        Some(RouteConfig {
            name: name?,
            hosts: hosts?,
            path: path?,
            methods: methods?,
            headers: headers?,
            action: action?,
            strip_prefix,
            set_request_headers: set_request_headers?,
            mirror: mirror?,
            request_timeout: request_timeout?,
            retries: retries?,
        })
    }

    fn mirror(
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

    fn hosts(&mut self, key: &str, raw: &Spanned<OneOrMany>) -> Option<Vec<HostMatch>> {
        let names: Vec<&String> = match raw.get_ref() {
            OneOrMany::One(name) => vec![name],
            OneOrMany::Many(names) => names.iter().collect(),
        };
        if names.is_empty() {
            self.report(
                raw,
                key,
                "must name at least one host (omit it to match any host)",
            );
            return None;
        }
        let mut hosts = Vec::with_capacity(names.len());
        for name in names {
            let lower = name.to_ascii_lowercase();
            let (wildcard, rest) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower.as_str()),
            };
            if !is_dns_name(rest) {
                let why = if rest.contains('*') {
                    "a wildcard may only be the whole first label (`*.example.com`)"
                } else {
                    "is not a host name (letters, digits, `-` and `.`; no port, no scheme)"
                };
                self.report(raw, key, format!("{name:?}: {why}"));
                return None;
            }
            let rest = Arc::from(rest);
            hosts.push(if wildcard {
                HostMatch::Wildcard(rest)
            } else {
                HostMatch::Exact(rest)
            });
        }
        Some(hosts)
    }

    fn path(&mut self, key: &str, raw: &RawRoute) -> Option<Option<PathMatch>> {
        match (&raw.path, &raw.path_prefix) {
            (Some(path), Some(_)) => {
                self.report(
                    path,
                    &format!("{key}.path"),
                    "set either path or path_prefix, not both",
                );
                None
            }
            (Some(path), None) => {
                self.path_value(path, &format!("{key}.path"))?;
                Some(Some(PathMatch::Exact(Arc::from(path.get_ref().as_str()))))
            }
            (None, Some(prefix)) => {
                self.path_value(prefix, &format!("{key}.path_prefix"))?;
                let trimmed = match prefix.get_ref().trim_end_matches('/') {
                    "" => "/",
                    trimmed => trimmed,
                };
                Some(Some(PathMatch::Prefix(Arc::from(trimmed))))
            }
            (None, None) => Some(None),
        }
    }

    fn path_value(&mut self, path: &Spanned<String>, key: &str) -> Option<()> {
        let value = path.get_ref();
        let valid = value.starts_with('/')
            && !value.contains(['?', '#'])
            && value.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            self.report(
                path,
                key,
                format!("{value:?} is not a path (it starts with `/`, without query or spaces)"),
            );
            return None;
        }
        Some(())
    }

    fn methods(&mut self, key: &str, raw: &Spanned<Vec<Spanned<String>>>) -> Option<Vec<Method>> {
        if raw.get_ref().is_empty() {
            self.report(
                raw,
                key,
                "must name at least one method (omit it to match any)",
            );
            return None;
        }
        let mut methods = Vec::new();
        for method in raw.get_ref() {
            match Method::from_bytes(method.get_ref().as_bytes()) {
                Ok(parsed) if method.get_ref().bytes().all(|b| b.is_ascii_uppercase()) => {
                    methods.push(parsed);
                }
                _ => {
                    self.report(
                        method,
                        key,
                        format!(
                            "{:?} is not a method (upper case, e.g. \"GET\")",
                            method.get_ref()
                        ),
                    );
                    return None;
                }
            }
        }
        Some(methods)
    }

    fn header_conditions(
        &mut self,
        key: &str,
        raw: &RawRoute,
    ) -> Option<Vec<(HeaderName, HeaderMatch)>> {
        let mut conditions = Vec::new();
        for (name, value) in raw.headers.iter().flatten() {
            let key = format!("{key}.headers.{}", name.get_ref());
            let header = self.header_name(name, &key)?;
            let condition = if value.get_ref() == "*" {
                HeaderMatch::Present
            } else {
                HeaderMatch::Exact(self.header_value(value, &key)?)
            };
            conditions.push((header, condition));
        }
        Some(conditions)
    }

    fn set_headers(&mut self, key: &str, raw: &RawRoute) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let mut headers = Vec::new();
        for (name, value) in raw.set_request_headers.iter().flatten() {
            let key = format!("{key}.set_request_headers.{}", name.get_ref());
            let header = self.header_name(name, &key)?;
            if crate::http::headers::is_managed(&header) {
                self.report(
                    name,
                    &key,
                    "fulcrum manages this header itself (hop-by-hop, framing or forwarding)",
                );
                return None;
            }
            headers.push((header, self.header_value(value, &key)?));
        }
        Some(headers)
    }

    fn header_name(&mut self, name: &Spanned<String>, key: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.get_ref().as_bytes()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.report(name, key, "is not a valid header name");
                None
            }
        }
    }

    fn header_value(&mut self, value: &Spanned<String>, key: &str) -> Option<HeaderValue> {
        match HeaderValue::from_str(value.get_ref()) {
            Ok(header) => Some(header),
            Err(_) => {
                self.report(value, key, "is not a valid header value");
                None
            }
        }
    }

    fn action(&mut self, key: &str, raw: &RawRoute, config: &RawConfig) -> Option<RouteAction> {
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
        raw: &Spanned<Vec<Spanned<crate::config::raw::RawSplit>>>,
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

    /// `pool` if the file defines it, else a problem listing the pools it does define.
    pub(super) fn pool_name(
        &mut self,
        pool: &Spanned<String>,
        key: &str,
        config: &RawConfig,
    ) -> Option<Arc<str>> {
        let name = pool.get_ref();
        if config.pools.contains_key(name.as_str()) {
            return Some(Arc::from(name.as_str()));
        }
        let known: Vec<&str> = config.pools.keys().map(|k| k.get_ref().as_str()).collect();
        let hint = if known.is_empty() {
            "no pools are defined".to_owned()
        } else {
            format!("defined pools: {}", known.join(", "))
        };
        self.report(pool, key, format!("pool {name:?} does not exist ({hint})"));
        None
    }

    /// Where a route's table starts, for problems that belong to the route as a whole.
    fn route_offset(&self, raw: &RawRoute) -> usize {
        [
            raw.name.as_ref().map(|s| s.span().start),
            raw.host.as_ref().map(|s| s.span().start),
            raw.sni.as_ref().map(|s| s.span().start),
            raw.path.as_ref().map(|s| s.span().start),
            raw.path_prefix.as_ref().map(|s| s.span().start),
            raw.methods.as_ref().map(|s| s.span().start),
            raw.pool.as_ref().map(|s| s.span().start),
            raw.split.as_ref().map(|s| s.span().start),
            raw.redirect.as_ref().map(|s| s.span().start),
            raw.respond.as_ref().map(|s| s.span().start),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0)
    }

    /// Warns about each route that an earlier one of the same listener always takes first.
    fn warn_shadowed(&mut self, key: &str, raw: &[Spanned<RawRoute>], routes: &[RouteConfig]) {
        for (later, route) in routes.iter().enumerate() {
            let Some(earlier) = routes[..later]
                .iter()
                .position(|first| covers(first, route))
            else {
                continue;
            };
            let at = self.position(&raw[earlier]);
            self.warn(
                &raw[later],
                &format!("{key}.routes[{later}]"),
                format!(
                    "route {:?} can never match: route {:?} ({at}) matches every request it would",
                    route.name, routes[earlier].name
                ),
            );
        }
    }
}

/// The `{name}` placeholders in a redirect template.
fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .map(|rest| rest.split_once('}').map_or(rest, |(name, _)| name))
}

/// A host name of letters, digits and hyphens in dot-separated labels.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `first` matches every request `second` matches, so `second` (later) never does.
fn covers(first: &RouteConfig, second: &RouteConfig) -> bool {
    let hosts = first.hosts.is_empty()
        || (!second.hosts.is_empty()
            && second
                .hosts
                .iter()
                .all(|host| first.hosts.iter().any(|cover| host_covers(cover, host))));
    let path = match (&first.path, &second.path) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(cover), Some(path)) => path_covers(cover, path),
    };
    let methods = first.methods.is_empty()
        || (!second.methods.is_empty()
            && second
                .methods
                .iter()
                .all(|method| first.methods.contains(method)));
    let headers = first.headers.iter().all(|(name, condition)| {
        second.headers.iter().any(|(other, value)| {
            other == name && (*condition == HeaderMatch::Present || condition == value)
        })
    });
    hosts && path && methods && headers
}

fn host_covers(cover: &HostMatch, host: &HostMatch) -> bool {
    match (cover, host) {
        (HostMatch::Exact(a), HostMatch::Exact(b))
        | (HostMatch::Wildcard(a), HostMatch::Wildcard(b)) => a == b,
        (HostMatch::Wildcard(suffix), HostMatch::Exact(name)) => name
            .split_once('.')
            .is_some_and(|(_, rest)| rest == &**suffix),
        (HostMatch::Exact(_), HostMatch::Wildcard(_)) => false,
    }
}

fn path_covers(cover: &PathMatch, path: &PathMatch) -> bool {
    match (cover, path) {
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
        (PathMatch::Prefix(_), PathMatch::Exact(p) | PathMatch::Prefix(p)) => cover.matches(p),
    }
}
