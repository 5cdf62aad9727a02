//! Validation of `protocol = "tcp"` listeners and pools: what is accepted, and errors that name
//! the offending key.

use super::*;

/// The error text of an invalid config (panics if it is valid).
fn config_error(text: &str) -> String {
    match Config::parse("l4.toml", text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn a_full_tcp_config_is_accepted() {
    let text = tcp_config(
        &[
            "127.0.0.1:5433".parse().expect("addr"),
            "127.0.0.1:5434".parse().expect("addr"),
        ],
        "proxy_protocol = true",
        "algorithm = \"least_connections\"\n\
         connect_timeout = \"250ms\"\n\
         retries = 1\n\
         idle_timeout = \"90s\"\n\
         slow_start = \"5s\"\n\
         fail_open = true\n\
         proxy_protocol = \"v2\"\n\
         [pools.app.health_check]\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         jitter = \"0s\"\n\
         healthy_threshold = 1\n\
         unhealthy_threshold = 2\n\
         [pools.app.passive]\n\
         consecutive_failures = 3\n\
         ejection_time = \"2s\"",
    );
    let config = Config::parse("l4.toml", &text)
        .unwrap_or_else(|err| panic!("valid tcp config refused:\n{err}\n{text}"));
    let listener = &config.listeners[0];
    assert_eq!(listener.protocol, fulcrum::config::Protocol::Tcp);
    assert!(listener.accept_proxy_protocol);
    let pool = config.pool("app").expect("pool app");
    assert_eq!(pool.protocol, fulcrum::config::Protocol::Tcp);
    assert_eq!(pool.algorithm, fulcrum::config::Algorithm::LeastConnections);
    assert_eq!(pool.connect_timeout, Duration::from_millis(250));
    assert_eq!(pool.retries, 1);
    assert_eq!(pool.idle_timeout, Duration::from_secs(90));
    assert_eq!(pool.slow_start, Some(Duration::from_secs(5)));
    assert!(pool.fail_open);
    assert_eq!(
        pool.proxy_protocol,
        Some(fulcrum::config::ProxyProtocol::V2)
    );
    let check = pool.health_check.as_ref().expect("health check");
    // A tcp pool's check defaults to a TCP connect.
    assert_eq!(check.kind, fulcrum::config::CheckKind::Tcp);
    assert_eq!(check.interval, Duration::from_secs(1));
    assert_eq!(check.jitter, Duration::ZERO);
    assert_eq!(pool.passive.consecutive_failures, 3);

    // The tcp idle timeout defaults to an hour.
    let text = tcp_config(&["127.0.0.1:5433".parse().expect("addr")], "", "");
    let config = Config::parse("l4.toml", &text).expect("minimal tcp config");
    assert_eq!(
        config.pool("app").expect("pool").idle_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(config.pool("app").expect("pool").proxy_protocol, None);
    assert!(!config.listeners[0].accept_proxy_protocol);
}

#[test]
fn http_only_keys_on_a_tcp_pool_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "", "request_timeout = \"5s\""));
    assert!(
        err.contains("pools.app.request_timeout") && err.contains("tcp"),
        "{err}"
    );

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.health_check]\npath = \"/health\"",
    ));
    assert!(err.contains("pools.app.health_check.path"), "{err}");

    let err = config_error(&tcp_config(&[backend], "", "max_idle_per_backend = 4"));
    assert!(err.contains("pools.app.max_idle_per_backend"), "{err}");

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.health_check]\nkind = \"http\"",
    ));
    assert!(err.contains("pools.app.health_check.kind"), "{err}");

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.passive]\nfailure_statuses = [503]",
    ));
    assert!(err.contains("pools.app.passive.failure_statuses"), "{err}");
}

#[test]
fn http_only_keys_on_a_tcp_listener_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "max_header_bytes = 16384", ""));
    assert!(
        err.contains("listeners[0].max_header_bytes") && err.contains("tcp"),
        "{err}"
    );
    for key in ["header_read_timeout = \"5s\"", "idle_timeout = \"5s\""] {
        let err = config_error(&tcp_config(&[backend], key, ""));
        let name = key.split(' ').next().expect("key name");
        assert!(err.contains(&format!("listeners[0].{name}")), "{err}");
    }
}

#[test]
fn tcp_only_keys_on_http_are_errors_naming_the_key() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\
                proxy_protocol = true\n\n\
                [pools.app]\nbackends = [\"127.0.0.1:5433\"]\nproxy_protocol = \"v1\"\n";
    let err = config_error(text);
    assert!(err.contains("listeners[0].proxy_protocol"), "{err}");
    assert!(err.contains("pools.app.proxy_protocol"), "{err}");
}

#[test]
fn bad_tcp_values_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "", "proxy_protocol = \"v3\""));
    println!("proxy_protocol = \"v3\": {err}");
    assert!(err.contains("proxy_protocol"), "{err}");
    let err = config_error(&tcp_config(&[backend], "proxy_protocol = \"yes\"", ""));
    println!("listener proxy_protocol = \"yes\": {err}");
    assert!(err.contains("proxy_protocol"), "{err}");
    let err = config_error(&tcp_config(&[backend], "", "idle_timeout = \"0s\""));
    assert!(err.contains("pools.app.idle_timeout"), "{err}");
    let text = tcp_config(&[backend], "", "").replace("\"tcp\"", "\"udp\"");
    let err = config_error(&text);
    println!("protocol = \"udp\": {err}");
    assert!(err.contains("protocol"), "{err}");
    let err = config_error(&tcp_config(
        &[backend],
        "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
        "",
    ));
    assert!(err.contains("listeners[0].tls"), "{err}");
}

#[test]
fn a_pool_shared_by_http_and_tcp_listeners_is_an_error() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                [[listeners]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
                pool = \"app\"\n\n\
                [pools.app]\nbackends = [\"127.0.0.1:5433\"]\n";
    let err = config_error(text);
    assert!(err.contains("listeners[1].pool"), "{err}");
    assert!(err.contains("\"app\""), "{err}");
    assert!(err.contains("http") && err.contains("tcp"), "{err}");
}
