//! Validation of `hash_key`, `hash_balance_factor` and `[pools.NAME.sticky]`: each rule with
//! its position and key.

use std::time::Duration;

use crate::config::{Algorithm, Config, ConfigError, HashKey};

const FILE: &str = "balancing.toml";

/// A listener of `protocol` in front of pool `app`, whose table gets `pool` appended.
fn with_pool(protocol: &str, pool: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"{protocol}\"\npool = \"app\"\n\n\
         [pools.app]\nbackends = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\n{pool}\n"
    )
}

/// The line `pool`'s first line is on in [`with_pool`]'s file.
const POOL_LINE: usize = 9;

fn problems(source: &str) -> Vec<String> {
    match Config::parse(FILE, source) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(err) => panic!("unexpected {err}"),
    }
}

fn assert_one(source: &str, line: usize, column: usize, key: &str, text: &str) {
    let problems = problems(source);
    assert_eq!(problems.len(), 1, "{problems:#?}");
    let prefix = format!("{FILE}:{line}:{column}: {key}: ");
    assert!(
        problems[0].starts_with(&prefix),
        "{:?} lacks {prefix:?}",
        problems[0]
    );
    assert!(
        problems[0].contains(text),
        "{:?} lacks {text:?}",
        problems[0]
    );
}

#[test]
fn consistent_hash_parses_every_key_form_and_the_factor() {
    for (written, expected) in [
        (
            "header:X-User-Id",
            HashKey::Header(http::HeaderName::from_static("x-user-id")),
        ),
        ("cookie:uid", HashKey::Cookie("uid".into())),
        ("client_ip", HashKey::ClientIp),
        ("path", HashKey::Path),
        ("uri", HashKey::Uri),
    ] {
        let source = with_pool(
            "http",
            &format!(
                "algorithm = \"consistent_hash\"\nhash_key = \"{written}\"\nhash_balance_factor = 125"
            ),
        );
        let config = Config::parse(FILE, &source).expect("valid");
        let pool = &config.pools[0];
        assert_eq!(pool.algorithm, Algorithm::ConsistentHash);
        assert_eq!(pool.hash_key, Some(expected));
        assert_eq!(pool.hash_balance_factor, 125);
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }
}

#[test]
fn an_http_consistent_hash_pool_needs_a_hash_key() {
    let source = with_pool("http", "algorithm = \"consistent_hash\"");
    assert_one(
        &source,
        POOL_LINE,
        13,
        "pools.app.hash_key",
        "consistent_hash needs hash_key",
    );
}

#[test]
fn a_hash_key_of_no_known_form_is_rejected() {
    for (key, text) in [
        ("\"host\"", "is not a hash key"),
        ("\"query:q\"", "is not a hash key"),
        ("\"header:bad name\"", "not a valid header name"),
        ("\"cookie:a=b\"", "not a valid cookie name"),
        ("\"cookie:\"", "not a valid cookie name"),
    ] {
        let source = with_pool(
            "http",
            &format!("algorithm = \"consistent_hash\"\nhash_key = {key}"),
        );
        assert_one(&source, POOL_LINE + 1, 12, "pools.app.hash_key", text);
    }
}

#[test]
fn the_balance_factor_is_zero_or_100_to_1000() {
    for factor in [0, 100, 1000] {
        let source = with_pool(
            "http",
            &format!(
                "algorithm = \"consistent_hash\"\nhash_key = \"path\"\nhash_balance_factor = {factor}"
            ),
        );
        Config::parse(FILE, &source).expect("valid");
    }
    for factor in [-1, 1, 99, 1001] {
        let source = with_pool(
            "http",
            &format!(
                "algorithm = \"consistent_hash\"\nhash_key = \"path\"\nhash_balance_factor = {factor}"
            ),
        );
        assert_one(
            &source,
            POOL_LINE + 2,
            23,
            "pools.app.hash_balance_factor",
            "out of range",
        );
    }
}

#[test]
fn hash_keys_on_another_algorithm_warn_and_are_unused() {
    let source = with_pool("http", "hash_key = \"path\"\nhash_balance_factor = 150");
    let config = Config::parse(FILE, &source).expect("valid");
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with(&format!("{FILE}:{POOL_LINE}:12: pools.app.hash_key: ")));
    assert!(warnings[1].contains("pools.app.hash_balance_factor: has no effect unless"));
    assert_eq!(config.pools[0].hash_key, None);
}

#[test]
fn tcp_pools_hash_the_client_ip_only_and_take_no_sticky_cookie() {
    let source = with_pool("tcp", "algorithm = \"consistent_hash\"");
    let config = Config::parse(FILE, &source).expect("valid");
    assert_eq!(config.pools[0].hash_key, Some(HashKey::ClientIp));
    let source = with_pool(
        "tcp",
        "algorithm = \"consistent_hash\"\nhash_key = \"client_ip\"",
    );
    Config::parse(FILE, &source).expect("valid");
    let source = with_pool(
        "tcp",
        "algorithm = \"consistent_hash\"\nhash_key = \"path\"",
    );
    assert_one(
        &source,
        POOL_LINE + 1,
        12,
        "pools.app.hash_key",
        "tcp pools can only hash \"client_ip\"",
    );
    let source = with_pool("tcp", "[pools.app.sticky]\ncookie = \"s\"");
    assert_one(
        &source,
        POOL_LINE,
        1,
        "pools.app.sticky",
        "does not apply to tcp pools",
    );
}

#[test]
fn sticky_parses_with_a_default_cookie_and_a_session_ttl() {
    let source = with_pool("http", "[pools.app.sticky]");
    let config = Config::parse(FILE, &source).expect("valid");
    let sticky = config.pools[0].sticky.as_ref().expect("sticky");
    assert_eq!(&*sticky.cookie, "fulcrum_sticky");
    assert_eq!(sticky.ttl, None);
    assert_eq!(sticky.secret, None);
    let source = with_pool(
        "http",
        "[pools.app.sticky]\ncookie = \"srv\"\nttl = \"1h\"\nsecret = \"correct horse\"",
    );
    let config = Config::parse(FILE, &source).expect("valid");
    let sticky = config.pools[0].sticky.as_ref().expect("sticky");
    assert_eq!(
        (&*sticky.cookie, sticky.ttl),
        ("srv", Some(Duration::from_secs(3600)))
    );
    assert!(
        !format!("{sticky:?}").contains("horse"),
        "Debug hides the secret"
    );
}

#[test]
fn sticky_rejects_a_bad_cookie_name_ttl_or_empty_secret() {
    let sticky = |body: &str| with_pool("http", &format!("[pools.app.sticky]\n{body}"));
    assert_one(
        &sticky("cookie = \"my cookie\""),
        POOL_LINE + 1,
        10,
        "pools.app.sticky.cookie",
        "not a valid cookie name",
    );
    assert_one(
        &sticky("cookie = \"\""),
        POOL_LINE + 1,
        10,
        "pools.app.sticky.cookie",
        "not a valid cookie name",
    );
    assert_one(
        &sticky("ttl = \"500ms\""),
        POOL_LINE + 1,
        7,
        "pools.app.sticky.ttl",
        "at least 1s",
    );
    assert_one(
        &sticky("ttl = \"0s\""),
        POOL_LINE + 1,
        7,
        "pools.app.sticky.ttl",
        "greater than zero",
    );
    assert_one(
        &sticky("ttl = \"400d\""),
        POOL_LINE + 1,
        7,
        "pools.app.sticky.ttl",
        "365 days",
    );
    assert_one(
        &sticky("secret = \"\""),
        POOL_LINE + 1,
        10,
        "pools.app.sticky.secret",
        "must not be empty",
    );
    assert_one(
        &sticky("path = \"/\""),
        POOL_LINE + 1,
        1,
        "pools.app.sticky.path",
        "unknown",
    );
}
