//! The admin listener end to end: who may use it (token, Host, Origin, limits), `/metrics` as Prometheus text with counters that match the
//! traffic sent, `/status` JSON after known traffic and health checks, `/healthz` and `/readyz`,
//! and the dashboard rendered by a real headless Chromium (skipped when none is installed).
//!
//! The Prometheus recorder is process-global, so every test here shares it: each test only
//! asserts on series labelled with its own backends (their ports differ).

#[path = "../common/mod.rs"]
mod common;

mod access;
mod dashboard;
mod metrics;
mod status;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::backend::{Behaviour, TestBackend};
use common::balancer::{TestBalancer, admin_get};
use common::bounded;
use common::controlled::ControlledBackend;
use common::tcp::closed_port;
use http::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: samples plus the `# HELP` and `# TYPE` of each metric family.
#[derive(Debug, Default)]
struct Exposition {
    samples: Vec<Sample>,
    help: HashMap<String, String>,
    types: HashMap<String, String>,
}

impl Exposition {
    /// Parses Prometheus text format strictly enough to catch a malformed exposition: every
    /// non-comment line is `name{labels} value` or `name value`, and every sample belongs to a
    /// family with both `# HELP` and `# TYPE`.
    fn parse(text: &str) -> Result<Exposition, String> {
        let mut exposition = Exposition::default();
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            let bad = |why: &str| format!("line {number}: {why}: {line}");
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !valid_name(name) {
                    return Err(bad("bad HELP name"));
                }
                exposition.help.insert(name.to_owned(), help.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| bad("TYPE without a type"))?;
                if !valid_name(name) {
                    return Err(bad("bad TYPE name"));
                }
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(bad("unknown type"));
                }
                exposition.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            exposition.samples.push(parse_sample(line).map_err(bad)?);
        }
        for sample in &exposition.samples {
            let family = exposition.family(&sample.name);
            if !exposition.help.contains_key(family) {
                return Err(format!("series {} has no # HELP for {family}", sample.name));
            }
            if !exposition.types.contains_key(family) {
                return Err(format!("series {} has no # TYPE for {family}", sample.name));
            }
        }
        Ok(exposition)
    }

    /// The metric family a sample name belongs to (`x_bucket`, `x_sum`, `x_count` → `x` for
    /// histograms and summaries).
    fn family<'a>(&self, name: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix)
                && matches!(
                    self.types.get(base).map(String::as_str),
                    Some("histogram" | "summary")
                )
            {
                return base;
            }
        }
        name
    }

    /// The value of the one series called `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels.iter().all(|(key, value)| {
                        sample.labels.get(*key).map(String::as_str) == Some(*value)
                    })
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name} {labels:?} matches several series: {matching:#?}"
        );
        matching.first().map(|sample| sample.value)
    }

    /// Like [`Exposition::value`], panicking with the exposition when the series is missing.
    fn expect(&self, name: &str, labels: &[(&str, &str)], text: &str) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no series {name} {labels:?} in:\n{text}"))
    }

    /// The sum over every series called `name` with all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|sample| {
                sample.name == name
                    && labels.iter().all(|(key, value)| {
                        sample.labels.get(*key).map(String::as_str) == Some(*value)
                    })
            })
            .map(|sample| sample.value)
            .sum()
    }
}

/// Whether `name` is a valid Prometheus metric or label name.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// One sample line; the error says what is wrong with it.
fn parse_sample(line: &str) -> Result<Sample, &'static str> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err("bad metric name");
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        // name="value" pairs; values escape `\`, `"` and newlines with a backslash.
        let mut chars = inner.char_indices().peekable();
        loop {
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated labels");
            };
            if c == '}' {
                chars.next();
                rest = &inner[start + 1..];
                break;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if !valid_name(&key) {
                return Err("bad label name");
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => return Err("bad escape in label value"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                }
            }
            if labels.insert(key, value).is_some() {
                return Err("duplicate label");
            }
            if let Some(&(_, ',')) = chars.peek() {
                chars.next();
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other.parse().map_err(|_| "value is not a number")?,
    };
    // An optional timestamp, then nothing.
    if let Some(timestamp) = fields.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err("bad timestamp");
    }
    if fields.next().is_some() {
        return Err("trailing fields");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `/metrics`, checked to be well-formed Prometheus text.
async fn scrape(admin: SocketAddr) -> (Exposition, String) {
    let response = admin_get(admin, "/metrics").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let content_type = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "content type {content_type}"
    );
    let text = response.text();
    let exposition = Exposition::parse(&text)
        .unwrap_or_else(|err| panic!("/metrics is not Prometheus text: {err}\n{text}"));
    (exposition, text)
}

/// `/status` as JSON.
async fn status(admin: SocketAddr) -> Value {
    let response = admin_get(admin, "/status").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(
        response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok()),
        Some("application/json")
    );
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|err| panic!("/status is not JSON ({err}):\n{}", response.text()))
}

/// The backend at `address` in the `/status` document.
fn backend(status: &Value, address: SocketAddr) -> &Value {
    let address = address.to_string();
    status["pools"]
        .as_array()
        .expect("pools is an array")
        .iter()
        .flat_map(|pool| pool["backends"].as_array().expect("backends is an array"))
        .find(|backend| backend["address"] == address.as_str())
        .unwrap_or_else(|| panic!("backend {address} not in /status:\n{status:#}"))
}

/// Polls `/status` until `condition` holds for it, returning that document.
async fn status_until(admin: SocketAddr, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let document = status(admin).await;
        if condition(&document) {
            return document;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last /status:\n{document:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `count` GETs on one keep-alive connection, asserting each gets `expected`.
async fn send(balancer: &TestBalancer, count: usize, expected: StatusCode) {
    let mut client = balancer.client().await;
    for i in 0..count {
        let response = client
            .get("/")
            .await
            .unwrap_or_else(|err| panic!("request {i}: {err}"));
        assert_eq!(
            response.status,
            expected,
            "request {i}: {}",
            response.text()
        );
    }
}

/// An inline health-check table for `BalancerBuilder::pool("health_check", …)`.
const FAST_CHECKS: &str = "{ path = \"/health\", interval = \"100ms\", timeout = \"100ms\", jitter = \"0ms\", \
                           unhealthy_threshold = 1, healthy_threshold = 1 }";
