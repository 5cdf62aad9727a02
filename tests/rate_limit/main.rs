//! Per-client rate limits through the real `fulcrum` binary: a child process on a config file
//! in a temp dir, in front of in-process backends, with clients on loopback addresses
//! (`127.0.0.1` acting as a trusted proxy, `127.0.0.2` as a direct client).
//!
//! Every wait is bounded; the child is killed and reaped when a test ends, however it ends.

#[path = "../common/mod.rs"]
mod common;

mod flood;
mod limits;
mod reload;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::TestResponse;
use common::{TempDir, TestBody, empty, within};
use http::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// A running `fulcrum` child, killed and reaped on drop, with its stdout log collected.
struct Fulcrum {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The first listener's address.
    web: SocketAddr,
    admin: SocketAddr,
    /// Keeps the config file's directory until the child is gone.
    dir: TempDir,
}

impl Fulcrum {
    /// Writes `config` (which must have `[admin]` on port 0 and a first listener `web`) and
    /// starts the binary on it, waiting (bounded) until it serves and watches its file.
    async fn start(config: &str) -> Fulcrum {
        let dir = TempDir::new("rate-limit");
        std::fs::write(dir.join("fulcrum.toml"), config).expect("write config");
        let mut child = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("fulcrum.toml"))
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
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
        };
        let (_, line) = fulcrum
            .wait_log(0, "fulcrum started", Duration::from_secs(10))
            .await;
        fulcrum.web = address_after(&line, "web http://")
            .or_else(|| address_after(&line, "web tcp://"))
            .expect("listener web in the startup line");
        fulcrum.admin = address_after(&line, "admin=").expect("admin in the startup line");
        // The watch is set up just after the startup line; a write before it would be missed.
        fulcrum
            .wait_log(0, "config file checked since start", Duration::from_secs(5))
            .await;
        fulcrum
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits for a log line at index `since` or later containing `needle`.
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
            assert!(
                Instant::now() < deadline,
                "no log line containing {needle:?} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Rewrites the config file and waits for the reload it triggers.
    async fn reload(&self, config: &str) {
        let mark = self.lines().len();
        std::fs::write(self.dir.join("fulcrum.toml"), config).expect("write config");
        self.wait_log(mark, "config reloaded", Duration::from_secs(10))
            .await;
    }

    /// `GET path` on the admin listener, read to the end.
    async fn admin_get(&self, path: &str) -> TestResponse {
        common::balancer::admin_get(self.admin, path).await
    }

    /// The `/status` document.
    async fn status(&self) -> serde_json::Value {
        let response = self.admin_get("/status").await;
        serde_json::from_slice(&response.body).expect("/status is JSON")
    }

    /// The value of the Prometheus sample whose line starts with `series` (name and labels as
    /// exported), 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").await.text();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// The child's resident set, from `/proc/<pid>/status` (`VmRSS`), in bytes.
    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the child's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
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

/// An HTTP/1.1 keep-alive connection to `server` from the loopback address `local`.
struct Client(SendRequest<TestBody>);

impl Client {
    async fn connect(local: [u8; 4], server: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from((local, 0)))
            .expect("bind a loopback address");
        let stream = within(Duration::from_secs(5), "connect", socket.connect(server))
            .await
            .expect("connect to fulcrum");
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 client handshake");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Client(sender)
    }

    /// `GET path`, with `X-Forwarded-For: forwarded` when given, read to the end.
    async fn get(&mut self, path: &str, forwarded: Option<&str>) -> TestResponse {
        let mut request = Request::get(path).header(http::header::HOST, "fulcrum.test");
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        let request = request.body(empty()).expect("a request");
        within(Duration::from_secs(10), "a response", async {
            self.0.ready().await.expect("connection ready");
            let response = self.0.send_request(request).await.expect("a response");
            TestResponse::collect(response).await.expect("a whole body")
        })
        .await
    }
}

/// The `Retry-After` of `response`, in seconds.
fn retry_after(response: &TestResponse) -> u64 {
    response
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("a Retry-After in seconds: {:?}", response.headers))
}

/// `127.0.0.1` is the trusted proxy in these configs; this one is a direct client.
const DIRECT: [u8; 4] = [127, 0, 0, 2];
/// The proxy.
const PROXY: [u8; 4] = [127, 0, 0, 1];
