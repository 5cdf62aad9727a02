//! What a route does with a request it matched: forward to a pool or a weighted split of
//! pools, or answer itself with a redirect or a fixed response.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri};

use super::Route;
use crate::balance::Rotation;
use crate::config::{RouteAction, RouteConfig};
use crate::pool::Pool;

/// A route's action with its pools resolved.
#[derive(Debug)]
pub(super) enum Action {
    Pool(Arc<Pool>),
    /// Pools taking turns in smooth weighted order, one turn per request.
    Split(Box<[Arc<Pool>]>, Rotation),
    Redirect {
        to: Arc<str>,
        status: StatusCode,
    },
    Respond {
        status: StatusCode,
        body: Bytes,
    },
}

/// Where one request goes.
#[derive(Debug)]
pub(crate) enum Target<'a> {
    /// To `pool`; through `route`, which may rewrite the request first, or as the fallback.
    Forward {
        pool: &'a Arc<Pool>,
        route: Option<&'a Route>,
    },
    /// Answered by fulcrum itself.
    Local {
        route: &'a Route,
        response: Local<'a>,
    },
}

/// A response a route answers with.
#[derive(Debug)]
pub(crate) enum Local<'a> {
    /// A redirect to the template filled in for the request.
    Redirect { to: &'a str, status: StatusCode },
    /// A fixed status and body.
    Respond { status: StatusCode, body: &'a Bytes },
}

impl Action {
    pub(super) fn build(
        config: &RouteConfig,
        pool_of: impl Fn(&str) -> Option<Arc<Pool>>,
    ) -> Option<Action> {
        Some(match &config.action {
            RouteAction::Pool(pool) => Action::Pool(pool_of(pool)?),
            RouteAction::Split(split) => {
                let pools = split
                    .iter()
                    .map(|(pool, _)| pool_of(pool))
                    .collect::<Option<Box<[_]>>>()?;
                let weights: Vec<u32> = split.iter().map(|(_, weight)| weight.get()).collect();
                Action::Split(pools, Rotation::new(&weights)?)
            }
            RouteAction::Redirect { to, status } => Action::Redirect {
                to: Arc::clone(to),
                status: *status,
            },
            RouteAction::Respond { status, body } => Action::Respond {
                status: *status,
                body: body.clone(),
            },
        })
    }

    pub(super) fn target<'a>(&'a self, route: &'a Route) -> Target<'a> {
        match self {
            Action::Pool(pool) => Target::Forward {
                pool,
                route: Some(route),
            },
            Action::Split(pools, rotation) => Target::Forward {
                pool: &pools[rotation.next() % pools.len()],
                route: Some(route),
            },
            Action::Redirect { to, status } => Target::Local {
                route,
                response: Local::Redirect {
                    to,
                    status: *status,
                },
            },
            Action::Respond { status, body } => Target::Local {
                route,
                response: Local::Respond {
                    status: *status,
                    body,
                },
            },
        }
    }
}

impl<'a> Target<'a> {
    pub(super) fn fallback(pool: &'a Arc<Pool>) -> Self {
        Target::Forward { pool, route: None }
    }
}

impl Route {
    /// A redirect's `Location` for the request: the template with `{host}` (without port),
    /// `{path}` (after `strip_prefix`) and `{query}` (`?…`, or nothing) filled in.
    pub(crate) fn location(&self, template: &str, uri: &Uri, headers: &HeaderMap) -> String {
        let host = crate::http::host::name(uri, headers).unwrap_or_default();
        let path = self.forwarded_path(uri.path());
        let query = uri.query().map(|query| format!("?{query}"));
        let mut location = String::with_capacity(template.len() + path.len() + 16);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            location.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some((name, tail)) = after.split_once('}') else {
                location.push_str(&rest[open..]);
                rest = "";
                break;
            };
            match name {
                "host" => location.push_str(host),
                "path" => location.push_str(path),
                "query" => location.push_str(query.as_deref().unwrap_or_default()),
                other => {
                    location.push('{');
                    location.push_str(other);
                    location.push('}');
                }
            }
            rest = tail;
        }
        location.push_str(rest);
        location
    }
}

/// `uri` with `prefix` (a whole-segment prefix of its path) taken off the path; `/` when
/// nothing is left. `None` if the path does not start with it.
pub(super) fn strip_prefix(uri: &Uri, prefix: &str) -> Option<Uri> {
    if prefix == "/" {
        return None;
    }
    let rest = uri.path().strip_prefix(prefix)?;
    let path = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}
