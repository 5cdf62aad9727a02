//! The admin listener end to end: `/metrics` as Prometheus text with counters that match the
//! traffic sent, `/status` JSON after known traffic and health checks, `/healthz` and `/readyz`,
//! and the dashboard rendered by a real headless Chromium (skipped when none is installed).
//!
//! The Prometheus recorder is process-global, so every test here shares it: each test only
//! asserts on series labelled with its own backends (their ports differ).

mod common;

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

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

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

#[test]
fn the_exposition_parser_accepts_and_rejects() {
    let text = "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n\
                # HELP h Hist.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let exposition = Exposition::parse(text).expect("a valid exposition");
    assert_eq!(exposition.value("a_total", &[("y", "q\"z")]), Some(3.0));
    assert_eq!(exposition.value("h_count", &[]), Some(2.0));
    for bad in [
        "a_total 3\n",                                 // no HELP/TYPE
        "# HELP a A.\n# TYPE a counter\na{x=1} 3\n",   // unquoted label value
        "# HELP a A.\n# TYPE a counter\na{x=\"1\"}\n", // no value
        "# HELP a A.\n# TYPE a counter\na three\n",    // not a number
        "# HELP a A.\n# TYPE a counter\n9a 1\n",       // bad name
        "# HELP a A.\n# TYPE a counter\na 1 2 3\n",    // trailing field
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted: {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_client_timeouts_by_kind() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .listener("header_read_timeout", "\"300ms\"")
            .listener("idle_timeout", "\"30s\"")
            .start_with_admin()
            .await;
        let mut stream = common::tcp::raw_connect(balancer.addr()).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write a partial head");
        let mut buf = [0u8; 64];
        let read = common::within(
            Duration::from_secs(3),
            "the proxy to close the connection",
            stream.read(&mut buf),
        )
        .await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        let (metrics, text) = scrape(admin).await;
        let header_read = [("listener", "web"), ("kind", "header_read")];
        assert_eq!(
            metrics.expect("fulcrum_client_timeouts_total", &header_read, &text),
            1.0
        );
        let idle = [("listener", "web"), ("kind", "idle")];
        assert_eq!(
            metrics.expect("fulcrum_client_timeouts_total", &idle, &text),
            0.0
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_count_every_request_per_backend() {
    bounded(async {
        let backends = [
            TestBackend::spawn("a").await,
            TestBackend::spawn("b").await,
            TestBackend::spawn("c").await,
        ];
        let mut builder = TestBalancer::builder();
        for backend in &backends {
            builder = builder.backend(backend.addr());
        }
        let (mut balancer, admin) = builder.start_with_admin().await;

        send(&balancer, 30, StatusCode::OK).await;
        for backend in &backends {
            assert_eq!(backend.request_count(), 10, "round robin over three");
        }

        let (metrics, text) = scrape(admin).await;
        for backend in &backends {
            let address = backend.addr().to_string();
            let labels = [
                ("listener", "web"),
                ("pool", "app"),
                ("backend", address.as_str()),
            ];
            let ok = [labels.as_slice(), &[("code_class", "2xx")]].concat();
            assert_eq!(
                metrics.expect("fulcrum_requests_total", &ok, &text),
                10.0,
                "{address}"
            );
            for class in ["1xx", "3xx", "4xx", "5xx"] {
                let other = [labels.as_slice(), &[("code_class", class)]].concat();
                assert_eq!(
                    metrics
                        .value("fulcrum_requests_total", &other)
                        .unwrap_or(0.0),
                    0.0,
                    "{address} {class}"
                );
            }
            let series = [("pool", "app"), ("backend", address.as_str())];
            assert_eq!(
                metrics.expect("fulcrum_request_duration_seconds_count", &series, &text),
                10.0,
                "{address}"
            );
            let inf = [series.as_slice(), &[("le", "+Inf")]].concat();
            assert_eq!(
                metrics.expect("fulcrum_request_duration_seconds_bucket", &inf, &text),
                10.0,
                "{address}"
            );
            let sum = metrics.expect("fulcrum_request_duration_seconds_sum", &series, &text);
            assert!(sum > 0.0 && sum < 30.0, "{address}: duration sum {sum}");
            assert_eq!(
                metrics.value("fulcrum_upstream_connect_errors_total", &series),
                Some(0.0),
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_backend_up", &series, &text),
                1.0,
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_backend_in_flight", &series, &text),
                0.0,
                "{address}"
            );
            assert_eq!(
                backend.connection_count(),
                1,
                "{address}: one connection, reused"
            );
            assert_eq!(
                metrics.expect("fulcrum_upstream_connections_total", &series, &text),
                1.0,
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_upstream_idle_connections", &series, &text),
                1.0,
                "{address}: back in the pool once its response ended"
            );
        }
        assert_eq!(metrics.types["fulcrum_requests_total"], "counter");
        assert_eq!(
            metrics.types["fulcrum_request_duration_seconds"],
            "histogram"
        );
        assert_eq!(metrics.types["fulcrum_backend_up"], "gauge");
        // Every test's listener is called `web`; these only grow.
        assert!(metrics.expect("fulcrum_connections_total", &[("listener", "web")], &text) >= 1.0);
        for direction in ["in", "out"] {
            assert!(
                metrics.expect(
                    "fulcrum_bytes_total",
                    &[("listener", "web"), ("direction", direction)],
                    &text
                ) > 0.0,
                "bytes {direction}"
            );
        }
        assert!(
            metrics.expect(
                "fulcrum_config_last_reload_success_timestamp_seconds",
                &[],
                &text
            ) > 1.6e9
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_count_server_errors_and_failed_connects() {
    bounded(async {
        // A backend answering 500: passed through, counted as 5xx, not a connect error.
        let failing = TestBackend::with_behaviour(
            "broken",
            Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .await;
        let (mut erroring, admin) = TestBalancer::builder()
            .backend(failing.addr())
            .start_with_admin()
            .await;
        send(&erroring, 7, StatusCode::INTERNAL_SERVER_ERROR).await;

        // A pool whose only backend's port is closed: every request is one failed connect,
        // answered 503 (passive ejection off so each request really tries it).
        let closed = closed_port().await;
        let (mut refusing, _) = TestBalancer::builder()
            .backend(closed)
            .pool("retries", "0")
            .pool("passive", "{ consecutive_failures = 0 }")
            .start_with_admin()
            .await;
        send(&refusing, 4, StatusCode::SERVICE_UNAVAILABLE).await;

        let (metrics, text) = scrape(admin).await;
        let failing_addr = failing.addr().to_string();
        let failing_series = [("pool", "app"), ("backend", failing_addr.as_str())];
        let requests = |backend: &str, class: &str| {
            metrics
                .value(
                    "fulcrum_requests_total",
                    &[
                        ("listener", "web"),
                        ("pool", "app"),
                        ("backend", backend),
                        ("code_class", class),
                    ],
                )
                .unwrap_or(0.0)
        };
        assert_eq!(requests(&failing_addr, "5xx"), 7.0, "{text}");
        assert_eq!(requests(&failing_addr, "2xx"), 0.0);
        assert_eq!(
            metrics.expect(
                "fulcrum_request_duration_seconds_count",
                &failing_series,
                &text
            ),
            7.0
        );
        assert_eq!(
            metrics.expect(
                "fulcrum_upstream_connect_errors_total",
                &failing_series,
                &text
            ),
            0.0
        );

        let closed_addr = closed.to_string();
        let closed_series = [("pool", "app"), ("backend", closed_addr.as_str())];
        assert_eq!(
            metrics.expect(
                "fulcrum_upstream_connect_errors_total",
                &closed_series,
                &text
            ),
            4.0,
            "one failed connect per request"
        );
        assert_eq!(
            requests(&closed_addr, "5xx"),
            4.0,
            "answered 503 by fulcrum"
        );
        assert_eq!(
            metrics
                .value("fulcrum_request_duration_seconds_count", &closed_series)
                .unwrap_or(0.0),
            0.0,
            "no response head was ever timed"
        );
        erroring.stop().await;
        refusing.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// /status, /healthz, /readyz
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn status_reports_traffic_and_health() {
    bounded(async {
        // Controlled backends count probes (`/health`) apart from traffic.
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let closed = closed_port().await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(closed)
            .pool("health_check", FAST_CHECKS)
            .start_with_admin()
            .await;

        let healthz = admin_get(admin, "/healthz").await;
        assert_eq!(healthz.status, StatusCode::OK);
        assert_eq!(healthz.text(), "ok\n");

        // Every backend checked once: a and b up, the closed port down with its error.
        let document = status_until(admin, "first health checks", |status| {
            status["ready"] == true
                && backend(status, a.addr())["state"] == "healthy"
                && backend(status, b.addr())["state"] == "healthy"
                && backend(status, closed)["state"] == "unhealthy"
        })
        .await;
        assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
        let down = backend(&document, closed);
        let error = down["last_error"]
            .as_str()
            .unwrap_or_else(|| panic!("an unhealthy backend has a last_error:\n{document:#}"));
        assert!(!error.is_empty());

        // Traffic only goes to the healthy two, alternately.
        let mut client = balancer.client().await;
        for i in 0..20 {
            let response = client.get("/").await.expect("request");
            assert_eq!(response.status, StatusCode::OK, "request {i}");
        }
        assert_eq!((a.hit_count(), b.hit_count()), (10, 10));

        let document = status(admin).await;
        assert_eq!(document["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            document["uptime_seconds"]
                .as_f64()
                .is_some_and(|s| s >= 0.0)
        );
        assert_eq!(
            document["config_file"],
            Value::Null,
            "not started from a file"
        );
        assert_eq!(document["last_reload"], Value::Null, "no reload yet");
        assert_eq!(document["ready"], true);

        let listeners = document["listeners"].as_array().expect("listeners");
        assert_eq!(listeners.len(), 1, "{document:#}");
        let web = &listeners[0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["address"], balancer.addr().to_string());
        assert_eq!(web["protocol"], "http");
        assert_eq!(web["pool"], "app");
        assert_eq!(web["connections_active"], 1, "our client's connection");

        let pools = document["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 1);
        let pool = &pools[0];
        assert_eq!(pool["name"], "app");
        assert_eq!(pool["algorithm"], "round_robin");
        assert_eq!(pool["active_checks"], true);
        assert_eq!(pool["fail_open"], false);
        let addresses: Vec<&str> = pool["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|backend| backend["address"].as_str().expect("address"))
            .collect();
        assert_eq!(
            addresses,
            [
                a.addr().to_string(),
                b.addr().to_string(),
                closed.to_string()
            ],
            "config order"
        );

        for up in [a.addr(), b.addr()] {
            let backend = backend(&document, up);
            assert_eq!(backend["name"], up.to_string(), "named by address");
            assert_eq!(backend["state"], "healthy");
            assert_eq!(backend["weight"], 1);
            assert_eq!(backend["effective_weight"], 1.0);
            assert_eq!(backend["in_flight"], 0);
            assert_eq!(
                backend["idle_connections"], 1,
                "{up}: its one connection, idle"
            );
            assert_eq!(backend["requests"], 10, "{up}");
            assert_eq!(backend["last_error"], Value::Null);
            let minute = &backend["last_minute"];
            assert_eq!(minute["requests"], 10, "{up}");
            let rps = minute["requests_per_second"].as_f64().expect("rps");
            assert!(rps > 0.0 && rps <= 10.0, "{up}: {rps} requests/s");
            assert_eq!(minute["error_rate"], 0.0);
            let p50 = minute["p50_ms"].as_f64().expect("p50");
            let p99 = minute["p99_ms"].as_f64().expect("p99");
            assert!(
                p50 > 0.0 && p50 <= p99 && p99 < 5_000.0,
                "{up}: {p50} {p99}"
            );
        }
        let down = backend(&document, closed);
        assert_eq!(down["state"], "unhealthy");
        assert_eq!(down["requests"], 0);
        assert_eq!(down["in_flight"], 0);
        assert_eq!(down["idle_connections"], 0);
        assert_eq!(down["last_minute"]["requests"], 0);
        assert_eq!(down["last_minute"]["error_rate"], 0.0);

        // /metrics mirrors the health state.
        let (metrics, text) = scrape(admin).await;
        let closed_addr = closed.to_string();
        let series = [("pool", "app"), ("backend", closed_addr.as_str())];
        assert_eq!(metrics.expect("fulcrum_backend_up", &series, &text), 0.0);
        assert!(
            metrics.sum(
                "fulcrum_health_checks_total",
                &[series.as_slice(), &[("result", "fail")]].concat()
            ) >= 1.0
        );
        drop(client);
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn readyz_waits_for_the_first_health_check() {
    bounded(async {
        let backend = ControlledBackend::spawn("slow-to-check").await;
        // The first probe is held: it cannot complete (pass or time out) for a second.
        backend.hold_health(true);
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .pool(
                "health_check",
                "{ path = \"/health\", interval = \"1s\", timeout = \"1s\", jitter = \"0ms\", \
                 healthy_threshold = 1 }",
            )
            .start_with_admin()
            .await;

        let readyz = admin_get(admin, "/readyz").await;
        assert_eq!(
            readyz.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            readyz.text()
        );
        assert_eq!(status(admin).await["ready"], false);
        assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);

        backend.hold_health(false);
        let document = status_until(admin, "readiness", |status| status["ready"] == true).await;
        assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
        assert!(backend.probe_count() >= 1, "{document:#}");
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_admin_paths_are_not_found() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(a.addr())
            .start_with_admin()
            .await;
        assert_eq!(
            admin_get(admin, "/nope").await.status,
            StatusCode::NOT_FOUND
        );
        let page = admin_get(admin, "/").await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(
            page.headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
        let html = page.text();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("id=\"last-reload\""));
        for external in ["src=\"", "href=\"", "url(", "@import", "<link", "//cdn"] {
            assert!(
                !html.contains(external),
                "self-contained: no external resources ({external})"
            );
        }
        balancer.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The dashboard in a real browser
// ---------------------------------------------------------------------------------------------

const CHROMIUM: &str = "/usr/bin/chromium";

/// The cargo target directory (screenshots go there).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory")
        .to_path_buf()
}

/// Runs headless Chromium on `url` with `args`, letting the page run for 5 s of virtual time;
/// returns its stdout. Killed if it takes longer than a minute (or when the test fails).
async fn chromium(url: &str, args: &[&str]) -> String {
    let profile = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "chromium-profile-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&profile).expect("create a chromium profile dir");
    let child = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("chromium finished within a minute")
        .expect("chromium ran");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The attributes of the start tag that contains `needle` in `html`.
fn tag_attributes(html: &str, needle: &str) -> Option<HashMap<String, String>> {
    let at = html.find(needle)?;
    let start = html[..at].rfind('<')?;
    let end = at + html[at..].find('>')?;
    let tag = &html[start + 1..end];
    let mut attributes = HashMap::new();
    let mut rest = tag
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest);
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let close = after.find('"')?;
        attributes.insert(key, after[..close].replace("&amp;", "&"));
        rest = &after[close + 1..];
    }
    Some(attributes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_renders_every_backend_in_chromium() {
    if !Path::new(CHROMIUM).exists() {
        println!("skipping: chromium not installed (apt-get install chromium)");
        return;
    }
    let a = TestBackend::spawn("a").await;
    let b = TestBackend::with_behaviour("b", Behaviour::Delay(Duration::from_millis(3))).await;
    // Answers 500 to traffic but passes its health checks.
    let c = ControlledBackend::with_mode("c", common::controlled::Mode::Status(500)).await;
    let closed = closed_port().await;
    let (mut balancer, admin) = TestBalancer::builder()
        .backend(a.addr())
        .weighted(b.addr(), 2)
        .backend(c.addr())
        .backend(closed)
        .pool("health_check", FAST_CHECKS)
        .start_with_admin()
        .await;
    let expected = [
        (a.addr(), "healthy"),
        (b.addr(), "healthy"),
        (c.addr(), "healthy"),
        (closed, "unhealthy"),
    ];
    status_until(admin, "first health checks", |status| {
        expected
            .iter()
            .all(|(address, state)| backend(status, *address)["state"] == *state)
    })
    .await;

    // Background traffic so the page has rates, latencies and errors to show.
    let traffic = {
        let address = balancer.addr();
        tokio::spawn(async move {
            let mut client = common::client::TestClient::connect(address).await;
            loop {
                if client.get("/").await.is_err() {
                    client = common::client::TestClient::connect(address).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let url = format!("http://{admin}/");
    let dom = chromium(&url, &["--dump-dom"]).await;
    assert!(
        dom.contains("data-loaded=\"true\""),
        "the page rendered /status:\n{dom}"
    );
    let banner = tag_attributes(&dom, "id=\"connection-lost\"").expect("the banner exists");
    assert!(banner.contains_key("hidden"), "connected: banner hidden");
    let reload = tag_attributes(&dom, "id=\"last-reload\"").expect("#last-reload exists");
    assert_eq!(reload.get("data-result").map(String::as_str), Some("none"));
    assert!(dom.contains(env!("CARGO_PKG_VERSION")), "version shown");
    for (address, state) in expected {
        let needle = format!("data-backend=\"{address}\"");
        let attributes = tag_attributes(&dom, &needle)
            .unwrap_or_else(|| panic!("backend {address} not on the page:\n{dom}"));
        assert_eq!(
            attributes.get("data-state").map(String::as_str),
            Some(state),
            "{address}: {attributes:?}"
        );
        assert_eq!(dom.matches(&needle).count(), 1, "{address} shown once");
    }
    // The state is also written out, not only coloured.
    assert!(dom.contains(">unhealthy</span>"), "state as text");
    assert!(dom.contains("data-listener=\"web\""), "listener row");
    assert!(
        dom.contains(&balancer.addr().to_string()),
        "listener address"
    );

    let target = target_dir();
    for (width, height) in [(390, 844), (1280, 800)] {
        let path = target.join(format!("dashboard-{width}.png"));
        let _ = std::fs::remove_file(&path);
        chromium(
            &url,
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={width},{height}"),
            ],
        )
        .await;
        let size = std::fs::metadata(&path)
            .unwrap_or_else(|err| panic!("screenshot {}: {err}", path.display()))
            .len();
        assert!(size > 10_000, "{} is {size} bytes", path.display());
        println!("screenshot: {}", path.display());
    }
    traffic.abort();
    balancer.stop().await;
}
