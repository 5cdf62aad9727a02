//! The router against hand-written requests: match kinds, file order, host lookup, actions.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::config::Config;
use crate::route::{Local, Router, Target};
use crate::snapshot::Snapshot;

/// The snapshot of a listener `web` with `routes` in front of pools `app` (fallback), `api`,
/// `shop` and `next`.
fn snapshot(routes: &str, fallback: bool) -> Snapshot {
    let pool = if fallback { "pool = \"app\"\n" } else { "" };
    let source = format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n{pool}{routes}\n\
         [pools.app]\nbackends = [\"127.0.0.1:3001\"]\n\
         [pools.api]\nbackends = [\"127.0.0.1:3002\"]\n\
         [pools.shop]\nbackends = [\"127.0.0.1:3003\"]\n\
         [pools.next]\nbackends = [\"127.0.0.1:3004\"]\n"
    );
    let config = Config::parse("t.toml", &source).expect("valid");
    Snapshot::build(Arc::new(config), None)
}

fn router(snapshot: &Snapshot) -> &Router {
    snapshot.router_for("web").expect("router")
}

/// The pool (or local answer) a request gets: `pool:NAME`, `redirect:LOCATION`,
/// `respond:STATUS`, or `404`.
fn outcome(router: &Router, method: Method, uri: &str, headers: &[(&str, &str)]) -> String {
    let uri: Uri = uri.parse().expect("uri");
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).expect("name");
        map.append(name, HeaderValue::from_str(value).expect("value"));
    }
    match router.route(&method, &uri, &map) {
        None => "404".to_owned(),
        Some(Target::Forward { pool, .. }) => format!("pool:{}", pool.name),
        Some(Target::Local {
            route,
            response: Local::Redirect { to, status },
        }) => {
            format!(
                "redirect:{}:{}",
                status.as_u16(),
                route.location(to, &uri, &map)
            )
        }
        Some(Target::Local {
            response: Local::Respond { status, .. },
            ..
        }) => {
            format!("respond:{}", status.as_u16())
        }
    }
}

fn get(router: &Router, host: &str, path: &str) -> String {
    outcome(router, Method::GET, path, &[("host", host)])
}

const ROUTES: &str = r#"
[[listeners.routes]]
host = ["api.example.com", "*.api.example.com"]
path_prefix = "/v1"
pool = "api"

[[listeners.routes]]
path = "/exact"
methods = ["POST"]
pool = "api"

[[listeners.routes]]
path_prefix = "/canary"
headers = { "x-canary" = "1", "x-debug" = "*" }
pool = "next"

[[listeners.routes]]
path_prefix = "/old/"
strip_prefix = true
redirect = { to = "https://{host}/new{path}{query}", status = 308 }

[[listeners.routes]]
path_prefix = "/internal"
respond = { status = 403, body = "no\n" }
"#;

#[test]
fn each_match_kind_and_the_fallback() {
    let snapshot = snapshot(ROUTES, true);
    let router = router(&snapshot);
    assert_eq!(get(router, "api.example.com", "/v1/users"), "pool:api");
    assert_eq!(
        get(router, "API.Example.com:8080", "/v1"),
        "pool:api",
        "case and port ignored"
    );
    assert_eq!(
        get(router, "eu.api.example.com", "/v1/x"),
        "pool:api",
        "one wildcard label"
    );
    assert_eq!(
        get(router, "a.eu.api.example.com", "/v1/x"),
        "pool:app",
        "only one label"
    );
    assert_eq!(
        get(router, "api.example.com", "/v1x"),
        "pool:app",
        "whole segments only"
    );
    assert_eq!(
        get(router, "other.example", "/v1/users"),
        "pool:app",
        "host must match"
    );
    assert_eq!(
        outcome(router, Method::POST, "/exact", &[("host", "x")]),
        "pool:api"
    );
    assert_eq!(
        outcome(router, Method::GET, "/exact", &[("host", "x")]),
        "pool:app",
        "method"
    );
    assert_eq!(
        get(router, "x", "/exact/more"),
        "pool:app",
        "exact is exact"
    );
    let canary = [("host", "x"), ("x-canary", "1"), ("x-debug", "yes")];
    assert_eq!(
        outcome(router, Method::GET, "/canary", &canary),
        "pool:next"
    );
    let wrong = [("host", "x"), ("x-canary", "2"), ("x-debug", "yes")];
    assert_eq!(outcome(router, Method::GET, "/canary", &wrong), "pool:app");
    let missing = [("host", "x"), ("x-canary", "1")];
    assert_eq!(
        outcome(router, Method::GET, "/canary", &missing),
        "pool:app"
    );
    assert_eq!(get(router, "x", "/internal/a"), "respond:403");
}

#[test]
fn redirects_fill_in_host_path_and_query() {
    let snapshot = snapshot(ROUTES, true);
    let router = router(&snapshot);
    assert_eq!(
        get(router, "shop.example:8443", "/old/a/b?q=1&r=2"),
        "redirect:308:https://shop.example/new/a/b?q=1&r=2"
    );
    assert_eq!(
        get(router, "shop.example", "/old"),
        "redirect:308:https://shop.example/new/"
    );
}

#[test]
fn the_first_match_in_file_order_wins_across_host_kinds() {
    let routes = r#"
[[listeners.routes]]
path_prefix = "/any"
pool = "shop"

[[listeners.routes]]
host = "a.example.com"
pool = "api"

[[listeners.routes]]
host = "*.example.com"
pool = "next"
"#;
    let snapshot = snapshot(routes, false);
    let router = router(&snapshot);
    assert_eq!(
        get(router, "a.example.com", "/any/x"),
        "pool:shop",
        "earlier any-host route"
    );
    assert_eq!(get(router, "a.example.com", "/x"), "pool:api");
    assert_eq!(get(router, "b.example.com", "/x"), "pool:next");
    assert_eq!(get(router, "example.com", "/x"), "404", "no fallback pool");
    assert_eq!(
        outcome(router, Method::GET, "/x", &[]),
        "404",
        "no host at all"
    );
}

#[test]
fn a_split_sends_exact_shares_in_smooth_order() {
    let routes = r#"
[[listeners.routes]]
split = [{ pool = "shop", weight = 3 }, { pool = "next", weight = 1 }]
"#;
    let snapshot = snapshot(routes, false);
    let router = router(&snapshot);
    let picks: Vec<String> = (0..8).map(|_| get(router, "x", "/")).collect();
    let next = picks.iter().filter(|pick| *pick == "pool:next").count();
    assert_eq!(next, 2, "{picks:?}");
    assert_ne!(
        picks[0..4],
        ["pool:shop"; 4],
        "smooth, not three in a row then one"
    );
}

#[test]
fn strip_prefix_and_set_headers_rewrite_the_forwarded_request() {
    let routes = r#"
[[listeners.routes]]
path_prefix = "/v1/"
strip_prefix = true
set_request_headers = { "x-route" = "v1" }
pool = "api"
"#;
    let snapshot = snapshot(routes, true);
    let router = router(&snapshot);
    for (path, forwarded) in [
        ("/v1/users?id=3", "/users?id=3"),
        ("/v1", "/"),
        ("/v1/", "/"),
    ] {
        let mut request = http::Request::get(path)
            .header("host", "x")
            .header("x-route", "client")
            .body(())
            .expect("request");
        let Some(Target::Forward {
            route: Some(route), ..
        }) = router.route(request.method(), request.uri(), request.headers())
        else {
            panic!("{path} not routed");
        };
        route.rewrite(&mut request);
        assert_eq!(request.uri().to_string(), forwarded);
        assert_eq!(request.headers()["x-route"], "v1");
        assert_eq!(request.headers().get_all("x-route").iter().count(), 1);
    }
}
