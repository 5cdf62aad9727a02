//! Test harness for fulcrum's integration tests: real sockets on `127.0.0.1:0`, real hyper
//! servers and clients, no mocks.
//!
//! - `backend`: [`backend::TestBackend`], an in-process HTTP/1.1 backend that names itself in
//!   every answer and records every request it receives, with selectable misbehaviour.
//! - `controlled`: [`controlled::ControlledBackend`], a backend whose answers and health a test
//!   changes while it runs, and which stops and restarts on the same port.
//! - `balancer`: [`balancer::TestBalancer`], a fulcrum server built from a generated or given
//!   config, run on the test runtime, stopped with [`balancer::TestBalancer::stop`].
//! - `client`: [`client::TestClient`], one keep-alive HTTP/1.1 (or HTTP/2 prior-knowledge)
//!   client connection.
//! - `h2frames`: raw HTTP/2 frames, for floods a real client will not send.
//! - `tcp`: raw sockets, for bytes hyper's client would refuse to send and for TCP listeners.
//! - `pki`: a test certificate authority (rcgen) and TLS clients that trust only it.
//! - `process`: the real `fulcrum` binary as a child process, and a Prometheus series reader.
//! - `pebble`: [`pebble::Pebble`], Let's Encrypt's test ACME CA as a child process, validating
//!   against the ports a test gives.
//! - `dnsmasq`: [`dnsmasq::Dnsmasq`], a real DNS server as a child process, whose records a
//!   test rewrites while it runs (discovery tests).
//! - `tools`: external tools (Chromium, Redis, curl): a missing one skips locally and fails
//!   under `CI=true`.
//!
//! Every wait in here is bounded; [`bounded`] puts an overall limit on a test body.

#![allow(dead_code)] // each test binary uses a different subset of the harness

pub mod backend;
pub mod balancer;
pub mod client;
pub mod controlled;
pub mod dnsmasq;
pub mod h2frames;
pub mod pebble;
pub mod pki;
pub mod process;
pub mod tcp;
pub mod tools;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

/// Error type of every body in the harness.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used by the harness's clients and backends.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Upper bound for a whole test body; generous, it only exists so a hang fails instead of
/// blocking the suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs `future`, failing the test if it takes longer than [`TEST_LIMIT`].
pub async fn bounded<T>(future: impl Future<Output = T>) -> T {
    bounded_for(TEST_LIMIT, future).await
}

/// Runs `future`, failing the test if it takes longer than `limit` (for test binaries whose
/// bodies have a bound of their own).
pub async fn bounded_for<T>(limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Awaits `future` for at most `limit`, panicking with `what` on timeout.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

/// Polls `condition` every few milliseconds until it holds, panicking with `what` after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An empty body.
pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A complete in-memory body.
pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body fed chunk by chunk through a channel; it ends when every sender is dropped.
///
/// It has no known length, so HTTP/1.1 sends it chunked.
#[derive(Debug)]
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// A streaming body and the sender that feeds it.
pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChannelBody { rx }.boxed())
}

/// Locks `mutex`, ignoring poisoning: a panicking test already failed, and its harness state
/// is still readable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh directory under the system temp dir; `tag` goes into its name.
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "fulcrum-test-{tag}-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The config file name to hand to `Config::parse` (never written).
    pub fn config_file(&self) -> String {
        self.join("fulcrum.toml").to_string_lossy().into_owned()
    }

    /// Writes `name` in place (truncate and write), as most editors do.
    pub fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.join(name), contents)
            .unwrap_or_else(|err| panic!("write {name}: {err}"));
    }

    /// Replaces `name` atomically: write a temp file in the same dir, then rename over it.
    pub fn replace(&self, name: &str, contents: &str) {
        let temp = self.join(&format!(".{name}.tmp"));
        std::fs::write(&temp, contents).unwrap_or_else(|err| panic!("write {name}.tmp: {err}"));
        std::fs::rename(&temp, self.join(name))
            .unwrap_or_else(|err| panic!("rename over {name}: {err}"));
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Counts how often each name occurs (which backend served how many requests or connections).
pub fn tally<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(name.as_ref().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// Longer than fulcrum takes to park a quiet HTTP/1 connection (up to one second), so a test
/// that sleeps this long between requests goes through a park and a wake.
pub const PAST_PARKING: Duration = Duration::from_millis(2500);
