//! `[[listeners.routes]]`: each route's conditions (hosts, path, methods, headers) and the
//! pools it names; its action is checked in `route_action`, shadowed routes in `shadow`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::checker::Checker;
use super::pool::MAX_RETRIES;
use crate::config::raw::{OneOrMany, RawConfig, RawRoute};
use crate::config::types::{HeaderMatch, HostMatch, PathMatch, Protocol, RouteConfig};

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

    pub(super) fn route_name(
        &mut self,
        key: &str,
        index: usize,
        raw: &RawRoute,
    ) -> Option<Arc<str>> {
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
        let rate_limit = match &raw.rate_limit {
            None => Some(None),
            Some(limit) => self
                .rate_limit(&format!("{key}.rate_limit"), limit, Protocol::Http)
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
            rate_limit: rate_limit?,
        })
    }

    pub(super) fn hosts(&mut self, key: &str, raw: &Spanned<OneOrMany>) -> Option<Vec<HostMatch>> {
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
    pub(super) fn route_offset(&self, raw: &RawRoute) -> usize {
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
