//! Routes an earlier route of the same listener always takes first: valid, but never reached,
//! so `--check` (and the log) warn about them with both positions.

use toml::Spanned;

use super::checker::Checker;
use crate::config::raw::RawRoute;
use crate::config::types::{HeaderMatch, HostMatch, PathMatch, RouteConfig};

impl Checker<'_> {
    /// Warns about each route that an earlier one of the same listener always takes first.
    pub(super) fn warn_shadowed(
        &mut self,
        key: &str,
        raw: &[Spanned<RawRoute>],
        routes: &[RouteConfig],
    ) {
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
