//! One test per validation rule; each asserts the message names the line, column and key.

use std::time::Duration;

use crate::config::{Algorithm, Config, ConfigError};

const FILE: &str = "config/test.toml";

/// A valid config; tests replace parts of it.
const VALID: &str = r#"
[admin]
listen = "127.0.0.1:9900"

[runtime]
worker_threads = 2
shutdown_timeout = "5s"

[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
protocol = "http"
pool = "app"

[pools.app]
algorithm = "least_connections"
backends = ["127.0.0.1:3001", { address = "127.0.0.1:3002", weight = 3 }]
connect_timeout = "250ms"
request_timeout = "2s"
retries = 1
"#;

fn errors(source: &str) -> Vec<String> {
    match Config::parse(FILE, source) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err @ ConfigError::Read { .. }) => panic!("unexpected {err}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
    }
}

/// Asserts exactly one error, at `line:column`, naming `key` and containing `text`.
fn assert_one_error(source: &str, line: usize, column: usize, key: &str, text: &str) {
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let expected_prefix = format!("{FILE}:{line}:{column}: {key}: ");
    assert!(
        errors[0].starts_with(&expected_prefix),
        "{:?} does not start with {expected_prefix:?}",
        errors[0]
    );
    assert!(errors[0].contains(text), "{:?} lacks {text:?}", errors[0]);
}

#[test]
fn valid_config_parses_with_every_key() {
    let config = Config::parse(FILE, VALID).expect("valid");
    assert_eq!(config.runtime.worker_threads, Some(2));
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(config.admin.expect("admin").listen.port(), 9900);
    let pool = &config.pools[0];
    assert_eq!(pool.algorithm, Algorithm::LeastConnections);
    assert_eq!(pool.backends.len(), 2);
    assert_eq!(pool.backends[1].weight.get(), 3);
    assert_eq!(pool.connect_timeout, Duration::from_millis(250));
    assert_eq!(pool.retries, 1);
    assert_eq!(config.listeners[0].pool.as_deref(), Some("app"));
}

#[test]
fn defaults_apply_when_keys_are_absent() {
    let source = r#"
[[listeners]]
name = "web"
listen = "127.0.0.1:0"
pool = "app"

[pools.app]
backends = ["127.0.0.1:3001"]
"#;
    let config = Config::parse(FILE, source).expect("valid");
    assert_eq!(config.runtime.worker_threads, None);
    assert_eq!(config.runtime.shutdown_timeout, Duration::from_secs(30));
    let pool = &config.pools[0];
    assert_eq!(pool.algorithm, Algorithm::RoundRobin);
    assert_eq!(pool.retries, 2);
    assert_eq!(pool.connect_timeout, Duration::from_secs(3));
    assert_eq!(pool.request_timeout, Duration::from_secs(30));
    assert_eq!(config.listeners[0].limits.max_header_bytes, 32 * 1024);
    assert!(config.admin.is_none());
}

#[test]
fn syntax_error_names_line_and_column() {
    let source = VALID.replace("retries = 1", "retries = = 1");
    let errors = errors(&source);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(&format!("{FILE}:20:")),
        "{}",
        errors[0]
    );
}

#[test]
fn unknown_key_is_rejected_with_its_path() {
    let source = VALID.replace("retries = 1", "retries = 1\nretry_budget = 3");
    assert_one_error(&source, 21, 1, "pools.app.retry_budget", "unknown field");
}

#[test]
fn unknown_key_in_listener_is_rejected() {
    let source = VALID.replace("protocol = \"http\"", "protocol = \"http\"\nbind = \"x\"");
    assert_one_error(&source, 13, 1, "listeners[0].bind", "unknown field");
}

#[test]
fn invalid_backend_address_names_the_element() {
    let source = VALID.replace("\"127.0.0.1:3001\"", "\"127.0.0.1:99999\"");
    assert_one_error(
        &source,
        17,
        13,
        "pools.app.backends[0]",
        "\"127.0.0.1:99999\" is not a valid address",
    );
}

#[test]
fn backend_without_port_is_rejected() {
    let source = VALID.replace("\"127.0.0.1:3001\"", "\"localhost\"");
    assert_one_error(&source, 17, 13, "pools.app.backends[0]", "host:port");
}

#[test]
fn listener_naming_missing_pool_lists_the_pools() {
    let source = VALID.replace("pool = \"app\"", "pool = \"api\"");
    assert_one_error(
        &source,
        13,
        8,
        "listeners[0].pool",
        "pool \"api\" does not exist (defined pools: app)",
    );
}

#[test]
fn duplicate_listener_names_are_rejected() {
    let source = format!(
        "{VALID}\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:8081\"\npool = \"app\"\n"
    );
    assert_one_error(
        &source,
        23,
        8,
        "listeners[1].name",
        "duplicate listener name",
    );
}

#[test]
fn duplicate_listener_addresses_are_rejected() {
    let source = format!(
        "{VALID}\n[[listeners]]\nname = \"api\"\nlisten = \"127.0.0.1:8080\"\npool = \"app\"\n"
    );
    assert_one_error(&source, 24, 10, "listeners[1].listen", "already used");
}

#[test]
fn listener_clashing_with_admin_is_rejected() {
    let source = VALID.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:9900\"");
    assert_one_error(&source, 11, 10, "listeners[0].listen", "already used");
}

#[test]
fn empty_backend_list_is_rejected() {
    let source = VALID.replace(
        "backends = [\"127.0.0.1:3001\", { address = \"127.0.0.1:3002\", weight = 3 }]",
        "backends = []",
    );
    assert_one_error(
        &source,
        17,
        12,
        "pools.app.backends",
        "at least one backend",
    );
}

#[test]
fn zero_weight_is_rejected() {
    let source = VALID.replace("weight = 3", "weight = 0");
    assert_one_error(
        &source,
        17,
        70,
        "pools.app.backends[1].weight",
        "0 is out of range",
    );
}

#[test]
fn duplicate_backend_is_rejected() {
    let source = VALID.replace("\"127.0.0.1:3002\"", "\"127.0.0.1:3001\"");
    assert_one_error(
        &source,
        17,
        43,
        "pools.app.backends[1].address",
        "listed twice",
    );
}

#[test]
fn unknown_algorithm_lists_the_valid_ones() {
    let source = VALID.replace("\"least_connections\"", "\"fastest\"");
    assert_one_error(
        &source,
        16,
        13,
        "pools.app.algorithm",
        "expected one of `round_robin`, `least_connections`",
    );
}

#[test]
fn unknown_protocol_lists_the_valid_ones() {
    let source = VALID.replace("protocol = \"http\"", "protocol = \"smtp\"");
    assert_one_error(&source, 12, 12, "listeners[0].protocol", "`http`");
}

#[test]
fn bad_duration_is_rejected() {
    let source = VALID.replace("\"250ms\"", "\"quick\"");
    assert_one_error(
        &source,
        18,
        19,
        "pools.app.connect_timeout",
        "\"quick\" is not a valid duration",
    );
}

#[test]
fn zero_duration_is_rejected() {
    let source = VALID.replace("\"2s\"", "\"0s\"");
    assert_one_error(
        &source,
        19,
        19,
        "pools.app.request_timeout",
        "greater than zero",
    );
}

/// `Instant::now() + duration` panics on overflow: a duration past the one-year bound never
/// reaches the runtime.
#[test]
fn durations_longer_than_a_year_are_rejected() {
    let source = VALID.replace("\"2s\"", "\"500000000y\"");
    assert_one_error(
        &source,
        19,
        19,
        "pools.app.request_timeout",
        "longer than the maximum of 365 days",
    );
    let source = VALID.replace("\"2s\"", "\"366d\"");
    assert_one_error(&source, 19, 19, "pools.app.request_timeout", "365 days");
    let source = VALID.replace("\"2s\"", "\"365d\"");
    let config = Config::parse(FILE, &source).expect("one year is allowed");
    assert_eq!(
        config.pools[0].request_timeout,
        Duration::from_secs(365 * 24 * 3600)
    );
}

#[test]
fn out_of_range_numbers_are_rejected() {
    let source = VALID.replace("retries = 1", "retries = 99");
    assert_one_error(&source, 20, 11, "pools.app.retries", "out of range");
    let source = VALID.replace("worker_threads = 2", "worker_threads = 0");
    assert_one_error(&source, 6, 18, "runtime.worker_threads", "out of range");
}

#[test]
fn wrong_type_names_the_key() {
    let source = VALID.replace("retries = 1", "retries = \"one\"");
    assert_one_error(&source, 20, 11, "pools.app.retries", "invalid type");
}

#[test]
fn missing_listeners_are_rejected() {
    let source = "[pools.app]\nbackends = [\"127.0.0.1:1\"]\n";
    assert_one_error(source, 1, 1, "listeners", "at least one [[listeners]]");
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let source = VALID
        .replace("\"250ms\"", "\"quick\"")
        .replace("weight = 3", "weight = 0")
        .replace("pool = \"app\"", "pool = \"nope\"");
    let errors = errors(&source);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    // Sorted by position.
    assert!(errors[0].contains("listeners[0].pool"));
    assert!(errors[1].contains("backends[1].weight"));
    assert!(errors[2].contains("connect_timeout"));
}

#[test]
fn upstream_tls_and_http2_are_http_pool_keys() {
    let source = VALID.replace("retries = 1", "retries = 1\nhttp2 = true\n[pools.app.tls]\nserver_name = \"app.internal\"\ninsecure_skip_verify = true");
    let config = Config::parse(FILE, &source).expect("valid");
    assert!(config.pools[0].http2);
    let tls = config.pools[0].upstream_tls.as_ref().expect("tls");
    assert_eq!(tls.server_name.as_deref(), Some("app.internal"));
    assert!(tls.insecure_skip_verify);

    let source = VALID.replace(
        "retries = 1",
        "retries = 1\n[pools.app.tls]\nca = \"/nonexistent/ca.pem\"",
    );
    assert_one_error(&source, 22, 6, "pools.app.tls.ca", "cannot read");
}

#[test]
fn connection_limits_parse_with_defaults_and_need_a_cap_for_the_queue() {
    let source = VALID.replace(
        "retries = 1",
        "retries = 1\nmax_connections = 50\nmax_queue = 10\nqueue_timeout = \"2s\"",
    );
    let source = source.replace(
        "protocol = \"http\"",
        "protocol = \"http\"\nmax_connections = 10000",
    );
    let config = Config::parse(FILE, &source).expect("valid");
    assert_eq!(
        config.listeners[0].max_connections.map(|n| n.get()),
        Some(10_000)
    );
    let queue = config.pools[0].queue;
    assert_eq!(queue.max_connections.map(|n| n.get()), Some(50));
    assert_eq!(
        (queue.max_queue, queue.timeout),
        (10, Duration::from_secs(2))
    );

    let config = Config::parse(FILE, VALID).expect("valid");
    assert_eq!(config.listeners[0].max_connections, None);
    let queue = config.pools[0].queue;
    assert_eq!(queue.max_connections, None);
    assert_eq!(
        (queue.max_queue, queue.timeout),
        (1024, Duration::from_secs(5))
    );

    let source = VALID.replace("retries = 1", "retries = 1\nqueue_timeout = \"2s\"");
    assert_one_error(
        &source,
        21,
        17,
        "pools.app.queue_timeout",
        "does not apply to pools without max_connections",
    );
    let source = VALID.replace("retries = 1", "retries = 1\nmax_connections = 0");
    assert_one_error(&source, 21, 19, "pools.app.max_connections", "out of range");
    let source = VALID.replace(
        "protocol = \"http\"",
        "protocol = \"http\"\nmax_connections = -1",
    );
    assert_one_error(
        &source,
        13,
        19,
        "listeners[0].max_connections",
        "out of range",
    );
}

#[test]
fn a_backend_may_set_its_own_cap_which_also_allows_the_queue_keys() {
    let source = VALID.replace(
        "{ address = \"127.0.0.1:3002\", weight = 3 }",
        "{ address = \"127.0.0.1:3002\", weight = 3, max_connections = 8 }",
    );
    let source = source.replace("retries = 1", "retries = 1\nqueue_timeout = \"1s\"");
    let config = Config::parse(FILE, &source).expect("valid");
    let pool = &config.pools[0];
    assert_eq!(pool.backends[0].max_connections, None);
    assert_eq!(pool.backends[1].max_connections.map(|n| n.get()), Some(8));
    assert_eq!(pool.queue.max_connections, None);
    assert_eq!(pool.queue.timeout, Duration::from_secs(1));

    let old = Config::parse(FILE, VALID).expect("valid");
    assert_eq!(
        crate::config::diff(&old, &config),
        ["pool app: 127.0.0.1:3002 max_connections none→8, queue_timeout 5s→1s"]
    );

    let source = VALID.replace("weight = 3 }", "weight = 3, max_connections = 0 }");
    assert_one_error(
        &source,
        17,
        91,
        "pools.app.backends[1].max_connections",
        "out of range",
    );
}

mod properties {
    use super::*;
    use crate::testing::proptest_config;
    use proptest::prelude::*;

    /// Pieces that make a config interesting to break: keys, values of every type, brackets,
    /// quotes, huge numbers and durations.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "\n",
                " = ",
                "\"",
                "[",
                "]",
                "{",
                "}",
                ",",
                ".",
                "#",
                "'''",
                "\"\"\"",
                "[[listeners]]\n",
                "[pools.app]\n",
                "[pools.x.health_check]\n",
                "request_timeout = \"500000000y\"\n",
                "retries = 99999999999999999999\n",
                "weight = -1\n",
                "backends = []\n",
                "listen = \"[::1]:0\"\n",
                "interval = \"1ns\"\n",
                "max_connections = 0\n",
                "\u{feff}",
                "é",
                "\t",
                "address = \"127.0.0.1:99999\"\n",
                "pool = \"nope\"\n",
                "1e999",
                "-0",
                "true",
                "1979-05-27T07:32:00Z",
                "inf",
                "nan",
            ])
            .prop_map(str::to_owned),
            "[a-z_]{1,12}",
            "[0-9]{1,25}",
            (1usize..60).prop_map(|depth| format!(
                "x = {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            )),
        ]
    }

    /// The valid config with a few pieces spliced in at char boundaries.
    fn mutated() -> impl Strategy<Value = String> {
        let edit = (any::<prop::sample::Index>(), 0usize..8, piece());
        prop::collection::vec(edit, 1..6).prop_map(|edits| {
            let mut text = VALID.to_owned();
            for (at, cut, piece) in edits {
                let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
                let start = starts
                    .get(at.index(starts.len().max(1)))
                    .copied()
                    .unwrap_or(0);
                let end = text[start..]
                    .char_indices()
                    .nth(cut)
                    .map_or(text.len(), |(i, _)| start + i);
                text.replace_range(start..end, &piece);
            }
            text
        })
    }

    fn check(source: &str) -> Result<(), TestCaseError> {
        match Config::parse(FILE, source) {
            Ok(config) => {
                for pool in &config.pools {
                    prop_assert!(pool.request_timeout <= Duration::from_secs(365 * 86_400));
                }
            }
            Err(ConfigError::Read { .. }) => prop_assert!(false, "parse never reads a file"),
            Err(ConfigError::Invalid(problems)) => {
                prop_assert!(!problems.is_empty());
                let lines = source.lines().count() + 1;
                for problem in &problems {
                    prop_assert_eq!(&problem.file, FILE);
                    prop_assert!(problem.line >= 1 && problem.line <= lines, "{}", problem);
                    prop_assert!(problem.column >= 1, "{}", problem);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(proptest_config(256))]

        /// Never panics; every error has a position inside the file.
        #[test]
        fn parse_never_panics_and_every_error_has_a_position(source in mutated()) {
            check(&source)?;
        }

        #[test]
        fn parse_survives_arbitrary_text(source in "\\PC{0,200}") {
            check(&source)?;
        }
    }
}

#[test]
fn try_timeout_is_off_by_default_and_a_positive_duration_when_set() {
    let config = Config::parse(FILE, VALID).expect("valid");
    assert_eq!(config.pools[0].try_timeout, None);
    let source = VALID.replace("retries = 1", "retries = 1\ntry_timeout = \"200ms\"");
    let config = Config::parse(FILE, &source).expect("valid");
    assert_eq!(
        config.pools[0].try_timeout,
        Some(Duration::from_millis(200))
    );
    let source = VALID.replace("retries = 1", "retries = 1\ntry_timeout = \"0s\"");
    assert_one_error(
        &source,
        21,
        15,
        "pools.app.try_timeout",
        "greater than zero",
    );
    let source = VALID.replace("retries = 1", "retries = 1\ntry_timeout = \"soon\"");
    assert_one_error(
        &source,
        21,
        15,
        "pools.app.try_timeout",
        "not a valid duration",
    );
}
