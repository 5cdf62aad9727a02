//! Validation of `peak_ewma`'s `ewma_decay` and `default_rtt`, and of `retry_budget`.

use std::time::Duration;

use crate::config::{Algorithm, Config, ConfigError, EwmaConfig, RetryBudgetConfig};

const FILE: &str = "pools.toml";

/// A listener in front of pool `app` with `keys` (TOML lines) added to the pool.
fn with_pool(keys: &str) -> String {
    format!(
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nbackends = [\"127.0.0.1:3001\", \"127.0.0.1:3002\"]\n{keys}\n"
    )
}

/// The single problem of an invalid file, as displayed.
fn problem(source: &str) -> String {
    match Config::parse(FILE, source) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(ConfigError::Invalid(problems)) => {
            assert_eq!(problems.len(), 1, "{problems:#?}");
            problems[0].to_string()
        }
        Err(err) => panic!("unexpected {err}"),
    }
}

fn assert_problem(source: &str, at: &str, text: &str) {
    let problem = problem(source);
    assert!(
        problem.starts_with(&format!("{FILE}:{at}: ")),
        "{problem:?} is not at {at}"
    );
    assert!(problem.contains(text), "{problem:?} lacks {text:?}");
}

#[test]
fn peak_ewma_parses_with_linkerds_defaults_and_no_budget() {
    let config = Config::parse(FILE, &with_pool("algorithm = \"peak_ewma\"")).expect("valid");
    let pool = &config.pools[0];
    assert_eq!(pool.algorithm, Algorithm::PeakEwma);
    assert_eq!(
        pool.ewma,
        EwmaConfig {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30)
        }
    );
    assert_eq!(pool.retry_budget, None);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn peak_ewma_settings_and_retry_budget_parse() {
    let source = with_pool(
        "algorithm = \"peak_ewma\"\newma_decay = \"2s\"\ndefault_rtt = \"500us\"\n\
         retry_budget = { percent = 25, min_per_second = 3 }",
    );
    let config = Config::parse(FILE, &source).expect("valid");
    let pool = &config.pools[0];
    assert_eq!(pool.ewma.decay, Duration::from_secs(2));
    assert_eq!(pool.ewma.default_rtt, Duration::from_micros(500));
    assert_eq!(
        pool.retry_budget,
        Some(RetryBudgetConfig {
            percent: 25,
            min_per_second: 3
        })
    );
}

#[test]
fn retry_budget_keys_default_to_linkerds_20_percent_and_10_per_second() {
    let config = Config::parse(FILE, &with_pool("retry_budget = {}")).expect("valid");
    assert_eq!(
        config.pools[0].retry_budget,
        Some(RetryBudgetConfig {
            percent: 20,
            min_per_second: 10
        })
    );
    let config = Config::parse(
        FILE,
        &with_pool("retry_budget = { percent = 0, min_per_second = 0 }"),
    )
    .expect("a budget of nothing turns retries off");
    assert!(config.pools[0].retry_budget.is_some());
}

#[test]
fn ewma_decay_must_be_from_10ms_to_an_hour() {
    let source = with_pool("algorithm = \"peak_ewma\"\newma_decay = \"5ms\"");
    assert_problem(
        &source,
        "9:14",
        "pools.app.ewma_decay: \"5ms\" is out of range (must be from 10ms to 1h)",
    );
    let source = with_pool("algorithm = \"peak_ewma\"\newma_decay = \"2h\"");
    assert_problem(&source, "9:14", "out of range");
    let source = with_pool("algorithm = \"peak_ewma\"\newma_decay = \"0s\"");
    assert_problem(
        &source,
        "9:14",
        "pools.app.ewma_decay: must be greater than zero",
    );
}

#[test]
fn default_rtt_must_be_positive_and_at_most_a_minute() {
    let source = with_pool("algorithm = \"peak_ewma\"\ndefault_rtt = \"0ms\"");
    assert_problem(
        &source,
        "9:15",
        "pools.app.default_rtt: must be greater than zero",
    );
    let source = with_pool("algorithm = \"peak_ewma\"\ndefault_rtt = \"2m\"");
    assert_problem(
        &source,
        "9:15",
        "pools.app.default_rtt: \"2m\" is out of range (must be from 1ns to 1m)",
    );
    let source = with_pool("algorithm = \"peak_ewma\"\ndefault_rtt = \"soon\"");
    assert_problem(&source, "9:15", "not a valid duration");
}

#[test]
fn ewma_keys_without_peak_ewma_are_warned_about() {
    let config = Config::parse(
        FILE,
        &with_pool("ewma_decay = \"5s\"\ndefault_rtt = \"10ms\""),
    )
    .expect("valid with warnings");
    let warnings: Vec<String> = config.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with(&format!(
            "{FILE}:8:14: pools.app.ewma_decay: only algorithm = \"peak_ewma\" uses it"
        )),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with(&format!("{FILE}:9:15: pools.app.default_rtt: only")),
        "{warnings:?}"
    );
}

#[test]
fn retry_budget_values_are_bounded() {
    let source = with_pool("retry_budget = { percent = 1001 }");
    assert_problem(
        &source,
        "8:28",
        "pools.app.retry_budget.percent: 1001 is out of range (must be from 0 to 1000)",
    );
    let source = with_pool("retry_budget = { percent = 20, min_per_second = -1 }");
    assert_problem(
        &source,
        "8:49",
        "pools.app.retry_budget.min_per_second: -1 is out of range",
    );
    let source = with_pool("retry_budget = { ratio = 20 }");
    assert_problem(&source, "8:18", "unknown field `ratio`");
}
