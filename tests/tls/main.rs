//! End-to-end tests of TLS termination (SNI, ALPN, minimum version, handshake timeout), of
//! certificate files (config errors, rotation) and of WebSocket/Upgrade proxying, over TLS and
//! plain listeners.
//!
//! Certificates are generated with rcgen (`common::pki`): a test CA signs every leaf, and
//! clients trust only that CA. Files live in a temp dir next to the (virtual) config file, so
//! the relative paths in `[listeners.tls]` resolve there.

#[path = "../common/mod.rs"]
mod common;

mod backends;
mod certificates;
mod passthrough;
mod termination;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::backend::TestBackend;
use common::balancer::TestBalancer;
use common::client::TestResponse;
use common::pki::{BOTH, Ca, Leaf, client_config, presented, subject, tls_connect};
use common::{TempDir, TestBody, bounded, empty, within};
use http::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// The config text: listener `web` with `tls` (a `[listeners.tls]` body, or None for plain
/// HTTP), pool `app` over `backends` with `algorithm`.
fn config_text(tls: Option<&str>, backends: &[SocketAddr], algorithm: &str) -> String {
    config_text_with("", tls, backends, algorithm)
}

/// [`config_text`] with `listener_extra` (TOML lines) added to the `[[listeners]]` entry.
fn config_text_with(
    listener_extra: &str,
    tls: Option<&str>,
    backends: &[SocketAddr],
    algorithm: &str,
) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|address| format!("{{ address = \"{address}\" }}"))
        .collect();
    let tls = tls
        .map(|body| format!("\n[listeners.tls]\n{body}\n"))
        .unwrap_or_default();
    format!(
        "[runtime]\nshutdown_timeout = \"2s\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n{tls}\n\
         [pools.app]\nalgorithm = \"{algorithm}\"\nbackends = [{}]\n",
        backends.join(", "),
    )
}

/// Writes one leaf for `example.test` into `dir` as `site.pem`/`site.key` and returns it.
fn single_site(ca: &Ca, dir: &TempDir) -> Leaf {
    let leaf = ca.leaf(&["example.test", "www.example.test"], 1);
    leaf.write(dir, "site");
    leaf
}

/// An HTTP/1.1 client connection over `stream`.
async fn http1_over(
    stream: TlsStream<TcpStream>,
) -> (
    hyper::client::conn::http1::SendRequest<TestBody>,
    JoinHandle<()>,
) {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

/// A `GET path` with `Host: example.test`, the name the test certificates cover.
fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, "example.test")
        .body(empty())
        .expect("a valid request")
}
