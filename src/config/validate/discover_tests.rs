//! `[dns]` and `discover`: what parses, and each rule's error at its line, column and key.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Config, ConfigError, DiscoverTarget};

const FILE: &str = "config/discover.toml";

/// One listener on pool `app`, then `rest` (from line 6 on).
fn source(rest: &str) -> String {
    format!("[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n{rest}")
}

fn one_error(rest: &str) -> String {
    match Config::parse(FILE, &source(rest)) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:#?}");
            problems[0].to_string()
        }
        Err(err) => panic!("unexpected {err}"),
    }
}

fn assert_error(rest: &str, at: &str, text: &str) {
    let error = one_error(rest);
    assert!(
        error.starts_with(&format!("{FILE}:{at}: ")),
        "{error:?} is not at {at}"
    );
    assert!(error.contains(text), "{error:?} lacks {text:?}");
}

#[test]
fn dns_servers_take_a_default_port_and_discover_pools_need_no_backends() {
    let config = Config::parse(
        FILE,
        &source(
            "[dns]\nservers = [\"127.0.0.1:5353\", \"10.0.0.2\", \"[::1]:54\", \"::2\"]\ntimeout = \"500ms\"\n\n\
             [pools.app]\ndiscover = { name = \"app.service.consul\", port = 8080, refresh = \"250ms\" }\n\n\
             [pools.srv]\nbackends = [\"127.0.0.1:3001\"]\ndiscover = { srv = \"_http._tcp.app.service.consul.\" }\n",
        ),
    )
    .expect("valid");
    let servers: Vec<SocketAddr> = ["127.0.0.1:5353", "10.0.0.2:53", "[::1]:54", "[::2]:53"]
        .iter()
        .map(|s| s.parse().expect("an address"))
        .collect();
    assert_eq!(config.dns.servers, servers);
    assert_eq!(config.dns.timeout, Duration::from_millis(500));
    let app = config.pool("app").expect("app");
    assert!(app.backends.is_empty());
    let discover = app.discover.as_ref().expect("discover");
    assert_eq!(
        discover.target,
        DiscoverTarget::Name {
            name: "app.service.consul".into(),
            port: 8080
        }
    );
    assert_eq!(discover.refresh, Duration::from_millis(250));
    let srv = config.pool("srv").expect("srv");
    assert_eq!(srv.backends.len(), 1);
    let discover = srv.discover.as_ref().expect("discover");
    assert_eq!(
        discover.target,
        DiscoverTarget::Srv("_http._tcp.app.service.consul.".into())
    );
    assert_eq!(discover.refresh, Duration::from_secs(5), "the default");
}

#[test]
fn without_dns_the_system_resolver_is_used() {
    let config = Config::parse(
        FILE,
        &source("[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n"),
    )
    .expect("valid");
    assert!(config.dns.servers.is_empty());
    assert_eq!(config.dns.timeout, Duration::from_secs(2));
}

#[test]
fn discover_needs_exactly_one_of_name_and_srv() {
    assert_error(
        "[pools.app]\ndiscover = { name = \"a.test\", port = 80, srv = \"_x._tcp.a.test\" }\n",
        "7:48",
        "pools.app.discover.srv: `name` and `srv` exclude each other",
    );
    assert_error(
        "[pools.app]\ndiscover = { refresh = \"1s\" }\n",
        "7:12",
        "pools.app.discover: needs exactly one of `name`",
    );
}

#[test]
fn name_needs_a_port_and_srv_must_not_have_one() {
    assert_error(
        "[pools.app]\ndiscover = { name = \"a.test\" }\n",
        "7:12",
        "pools.app.discover.port: `name` needs a `port`",
    );
    assert_error(
        "[pools.app]\ndiscover = { srv = \"_x._tcp.a.test\", port = 80 }\n",
        "7:45",
        "pools.app.discover.port: does not apply to `srv`",
    );
    assert_error(
        "[pools.app]\ndiscover = { name = \"a.test\", port = 0 }\n",
        "7:38",
        "pools.app.discover.port: 0 is out of range",
    );
}

#[test]
fn refresh_is_bounded_and_names_are_dns_names() {
    assert_error(
        "[pools.app]\ndiscover = { name = \"a.test\", port = 80, refresh = \"10ms\" }\n",
        "7:52",
        "pools.app.discover.refresh: \"10ms\" is out of range (must be from 100ms to 5m)",
    );
    assert_error(
        "[pools.app]\ndiscover = { name = \"a.test\", port = 80, refresh = \"1h\" }\n",
        "7:52",
        "out of range",
    );
    assert_error(
        "[pools.app]\ndiscover = { name = \"a..test\", port = 80 }\n",
        "7:21",
        "pools.app.discover.name: \"a..test\" is not a DNS name",
    );
}

#[test]
fn a_pool_needs_backends_or_discover() {
    assert_error(
        "[pools.app]\nretries = 1\n",
        "6:8",
        "pools.app: a pool needs `backends`, `discover`",
    );
    assert_error(
        "[pools.app]\nbackends = []\n",
        "7:12",
        "pools.app.backends: a pool needs at least one backend (or `discover`)",
    );
}

#[test]
fn dns_servers_are_socket_addresses() {
    assert_error(
        "[dns]\nservers = [\"127.0.0.1:53\", \"localhost:53\"]\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
        "7:28",
        "dns.servers[1]: \"localhost:53\" is not a name server address",
    );
    assert_error(
        "[dns]\nservers = []\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
        "6:1",
        "dns.servers: an empty list asks no one",
    );
    assert_error(
        "[dns]\ntimeout = \"0s\"\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
        "7:11",
        "dns.timeout: must be greater than zero",
    );
}
