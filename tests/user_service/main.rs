//! The example user service behind fulcrum: three instances (tasks on this runtime) on one
//! temporary SQLite file, fulcrum in front, real sockets on 127.0.0.1 and a real hyper client.
//! The browser test drives the page in headless Chromium when it is installed (and fails under
//! `CI=true` when it is not); the example binary's log is checked for colour codes on a pipe.

#[path = "../../examples/user_service/mod.rs"]
mod user_service;

#[path = "../common/mod.rs"]
mod common;

mod api;
mod browser;
mod logs;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{BoxError, TempDir, bounded_for};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{RwLock, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use user_service::auth::HashCost;
use user_service::{Instance, Options};

/// Upper bound for one request, so a hang fails instead of blocking the suite.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

/// Three (or `n`) user-service instances on one database, and fulcrum in front of them.
struct Site {
    /// fulcrum's `web` listener.
    addr: SocketAddr,
    /// `None` once killed.
    instances: Vec<Option<Instance>>,
    db: PathBuf,
    stop_balancer: Option<oneshot::Sender<()>>,
    balancer: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl Site {
    async fn start(n: usize) -> Site {
        let dir = TempDir::new("users");
        let db = dir.join("users.db");
        let mut instances = Vec::new();
        for i in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut options = Options::new(format!("us-{}", i + 1), &db);
            options.hash_cost = HashCost::Fast;
            let instance = Instance::start(listener, &options)
                .await
                .expect("start user service");
            instances.push(Some(instance));
        }
        let backends: Vec<String> = instances
            .iter()
            .flatten()
            .map(|instance| format!("\"{}\"", instance.addr))
            .collect();
        let toml = format!(
            r#"
[runtime]
shutdown_timeout = "2s"

[[listeners]]
name = "web"
listen = "127.0.0.1:0"
pool = "app"

[pools.app]
algorithm = "round_robin"
backends = [{}]
connect_timeout = "500ms"
request_timeout = "10s"
retries = 2
"#,
            backends.join(", ")
        );
        let config = fulcrum::Config::parse("test.toml", &toml).expect("valid config");
        let server = fulcrum::Server::bind(config).await.expect("bind fulcrum");
        let addr = server.local_addr("web").expect("web listener");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let balancer = tokio::spawn(server.run(async move {
            // Either a send or a dropped sender means stop.
            let _ = stop_rx.await;
        }));
        Site {
            addr,
            instances,
            db,
            stop_balancer: Some(stop_tx),
            balancer: Some(balancer),
            _dir: dir,
        }
    }

    /// Closes instance `i`'s listener and drops its connections.
    async fn kill(&mut self, i: usize) {
        if let Some(instance) = self.instances[i].take() {
            instance.stop().await;
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop_balancer.take() {
            let _ = stop.send(());
        }
        if let Some(balancer) = self.balancer.take() {
            bounded_for(Duration::from_secs(10), balancer)
                .await
                .expect("fulcrum task");
        }
        for instance in self.instances.iter_mut().filter_map(Option::take) {
            instance.stop().await;
        }
    }
}

/// One answer, read whole.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    served_by: String,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "{} body is not JSON ({err}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends one request on a fresh HTTP/1.1 connection to `addr`.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> Result<Reply, BoxError> {
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, addr.to_string());
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some((content_type, body)) => request
                .header(header::CONTENT_TYPE, content_type)
                .body(Full::new(Bytes::from(body)))?,
            None => request.body(Full::new(Bytes::new()))?,
        };
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        let served_by = parts
            .headers
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Ok::<_, BoxError>(Reply {
            status: parts.status,
            headers: parts.headers,
            served_by,
            body,
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, exchange).await?
}

/// `GET path`, with `token` as bearer authorization if given.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    send(addr, Method::GET, path, token, None)
        .await
        .expect("GET")
}

/// A request with `body` as JSON.
async fn with_json(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> Result<Reply, BoxError> {
    let body = Some(("application/json", body.to_string()));
    send(addr, method, path, token, body).await
}

/// `POST path` with `body` as JSON.
async fn post(addr: SocketAddr, path: &str, body: &Value) -> Reply {
    with_json(addr, Method::POST, path, None, body)
        .await
        .expect("POST")
}

/// Signs `username` up with the test password.
async fn sign_up(addr: SocketAddr, username: &str) -> Reply {
    let body =
        json!({ "username": username, "password": "correct horse", "display_name": username });
    post(addr, "/api/users", &body).await
}
