//! Live reconfiguration of the real `fulcrum` binary: the binary runs as a child
//! process on a config file in a temp dir, in front of in-process backends, while a bounded
//! client load runs through every change.
//!
//! Every wait is bounded; the child is killed and reaped when a test ends, however it ends.

#[path = "../common/mod.rs"]
mod common;

mod hashing;
mod listeners;
mod pools;
mod triggers;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::TestBackend;
use common::client::TestClient;
use common::{TempDir, bounded, empty, within};
use http::{Request, StatusCode};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// How long a reload may take to show up in the log after the file was written (the watcher
/// debounces for 200 ms).
const RELOAD_LIMIT: Duration = Duration::from_secs(5);

/// The config files the tests write: listener `web` on port 0 → pool `app`, admin on port 0.
#[derive(Debug, Clone)]
struct Cfg {
    backends: Vec<(SocketAddr, u32)>,
    algorithm: &'static str,
    /// Extra `key = value` lines in `[pools.app]`.
    pool_keys: Vec<String>,
    /// Extra listeners `(name, address)` on pool `app`.
    listeners: Vec<(&'static str, SocketAddr)>,
    /// Appended verbatim at the end (sub-tables, other pools).
    tail: String,
}

impl Cfg {
    fn new(backends: &[SocketAddr]) -> Cfg {
        Cfg {
            backends: backends.iter().map(|a| (*a, 1)).collect(),
            algorithm: "round_robin",
            pool_keys: Vec::new(),
            listeners: Vec::new(),
            tail: String::new(),
        }
    }

    fn text(&self) -> String {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(address, weight)| format!("{{ address = \"{address}\", weight = {weight} }}"))
            .collect();
        let mut out = String::from(
            "[runtime]\nshutdown_timeout = \"2s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n",
        );
        for (name, address) in &self.listeners {
            out.push_str(&format!(
                "[[listeners]]\nname = \"{name}\"\nlisten = \"{address}\"\npool = \"app\"\n\n"
            ));
        }
        out.push_str(&format!(
            "[pools.app]\nalgorithm = \"{}\"\nbackends = [{}]\n",
            self.algorithm,
            backends.join(", ")
        ));
        for key in &self.pool_keys {
            out.push_str(key);
            out.push('\n');
        }
        out.push_str(&self.tail);
        out
    }
}

/// Rewrites `path` in place (truncate + write), as most tools do.
fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// A running `fulcrum` child, killed and reaped on drop, with its stdout log collected.
struct Fulcrum {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    web: SocketAddr,
    admin: Option<SocketAddr>,
}

impl Fulcrum {
    /// Starts the binary on `config` and waits (bounded) for its startup line.
    async fn start(config: &Path) -> Fulcrum {
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fulcrum");
        let stdout = child.stdout.take().expect("stdout piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // Shown by the test harness only when the test fails.
                    eprintln!("[fulcrum] {line}");
                    log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        let mut fulcrum = Fulcrum {
            child,
            log,
            web: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: None,
        };
        let (_, line) = fulcrum
            .wait_log(0, "fulcrum started", Duration::from_secs(10))
            .await;
        fulcrum.web = address_after(&line, "web http://").expect("web listener in startup line");
        fulcrum.admin = address_after(&line, "admin=");
        // The watch is set up just after the startup line; a write before it would be missed.
        fulcrum
            .wait_log(0, "config file checked since start", Duration::from_secs(5))
            .await;
        fulcrum
    }

    /// Number of log lines so far (a mark for [`Fulcrum::wait_log`]).
    fn mark(&self) -> usize {
        self.lines().len()
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Log lines from index `since` on containing `needle`.
    fn lines_since(&self, since: usize, needle: &str) -> Vec<String> {
        self.lines()
            .into_iter()
            .skip(since)
            .filter(|line| line.contains(needle))
            .collect()
    }

    /// Waits for a log line at index `since` or later containing `needle`; returns its index
    /// and text.
    async fn wait_log(&self, since: usize, needle: &str, limit: Duration) -> (usize, String) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self
                .lines()
                .into_iter()
                .enumerate()
                .skip(since)
                .find(|(_, line)| line.contains(needle))
            {
                return found;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no log line containing {needle:?} within {limit:?}; log since mark:\n{}",
                    self.lines()
                        .into_iter()
                        .skip(since)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for the next `config reloaded` line after `since`.
    async fn wait_reloaded(&self, since: usize) -> (usize, String) {
        self.wait_log(since, "config reloaded", RELOAD_LIMIT).await
    }

    fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener configured")
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        // SIGKILL cannot be ignored, so this wait is short.
        let _ = self.child.wait();
    }
}

/// The socket address right after `marker` in `line`.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)?
        .split(|c: char| c.is_whitespace() || c == ',')
        .next()?
        .parse()
        .ok()
}

/// What a load saw.
#[derive(Debug, Default)]
struct LoadReport {
    ok: usize,
    failures: Vec<String>,
    served: HashMap<String, usize>,
}

impl LoadReport {
    fn merge(&mut self, other: LoadReport) {
        self.ok += other.ok;
        self.failures.extend(other.failures);
        for (name, count) in other.served {
            *self.served.entry(name).or_default() += count;
        }
    }

    fn served(&self, name: &str) -> usize {
        self.served.get(name).copied().unwrap_or(0)
    }
}

/// A steady load: `clients` keep-alive connections, each sending `GET /` in a loop (with a
/// short pause) until stopped or 20 s passed.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    async fn start(address: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let stop = Arc::clone(&stop);
            let mut client = TestClient::connect(address).await;
            tasks.push(tokio::spawn(async move {
                let mut report = LoadReport::default();
                let deadline = Instant::now() + Duration::from_secs(20);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    let result =
                        tokio::time::timeout(Duration::from_secs(5), client.get("/")).await;
                    match result {
                        Ok(Ok(response)) if response.status == StatusCode::OK => {
                            report.ok += 1;
                            let name = response.served_by().unwrap_or("?").to_owned();
                            *report.served.entry(name).or_default() += 1;
                        }
                        Ok(Ok(response)) => report.failures.push(format!(
                            "status {}: {}",
                            response.status,
                            response.text()
                        )),
                        Ok(Err(err)) => {
                            report.failures.push(format!("client error: {err}"));
                            client = TestClient::connect(address).await;
                        }
                        Err(_) => {
                            report.failures.push("no response within 5s".to_owned());
                            client = TestClient::connect(address).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                report
            }));
        }
        Load { stop, tasks }
    }

    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for task in self.tasks {
            match within(Duration::from_secs(10), "a load client to stop", task).await {
                Ok(report) => total.merge(report),
                Err(err) => total.failures.push(format!("load task failed: {err}")),
            }
        }
        total
    }
}

fn assert_no_failures(report: &LoadReport) {
    assert!(
        report.failures.is_empty(),
        "client failures during the change ({} ok): {:#?}",
        report.ok,
        report.failures
    );
    assert!(report.ok > 0, "the load sent nothing");
}

/// `n` sequential `GET /` on one new connection; tally by backend name (failures panic).
async fn sequential(address: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut client = TestClient::connect(address).await;
    let mut tally = HashMap::new();
    for i in 0..n {
        let response = within(Duration::from_secs(5), "a response", client.get("/"))
            .await
            .unwrap_or_else(|err| panic!("request {i}: {err}"));
        assert_eq!(response.status, StatusCode::OK, "request {i}: {response:?}");
        *tally
            .entry(response.served_by().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
    }
    tally
}

/// Polls until `backend` has received more than `before` requests, at most `limit`; returns
/// how long it took.
async fn wait_for_traffic(backend: &TestBackend, before: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if backend.request_count() > before {
            return started.elapsed();
        }
        if started.elapsed() >= limit {
            panic!("backend {} got no traffic within {limit:?}", backend.name());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One request to the admin listener; returns status and body.
async fn admin_request(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
) -> (StatusCode, String) {
    let mut client = TestClient::connect(admin).await;
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, admin.to_string())
        .body(empty())
        .expect("admin request");
    let response = within(
        Duration::from_secs(10),
        "the admin answer",
        client.fetch(request),
    )
    .await
    .expect("admin request failed");
    (response.status, response.text())
}
