//! The router between an HTTP listener and its pools: which route a request takes.
//!
//! Built with each snapshot from the listener's `[[listeners.routes]]`, immutable afterwards.
//! Routes are tried in file order and the first match wins; to keep that cheap with many
//! routes, the host is looked up once by hash — exact name first, then the `*.` wildcard for
//! the name minus its first label, else the routes without a host condition — and each entry
//! holds, in file order, only the routes that host can match. A lookup allocates nothing.

mod action;
mod mirror;

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, Method, Uri};

use action::Action;
pub(crate) use action::{Local, Target};
pub(crate) use mirror::Mirror;

use crate::config::{HeaderMatch, HostMatch, ListenerConfig, PathMatch, RouteConfig};
use crate::http::host;
use crate::metrics::RouteMetrics;
use crate::pool::{Budget, Pool};
use crate::rate_limit::RateLimiter;

/// Longest host name looked up (RFC 1035: 253 characters); longer ones match no host route.
const MAX_HOST: usize = 253;

/// One listener's routes and fallback pool.
#[derive(Debug)]
pub(crate) struct Router {
    routes: Box<[Route]>,
    /// Exact host → indices into `routes` that can match it, in file order.
    exact: HashMap<Box<str>, Box<[u32]>>,
    /// Wildcard suffix (`example.com` for `*.example.com`) → indices, in file order.
    wildcard: HashMap<Box<str>, Box<[u32]>>,
    /// Indices of the routes without a host condition: what any other host can match.
    any_host: Box<[u32]>,
    /// The listener's pool, for requests no route takes.
    fallback: Option<Arc<Pool>>,
    /// The listener's own rate limit, checked before routing.
    rate_limit: Option<Arc<RateLimiter>>,
}

/// One route: its conditions and what it does.
#[derive(Debug)]
pub(crate) struct Route {
    /// Its name (as configured, `route-N` by default) and request metrics.
    pub(crate) metrics: Arc<RouteMetrics>,
    path: Option<PathMatch>,
    methods: Box<[Method]>,
    headers: Box<[(http::HeaderName, HeaderMatch)]>,
    action: Action,
    /// With `strip_prefix`: the prefix to take off the path.
    strip: Option<Arc<str>>,
    /// Set on the request before forwarding.
    set_headers: Box<[(http::HeaderName, http::HeaderValue)]>,
    /// Copies of some of its requests for another pool.
    pub(crate) mirror: Option<Arc<Mirror>>,
    /// Its own `request_timeout` and `retries`, instead of its pool's.
    request_timeout: Option<std::time::Duration>,
    retries: Option<u32>,
    /// Its own rate limit, checked after the listener's.
    pub(crate) rate_limit: Option<Arc<RateLimiter>>,
}

impl Router {
    /// The router of `listener` for its routes, with `pool_of` giving each pool a route names
    /// (validation made sure they exist; a route whose pool is missing anyway is left out).
    /// Rate limiters whose settings are unchanged since `previous` are carried over with their
    /// buckets (a route's by its name).
    pub(crate) fn build(
        listener: &ListenerConfig,
        previous: Option<&Router>,
        fallback: Option<Arc<Pool>>,
        pool_of: impl Fn(&str) -> Option<Arc<Pool>>,
    ) -> Router {
        let name = &listener.name;
        let routes = &listener.routes;
        let rate_limit = listener.rate_limit.as_ref().map(|config| {
            let previous = previous.and_then(|router| router.rate_limit.as_ref());
            RateLimiter::carry(config, previous, name, None)
        });
        let listener = &**name;
        let built: Vec<(Route, &RouteConfig)> = routes
            .iter()
            .filter_map(|config| {
                let action = Action::build(config, &pool_of)?;
                Some((
                    Route {
                        metrics: Arc::new(RouteMetrics::new(listener, &config.name)),
                        path: config.path.clone(),
                        methods: config.methods.clone().into_boxed_slice(),
                        headers: config.headers.clone().into_boxed_slice(),
                        action,
                        strip: match (&config.path, config.strip_prefix) {
                            (Some(PathMatch::Prefix(prefix)), true) => Some(Arc::clone(prefix)),
                            _ => None,
                        },
                        set_headers: config.set_request_headers.clone().into_boxed_slice(),
                        request_timeout: config.request_timeout,
                        retries: config.retries,
                        mirror: config.mirror.as_ref().and_then(|mirror| {
                            Mirror::build(mirror, listener, &config.name, &pool_of).map(Arc::new)
                        }),
                        rate_limit: config.rate_limit.as_ref().map(|limit| {
                            let previous = previous
                                .and_then(|router| router.route_named(&config.name))
                                .and_then(|route| route.rate_limit.as_ref());
                            RateLimiter::carry(limit, previous, name, Some(&config.name))
                        }),
                    },
                    config,
                ))
            })
            .collect();
        let any_host: Vec<u32> = indices(&built, |config| config.hosts.is_empty());
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (_, config) in &built {
            for host in &config.hosts {
                match host {
                    HostMatch::Exact(name) => {
                        let suffix = name.split_once('.').map(|(_, rest)| rest);
                        let candidates = indices(&built, |route| {
                            route.hosts.is_empty()
                                || route.hosts.iter().any(|h| match h {
                                    HostMatch::Exact(other) => other == name,
                                    HostMatch::Wildcard(other) => Some(&**other) == suffix,
                                })
                        });
                        exact.insert(Box::from(&**name), candidates.into_boxed_slice());
                    }
                    HostMatch::Wildcard(suffix) => {
                        let candidates = indices(&built, |route| {
                            route.hosts.is_empty()
                                || route
                                    .hosts
                                    .contains(&HostMatch::Wildcard(Arc::clone(suffix)))
                        });
                        wildcard.insert(Box::from(&**suffix), candidates.into_boxed_slice());
                    }
                }
            }
        }
        Router {
            routes: built.into_iter().map(|(route, _)| route).collect(),
            exact,
            wildcard,
            any_host: any_host.into_boxed_slice(),
            fallback,
            rate_limit,
        }
    }

    /// The listener's own rate limit.
    pub(crate) fn rate_limit(&self) -> Option<&Arc<RateLimiter>> {
        self.rate_limit.as_ref()
    }

    /// The route called `name`.
    pub(crate) fn route_named(&self, name: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| &*route.metrics.name == name)
    }

    /// The listener's pool (for requests no route takes, and TCP listeners).
    pub(crate) fn fallback(&self) -> Option<&Arc<Pool>> {
        self.fallback.as_ref()
    }

    /// The pool for a passed-through TLS connection asking for `server_name`: the first route
    /// whose `sni` names it, else the fallback pool.
    pub(crate) fn route_sni(&self, server_name: Option<&str>) -> Option<&Arc<Pool>> {
        let routed = server_name.and_then(|name| {
            self.candidates(Some(name))
                .iter()
                .map(|&index| &self.routes[index as usize].action)
                .find_map(|action| match action {
                    Action::Pool(pool) => Some(pool),
                    _ => None,
                })
        });
        routed.or(self.fallback.as_ref())
    }

    /// Whether the listener has routes.
    pub(crate) fn has_routes(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Where a request goes: the first route that matches, else the fallback pool; `None`
    /// when neither (the client gets 404).
    pub(crate) fn route<'a>(
        &'a self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Target<'a>> {
        if let Some(route) = self.first_match(method, uri, headers) {
            return Some(route.action.target(route));
        }
        self.fallback.as_ref().map(Target::fallback)
    }

    fn first_match(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<&Route> {
        if self.routes.is_empty() {
            return None;
        }
        let candidates = self.candidates(host::name(uri, headers));
        let path = uri.path();
        candidates
            .iter()
            .map(|&index| &self.routes[index as usize])
            .find(|route| route.matches(method, path, headers))
    }

    /// The routes a request for `host` may take, in file order.
    fn candidates(&self, host: Option<&str>) -> &[u32] {
        let Some(host) = host.filter(|host| host.len() <= MAX_HOST) else {
            return &self.any_host;
        };
        let mut lower = [0u8; MAX_HOST];
        let lower = &mut lower[..host.len()];
        lower.copy_from_slice(host.as_bytes());
        lower.make_ascii_lowercase();
        let Ok(host) = std::str::from_utf8(lower) else {
            return &self.any_host;
        };
        if let Some(candidates) = self.exact.get(host) {
            return candidates;
        }
        host.split_once('.')
            .and_then(|(_, suffix)| self.wildcard.get(suffix))
            .map_or(&self.any_host, |candidates| candidates)
    }
}

impl Route {
    /// What a request it forwards to `pool` may spend: the route's own `request_timeout` and
    /// `retries` where set, else the pool's.
    pub(crate) fn budget(&self, pool: &Pool) -> Budget {
        let budget = pool.budget();
        Budget {
            request_timeout: self.request_timeout.unwrap_or(budget.request_timeout),
            retries: self.retries.unwrap_or(budget.retries),
        }
    }

    /// Rewrites a request this route forwards: strips the prefix, sets the headers.
    pub(crate) fn rewrite<B>(&self, request: &mut http::Request<B>) {
        if let Some(prefix) = &self.strip {
            if let Some(stripped) = action::strip_prefix(request.uri(), prefix) {
                *request.uri_mut() = stripped;
            }
        }
        for (name, value) in &self.set_headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
    }

    /// The path as the backend sees it (after `strip_prefix`), for redirects.
    fn forwarded_path<'a>(&self, path: &'a str) -> &'a str {
        match &self.strip {
            Some(prefix) if &**prefix != "/" => match path.strip_prefix(&**prefix) {
                Some("") => "/",
                Some(rest) => rest,
                None => path,
            },
            _ => path,
        }
    }

    fn matches(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        self.path
            .as_ref()
            .is_none_or(|condition| condition.matches(path))
            && (self.methods.is_empty() || self.methods.contains(method))
            && self
                .headers
                .iter()
                .all(|(name, condition)| match condition {
                    HeaderMatch::Present => headers.contains_key(name),
                    HeaderMatch::Exact(value) => {
                        headers.get_all(name).iter().any(|have| have == value)
                    }
                })
    }
}

/// Indices of the routes whose config passes `keep`, in file order.
fn indices(built: &[(Route, &RouteConfig)], keep: impl Fn(&RouteConfig) -> bool) -> Vec<u32> {
    built
        .iter()
        .enumerate()
        .filter(|(_, (_, config))| keep(config))
        .filter_map(|(index, _)| u32::try_from(index).ok())
        .collect()
}

#[cfg(test)]
mod tests;
