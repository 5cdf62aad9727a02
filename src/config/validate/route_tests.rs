//! Validation of `[[listeners.routes]]`: each rule with its position, and shadowed routes.

use crate::config::{Config, ConfigError, HostMatch, PathMatch, RouteAction};

const FILE: &str = "routes.toml";

/// A listener with the given routes (appended TOML) in front of pools `app` and `api`.
fn with_routes(routes: &str) -> String {
    format!(
        r#"[[listeners]]
name = "web"
listen = "127.0.0.1:0"
pool = "app"
{routes}
[pools.app]
backends = ["127.0.0.1:3001"]

[pools.api]
backends = ["127.0.0.1:3002"]
"#
    )
}

fn problems(source: &str) -> Vec<String> {
    match Config::parse(FILE, source) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(err) => panic!("unexpected {err}"),
    }
}

#[test]
fn routes_parse_into_their_conditions_and_actions() {
    let source = with_routes(
        r#"
[[listeners.routes]]
name = "api"
host = ["API.example.com", "*.api.example.com"]
path_prefix = "/v1/"
methods = ["GET", "POST"]
headers = { "x-canary" = "1", "x-debug" = "*" }
pool = "api"
strip_prefix = true
set_request_headers = { "x-route" = "api" }

[[listeners.routes]]
path = "/old"
redirect = { to = "https://example.com/new{path}{query}", status = 308 }

[[listeners.routes]]
path_prefix = "/shop"
split = [{ pool = "app", weight = 95 }, { pool = "api", weight = 5 }]

[[listeners.routes]]
path_prefix = "/internal/"
respond = { status = 404, body = "not here\n" }
"#,
    );
    let config = Config::parse(FILE, &source).expect("valid");
    let routes = &config.listeners[0].routes;
    assert_eq!(routes.len(), 4);
    assert_eq!(&*routes[0].name, "api");
    assert_eq!(
        routes[0].hosts,
        vec![
            HostMatch::Exact("api.example.com".into()),
            HostMatch::Wildcard("api.example.com".into())
        ]
    );
    assert_eq!(routes[0].path, Some(PathMatch::Prefix("/v1".into())));
    assert_eq!(routes[0].methods.len(), 2);
    assert_eq!(routes[0].headers.len(), 2);
    assert!(routes[0].strip_prefix);
    assert_eq!(routes[0].action, RouteAction::Pool("api".into()));
    assert_eq!(&*routes[1].name, "route-2");
    assert!(matches!(routes[1].action, RouteAction::Redirect { status, .. } if status == 308));
    assert!(matches!(&routes[2].action, RouteAction::Split(split) if split.len() == 2));
    assert!(
        matches!(&routes[3].action, RouteAction::Respond { status, body } if *status == 404 && &body[..] == b"not here\n")
    );
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn a_route_naming_an_unknown_pool_is_an_error_at_its_position() {
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npath_prefix = \"/a\"\npool = \"nope\"\n",
    ));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with(
            "routes.toml:8:8: listeners[0].routes[0].pool: pool \"nope\" does not exist"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_route_needs_exactly_one_action() {
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npath_prefix = \"/a\"\npool = \"app\"\nredirect = { to = \"/b\" }\n",
    ));
    assert!(
        errors[0].contains("set only one of pool, split, redirect or respond"),
        "{errors:?}"
    );
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npath_prefix = \"/a\"\n",
    ));
    assert!(
        errors[0].contains("needs one of pool, split, redirect or respond"),
        "{errors:?}"
    );
}

#[test]
fn strip_prefix_needs_a_path_prefix() {
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npath = \"/a\"\npool = \"app\"\nstrip_prefix = true\n",
    ));
    assert!(
        errors[0].starts_with(
            "routes.toml:9:16: listeners[0].routes[0].strip_prefix: needs a path_prefix"
        ),
        "{errors:?}"
    );
}

#[test]
fn a_wildcard_must_be_the_whole_first_label() {
    for host in [
        "a.*.example.com",
        "*example.com",
        "example.com:80",
        "https://x",
    ] {
        let errors = problems(&with_routes(&format!(
            "\n[[listeners.routes]]\nhost = \"{host}\"\npool = \"app\"\n"
        )));
        assert!(
            errors[0].contains("listeners[0].routes[0].host"),
            "{host}: {errors:?}"
        );
    }
}

#[test]
fn a_listener_needs_a_pool_or_routes() {
    let source = with_routes("").replace("pool = \"app\"\n", "");
    let errors = problems(&source);
    assert!(
        errors[0].contains("a listener needs a pool, or routes"),
        "{errors:?}"
    );
    let routed = source.replace(
        "listen = \"127.0.0.1:0\"\n",
        "listen = \"127.0.0.1:0\"\n[[listeners.routes]]\npool = \"api\"\n",
    );
    let config = Config::parse(FILE, &routed).expect("routes without a fallback pool");
    assert_eq!(config.listeners[0].pool, None);
}

#[test]
fn a_route_an_earlier_one_covers_is_a_warning_with_both_positions() {
    let source = with_routes(
        r#"
[[listeners.routes]]
path_prefix = "/api"
pool = "api"

[[listeners.routes]]
name = "users"
host = "example.com"
path_prefix = "/api/users"
methods = ["GET"]
pool = "app"

[[listeners.routes]]
path_prefix = "/apis"
pool = "app"
"#,
    );
    let config = Config::parse(FILE, &source).expect("shadowing is valid");
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].starts_with("routes.toml:10:1: listeners[0].routes[1]: route \"users\" can never match: route \"route-1\" (routes.toml:6:1)"), "{warnings:?}");
}

#[test]
fn tcp_listeners_route_by_sni_to_a_pool_only() {
    let tcp = |route: &str| {
        format!(
            "[[listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n\
             [[listeners.routes]]\n{route}\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n"
        )
    };
    let config = Config::parse(
        FILE,
        &tcp("sni = [\"db.example.com\", \"*.internal\"]\npool = \"app\""),
    )
    .expect("an sni route");
    assert_eq!(
        config.listeners[0].routes[0].hosts,
        vec![
            HostMatch::Exact("db.example.com".into()),
            HostMatch::Wildcard("internal".into())
        ]
    );
    let errors = problems(&tcp(
        "path_prefix = \"/a\"\nsni = \"a.example\"\npool = \"app\"",
    ));
    assert!(
        errors[0].contains(
            "listeners[0].routes[0].path_prefix: does not apply to routes of tcp listeners"
        ),
        "{errors:?}"
    );
    let errors = problems(&tcp("pool = \"app\""));
    assert!(errors[0].contains("needs sni"), "{errors:?}");
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\nsni = \"a.example\"\npool = \"app\"\n",
    ));
    assert!(
        errors[0].contains("listeners[0].routes[0].sni: applies to tcp listeners"),
        "{errors:?}"
    );
}

#[test]
fn a_mirror_needs_a_forwarding_route_and_bounded_settings() {
    let config = Config::parse(
        FILE,
        &with_routes(
            "\n[[listeners.routes]]\npool = \"app\"\nmirror = { pool = \"api\", percent = 10 }\n",
        ),
    )
    .expect("a mirror");
    let mirror = config.listeners[0].routes[0]
        .mirror
        .as_ref()
        .expect("mirror");
    assert_eq!(
        (
            &*mirror.pool,
            mirror.percent,
            mirror.max_in_flight,
            mirror.max_body
        ),
        ("api", 10, 64, 65536)
    );
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\nrespond = { status = 200 }\nmirror = { pool = \"api\" }\n",
    ));
    assert!(
        errors[0].contains("mirror: applies only to routes that forward"),
        "{errors:?}"
    );
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npool = \"app\"\nmirror = { pool = \"api\", percent = 0 }\n",
    ));
    assert!(
        errors[0].contains("listeners[0].routes[0].mirror.percent"),
        "{errors:?}"
    );
}

#[test]
fn a_route_may_override_request_timeout_and_retries_when_it_forwards() {
    let config = Config::parse(
        FILE,
        &with_routes(
            "\n[[listeners.routes]]\npool = \"app\"\nrequest_timeout = \"5s\"\nretries = 0\n",
        ),
    )
    .expect("overrides");
    let route = &config.listeners[0].routes[0];
    assert_eq!(
        route.request_timeout,
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(route.retries, Some(0));
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\npool = \"app\"\nretries = 17\n",
    ));
    assert!(
        errors[0].contains("listeners[0].routes[0].retries"),
        "{errors:?}"
    );
    let errors = problems(&with_routes(
        "\n[[listeners.routes]]\nrespond = { status = 200 }\nrequest_timeout = \"1s\"\n",
    ));
    assert!(
        errors[0].contains("request_timeout: applies only to routes that forward"),
        "{errors:?}"
    );
}
