//! Live reconfiguration of the real `fulcrum` binary (issue #4): the binary runs as a child
//! process on a config file in a temp dir, in front of in-process backends, while a bounded
//! client load runs through every change.
//!
//! Every wait is bounded; the child is killed and reaped when a test ends, however it ends.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::backend::TestBackend;
use common::client::TestClient;
use common::{TempDir, TestBody, bounded, empty, full, within};
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// How long a reload may take to show up in the log after the file was written (the watcher
/// debounces for 200 ms).
const RELOAD_LIMIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Config text
// ---------------------------------------------------------------------------------------------

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

/// A free TCP port on 127.0.0.1: bound, read, released (the race with other processes is
/// accepted).
fn free_port() -> SocketAddr {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a throwaway socket");
    socket.local_addr().expect("local address")
}

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Clients and load
// ---------------------------------------------------------------------------------------------

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
        .header(http::header::HOST, "admin")
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

// ---------------------------------------------------------------------------------------------
// 1. Adding a backend under load
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backend_gets_traffic_within_a_second_with_zero_client_failures() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("add");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let started = Instant::now();
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.request_count(), 0);
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let took = wait_for_traffic(&c, 0, Duration::from_secs(1)).await;
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", c.addr())),
            "{line}"
        );
        assert!(line.contains("trigger=\"file\""), "{line}");
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
        let report = load.finish().await;

        assert_no_failures(&report);
        assert!(report.served("c") > 0, "{report:?}");
        assert!(
            report.served("a") > 0 && report.served("b") > 0,
            "{report:?}"
        );
        eprintln!("c got traffic {took:?} after the write; {report:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. Removing a backend with a slow request in flight
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_finishes_its_in_flight_request_and_gets_no_new_ones() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("remove");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let web = fulcrum.web;
        let slow = tokio::spawn(async move {
            let mut client = TestClient::connect(web).await;
            client.get("/slow/1500").await
        });
        // Find out which backend holds the slow request: that one is removed.
        let deadline = Instant::now() + Duration::from_secs(2);
        let (victim, survivor) = loop {
            let on =
                |backend: &TestBackend| backend.requests().iter().any(|r| r.path == "/slow/1500");
            if on(&a) {
                break (&a, &b);
            }
            if on(&b) {
                break (&b, &a);
            }
            assert!(
                Instant::now() < deadline,
                "the slow request reached no backend"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let load = Load::start(fulcrum.web, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mark = fulcrum.mark();
        cfg.backends
            .retain(|(address, _)| *address != victim.addr());
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("-{} (draining)", victim.addr())),
            "{line}"
        );
        // A request already routed under the old config when the reload landed may still be
        // on its way there (on a busy machine, a thread preempted between pick and send);
        // give those a moment, then nothing more may arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let count_at_reload = victim.request_count();
        let survivor_at_reload = survivor.request_count();

        let response = within(Duration::from_secs(5), "the slow response", slow)
            .await
            .expect("slow request task")
            .expect("slow request failed");
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
        assert_eq!(response.served_by(), Some(victim.name()));
        assert_eq!(response.text(), victim.name());

        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.finish().await;
        assert_no_failures(&report);
        assert_eq!(
            victim.request_count(),
            count_at_reload,
            "requests reached the removed backend after the reload was logged"
        );
        assert!(survivor.request_count() > survivor_at_reload);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_connections_lets_a_queued_request_through_at_once() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let dir = TempDir::new("cap");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        cfg.pool_keys.push("max_connections = 1".to_owned());
        cfg.pool_keys.push("queue_timeout = \"10s\"".to_owned());
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let web = fulcrum.web;
        let get = |path: &'static str| {
            tokio::spawn(async move {
                let mut client = TestClient::connect(web).await;
                client.get(path).await
            })
        };
        // The gated response holds the backend's only unit; the next request queues.
        let holding = get("/gated");
        common::wait_until(Duration::from_secs(5), "the gated request", || {
            a.request_count() == 1
        })
        .await;
        let queued = get("/");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.request_count(), 1, "the second request must be queued");

        let mark = fulcrum.mark();
        cfg.pool_keys[0] = "max_connections = 2".to_owned();
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("max_connections 1→2"), "{line}");
        let response = within(Duration::from_secs(5), "the queued response", queued)
            .await
            .expect("request task")
            .expect("the queued request failed");
        assert_eq!(response.status, StatusCode::OK);
        a.open_gate();
        let response = within(Duration::from_secs(5), "the gated response", holding)
            .await
            .expect("request task")
            .expect("the gated request failed");
        assert_eq!(response.text(), "firstrest");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Invalid files are rejected; the old config keeps serving
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_files_are_rejected_with_their_position_and_the_next_valid_one_applies() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("invalid");
        let path = dir.join("fulcrum.toml");
        let file = path.display().to_string();
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        let original = cfg.text();
        write_in_place(&path, &original);
        let fulcrum = Fulcrum::start(&path).await;
        let admin = fulcrum.admin();
        let load = Load::start(fulcrum.web, 4).await;

        // A syntax error on a known line.
        let syntax = format!("{original}retries = = 3\n");
        let syntax_line = syntax.lines().count();
        let mark = fulcrum.mark();
        write_in_place(&path, &syntax);
        let (_, line) = fulcrum
            .wait_log(mark, "config reload rejected", RELOAD_LIMIT)
            .await;
        let position = format!("{file}:{syntax_line}:");
        assert!(line.contains(&position), "{position} not in {line}");
        assert!(line.contains("trigger=\"file\""), "{line}");
        let (status, body) = admin_request(admin, http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(&position), "{position} not in {body}");

        // A semantic error: the listener names a pool that does not exist.
        let semantic = original.replacen("pool = \"app\"", "pool = \"nope\"", 1);
        let semantic_line = semantic
            .lines()
            .position(|l| l == "pool = \"nope\"")
            .expect("the edited line")
            + 1;
        let expected =
            format!("{file}:{semantic_line}:8: listeners[0].pool: pool \"nope\" does not exist");
        let mark = fulcrum.mark();
        write_in_place(&path, &semantic);
        let (_, line) = fulcrum.wait_log(mark, &expected, RELOAD_LIMIT).await;
        assert!(line.contains("config reload rejected"), "{line}");
        assert!(line.contains("trigger=\"file\""), "{line}");
        let (status, body) = admin_request(admin, http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(body.contains(&expected), "{expected} not in {body}");
        assert!(
            fulcrum.lines_since(0, "config reloaded").is_empty(),
            "an invalid file was applied"
        );
        let (status, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            running, original,
            "GET /config changed after rejected reloads"
        );

        // The next valid write is applied.
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", c.addr())),
            "{line}"
        );
        wait_for_traffic(&c, 0, Duration::from_secs(1)).await;
        let (_, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(running, cfg.text());

        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(report.served("a") > 0 && report.served("b") > 0);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Health state survives a reload
// ---------------------------------------------------------------------------------------------

/// A backend whose `/health` answers 200 or 503 as the test says; other paths answer 200 with
/// `x-served-by`. Counts health probes and served requests separately.
struct Switchable {
    address: SocketAddr,
    name: &'static str,
    healthy: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Switchable {
    async fn spawn(name: &'static str) -> Switchable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let healthy = Arc::new(AtomicBool::new(true));
        let served = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let accept = {
            let (healthy, served, probes) = (
                Arc::clone(&healthy),
                Arc::clone(&served),
                Arc::clone(&probes),
            );
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (healthy, served, probes) = (
                        Arc::clone(&healthy),
                        Arc::clone(&served),
                        Arc::clone(&probes),
                    );
                    tokio::spawn(async move {
                        let service = service_fn(move |request: Request<Incoming>| {
                            let response = if request.uri().path() == "/health" {
                                probes.fetch_add(1, Ordering::SeqCst);
                                let mut response: Response<TestBody> = Response::new(empty());
                                if !healthy.load(Ordering::SeqCst) {
                                    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                }
                                response
                            } else {
                                served.fetch_add(1, Ordering::SeqCst);
                                let mut response = Response::new(full(name));
                                response
                                    .headers_mut()
                                    .insert("x-served-by", HeaderValue::from_static(name));
                                response
                            };
                            async move { Ok::<_, Infallible>(response) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Switchable {
            address,
            name,
            healthy,
            served,
            probes,
            accept,
        }
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_an_unrelated_edit() {
    bounded(async {
        let a = Switchable::spawn("a").await;
        let b = Switchable::spawn("b").await;
        let dir = TempDir::new("health");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.address, b.address]);
        cfg.tail = "\n[pools.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n\
                    timeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n"
            .to_owned();
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        // Both come up, then b's check starts failing and it is marked down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.served.load(Ordering::SeqCst) == 0 || a.served.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "a and b never both served");
            let mut client = TestClient::connect(fulcrum.web).await;
            let _ = client.get("/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mark = fulcrum.mark();
        b.healthy.store(false, Ordering::SeqCst);
        fulcrum
            .wait_log(
                mark,
                &format!("backend is down pool=\"app\" backend=\"{}\"", b.address),
                Duration::from_secs(5),
            )
            .await;

        let load = Load::start(fulcrum.web, 2).await;
        // Connections for the burst, opened before the reload.
        let mut burst_clients = Vec::new();
        for _ in 0..4 {
            burst_clients.push(TestClient::connect(fulcrum.web).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b_before = b.served.load(Ordering::SeqCst);

        // An unrelated edit: fewer retries and a new pool.
        let mark = fulcrum.mark();
        cfg.pool_keys.push("retries = 1".to_owned());
        cfg.tail.push_str(&format!(
            "\n[pools.other]\nbackends = [\"{}\"]\n",
            a.address
        ));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        let probes_at_reload = b.probes.load(Ordering::SeqCst);

        // Burst right away: 4 connections × 10 requests.
        let burst = burst_clients.into_iter().map(|mut client| {
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..10 {
                    results.push(match client.get("/").await {
                        Ok(response) => {
                            (response.status, response.served_by().map(str::to_owned))
                        }
                        Err(err) => panic!("burst request failed: {err}"),
                    });
                }
                results
            })
        });
        let mut results = Vec::new();
        for task in burst {
            results.extend(within(Duration::from_secs(5), "the burst", task).await.expect("burst"));
        }
        let burst_took_probes = b.probes.load(Ordering::SeqCst) - probes_at_reload;
        assert!(
            line.contains("retries 2→1") && line.contains("pool other: added"),
            "{line}"
        );
        assert!(
            results
                .iter()
                .all(|(status, by)| *status == StatusCode::OK && by.as_deref() == Some(a.name)),
            "burst right after the reload (b probed {burst_took_probes} times meanwhile): {results:?}"
        );
        assert_eq!(
            b.served.load(Ordering::SeqCst),
            b_before,
            "the down backend got traffic right after the reload"
        );
        let report = load.finish().await;
        assert_no_failures(&report);
        assert_eq!(report.served(b.name), 0, "{report:?}");

        // The checker still runs after the reload: b comes back.
        b.healthy.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut client = TestClient::connect(fulcrum.web).await;
        while b.served.load(Ordering::SeqCst) == b_before {
            assert!(Instant::now() < deadline, "b never came back after the reload");
            let _ = client.get("/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Weights, algorithm, listeners, triggers, file replacement styles
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_shifts_shares_and_algorithm_change_applies() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("weight");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let before = sequential(fulcrum.web, 40).await;
        assert_eq!((before["a"], before["b"]), (20, 20), "{before:?}");

        // Weight 1 → 3 under load.
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mark = fulcrum.mark();
        cfg.backends[0].1 = 3;
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: {} weight 1→3", a.addr())),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_failures(&load.finish().await);
        let after = sequential(fulcrum.web, 400).await;
        let (got_a, got_b) = (after["a"], after.get("b").copied().unwrap_or(0));
        assert!(
            got_a.abs_diff(300) <= 2 && got_b.abs_diff(100) <= 2,
            "expected 300:100 (±2), got {after:?}"
        );

        // round_robin → least_connections, under load.
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mark = fulcrum.mark();
        cfg.algorithm = "least_connections";
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains("algorithm round_robin→least_connections"),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_failures(&load.finish().await);

        // Least connections avoids the backend busy with a slow request; round-robin would not.
        let web = fulcrum.web;
        let slow = tokio::spawn(async move {
            let mut client = TestClient::connect(web).await;
            client.get("/slow/1500").await
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        let busy = loop {
            if let Some(busy) = [&a, &b]
                .into_iter()
                .find(|backend| backend.requests().iter().any(|r| r.path == "/slow/1500"))
            {
                break busy.name().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the slow request reached no backend"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let during = sequential(fulcrum.web, 20).await;
        assert_eq!(
            during.get(&busy),
            None,
            "least_connections sent requests to the busy backend {busy}: {during:?}"
        );
        let slow = within(Duration::from_secs(5), "the slow response", slow)
            .await
            .expect("slow task")
            .expect("slow request");
        assert_eq!(slow.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_without_dropping_in_flight_requests() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let dir = TempDir::new("listeners");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // Add `api` on a concrete free port.
        let api = free_port();
        assert!(TcpStream::connect(api).await.is_err(), "{api} is taken");
        let mark = fulcrum.mark();
        cfg.listeners.push(("api", api));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("listener api: added {api} -> app")),
            "{line}"
        );
        let tally = sequential(api, 5).await;
        assert_eq!(tally.get("a"), Some(&5), "{tally:?}");

        // A keep-alive connection on `api` with a slow request in flight, then remove `api`.
        let mut kept = TestClient::connect(api).await;
        let response = kept.get("/").await.expect("first request on api");
        assert_eq!(response.status, StatusCode::OK);
        let in_flight = tokio::spawn(async move {
            let result = kept.get("/slow/1000").await;
            (kept, result)
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while !a.requests().iter().any(|r| r.path == "/slow/1000") {
            assert!(Instant::now() < deadline, "the slow request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mark = fulcrum.mark();
        cfg.listeners.clear();
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("listener api: removed {api} (draining)")),
            "{line}"
        );
        let refused = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(api)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "the removed listener still accepts connections: {refused:?}"
        );
        let (mut kept, result) =
            within(Duration::from_secs(5), "the in-flight response", in_flight)
                .await
                .expect("in-flight task");
        let response = result.expect("the in-flight request on the removed listener failed");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "a");
        // The drained connection is closed afterwards rather than served on.
        let next = tokio::time::timeout(Duration::from_secs(2), kept.get("/")).await;
        assert!(
            matches!(next, Ok(Err(_))),
            "the removed listener's connection served another request: {next:?}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_post_reload_apply_a_change() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("triggers");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // SIGHUP right after the write: it is handled before the watcher's 200 ms debounce ends,
        // so the change is applied by the signal (trigger "request"), and the watcher then finds
        // the content unchanged.
        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        fulcrum.signal("-HUP");
        fulcrum
            .wait_log(mark, "reload requested signal=\"SIGHUP\"", RELOAD_LIMIT)
            .await;
        let (index, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("trigger=\"request\""), "{line}");
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            fulcrum.lines_since(index + 1, "config reloaded").is_empty(),
            "the change was applied twice"
        );

        // SIGHUP with no change still reloads (re-resolves), reporting no changes.
        let mark = fulcrum.mark();
        fulcrum.signal("-HUP");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("changes=none"), "{line}");

        // POST /reload answers with the change it applied.
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            format!("applied: pool app: +{} (weight 1)\n", c.addr())
        );
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("trigger=\"request\""), "{line}");
        wait_for_traffic(&c, 0, Duration::from_secs(1)).await;

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_rename_edit_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("rename");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        let temp = dir.join(".fulcrum.toml.swp");
        std::fs::write(&temp, cfg.text()).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename over the config");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;

        // A second rename-edit works too (the watch is on the directory, not the old inode).
        let mark = fulcrum.mark();
        cfg.backends.remove(0);
        std::fs::write(&temp, cfg.text()).expect("write temp file");
        std::fs::rename(&temp, &path).expect("rename over the config");
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("-{} (draining)", a.addr())),
            "{line}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_style_symlink_swap_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("configmap");
        let mut cfg = Cfg::new(&[a.addr()]);
        // D/..v1/fulcrum.toml, D/..data -> ..v1, D/fulcrum.toml -> ..data/fulcrum.toml
        std::fs::create_dir(dir.join("..v1")).expect("mkdir ..v1");
        std::fs::write(dir.join("..v1/fulcrum.toml"), cfg.text()).expect("write v1");
        std::os::unix::fs::symlink("..v1", dir.join("..data")).expect("symlink ..data");
        std::os::unix::fs::symlink("..data/fulcrum.toml", dir.join("fulcrum.toml"))
            .expect("symlink fulcrum.toml");
        let fulcrum = Fulcrum::start(&dir.join("fulcrum.toml")).await;
        let load = Load::start(fulcrum.web, 2).await;

        let swap = |version: &str, text: &str| {
            std::fs::create_dir(dir.join(version)).expect("mkdir version");
            std::fs::write(dir.join(version).join("fulcrum.toml"), text).expect("write version");
            std::os::unix::fs::symlink(version, dir.join("..data_tmp")).expect("symlink tmp");
            std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
        };

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        swap("..v2", &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        // Kubernetes then deletes the old version; that is not a change.
        let mark = fulcrum.mark();
        std::fs::remove_dir_all(dir.join("..v1")).expect("remove ..v1");

        // A second swap.
        cfg.backends[1].1 = 2;
        swap("..v3", &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: {} weight 1→2", b.addr())),
            "{line}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(dir.path().join("..data").exists());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. A touch without change
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_identical_content_does_not_reload() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("touch");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        let mark = fulcrum.mark();
        write_in_place(&path, &cfg.text());
        // And a rename-style rewrite of the same bytes.
        let temp = dir.join(".fulcrum.toml.tmp");
        std::fs::write(&temp, cfg.text()).expect("write temp");
        std::fs::rename(&temp, &path).expect("rename");
        // Well past the 200 ms debounce.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(
            fulcrum.lines_since(mark, "config reload"),
            Vec::<String>::new(),
            "an unchanged file was reloaded"
        );

        // The watcher does work: a real change right after is applied.
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", b.addr())),
            "{line}"
        );
        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. --check --diff
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_diff_prints_the_changes_without_applying_them() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("diff");
        let path = dir.join("fulcrum.toml");
        let cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let admin = fulcrum.admin();
        let load = Load::start(fulcrum.web, 2).await;

        // Weight change on a, c added, b removed; written next to the live file.
        let mut edited = cfg.clone();
        edited.backends = vec![(a.addr(), 3), (c.addr(), 1)];
        let new = dir.join("fulcrum.new.toml");
        write_in_place(&new, &edited.text());
        let mark = fulcrum.mark();
        let output = within(
            Duration::from_secs(20),
            "fulcrum --check --diff",
            tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&new)
                .arg("--check")
                .arg("--diff")
                .arg(admin.to_string())
                .env("NO_COLOR", "1")
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run fulcrum --check --diff");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stdout}\n{stderr}");
        assert_eq!(
            stdout,
            format!(
                "{}: ok\nchanges against the instance at {admin}:\n  pool app: {} weight 1→3, \
                 +{} (weight 1), -{} (draining)\n",
                new.display(),
                a.addr(),
                c.addr(),
                b.addr()
            )
        );

        // Identical file: no changes.
        let same = dir.join("fulcrum.same.toml");
        write_in_place(&same, &cfg.text());
        let output = within(
            Duration::from_secs(20),
            "fulcrum --check --diff",
            tokio::process::Command::new(BIN)
                .arg("--config")
                .arg(&same)
                .args(["--check", "--diff", &admin.to_string()])
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("run fulcrum --check --diff");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{stdout}");
        assert!(
            stdout.ends_with(&format!("no changes against the instance at {admin}\n")),
            "{stdout}"
        );

        // Nothing was applied.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.finish().await;
        assert_no_failures(&report);
        assert!(
            fulcrum.lines_since(mark, "config reload").is_empty(),
            "--check --diff changed the running instance"
        );
        let (status, running) = admin_request(admin, http::Method::GET, "/config").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(running, cfg.text());
        assert_eq!(c.request_count(), 0);
        let tally = sequential(fulcrum.web, 10).await;
        assert_eq!(
            (tally.get("a"), tally.get("b")),
            (Some(&5), Some(&5)),
            "{tally:?}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Extra: a listener address that cannot be bound rejects the whole reload
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbindable_listener_rejects_the_whole_reload() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("bind");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // Port held by the test; the same edit also adds backend b, which must not apply.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind holder");
        let taken = holder.local_addr().expect("holder address");
        let mark = fulcrum.mark();
        cfg.listeners.push(("api", taken));
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum
            .wait_log(mark, "config reload rejected", RELOAD_LIMIT)
            .await;
        assert!(
            line.contains(&format!("cannot bind listener api on {taken}")),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            b.request_count(),
            0,
            "part of a rejected reload was applied"
        );
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        // Once the port is free, a requested reload applies the same file.
        drop(holder);
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(&format!("listener api: added {taken} -> app")),
            "{body}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        let tally = sequential(taken, 4).await;
        assert_eq!(tally.values().sum::<usize>(), 4);

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Extra: the config path is a symlink to a file in another directory, edited in place
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlink_to_a_file_elsewhere_edited_in_place_is_picked_up() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let link_dir = TempDir::new("link");
        let real_dir = TempDir::new("real");
        let real = real_dir.join("fulcrum.toml");
        let link = link_dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&real, &cfg.text());
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let fulcrum = Fulcrum::start(&link).await;

        let mark = fulcrum.mark();
        cfg.backends.push((b.addr(), 1));
        write_in_place(&real, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains(&format!("+{}", b.addr())), "{line}");
    })
    .await;
}
