//! DNS service discovery end to end: a real dnsmasq serves the zone `test.`, fulcrum runs
//! in-process with `discover` pools asking it, and backends listen on 127.0.0.2, 127.0.0.3, …
//! (Linux routes all of 127/8 to loopback) so A records differ. Records change by rewriting
//! dnsmasq's hosts or servers file and sending SIGHUP; the tests watch which backends serve
//! and what `/status` says.

#[path = "../common/mod.rs"]
mod common;

mod failures;
mod names;
mod srv;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use common::balancer::{TestBalancer, admin_get};
use common::client::{TestClient, TestResponse};
use common::dnsmasq::Dnsmasq;
use common::tcp::accept_until;
use common::within;

/// The `refresh` of the tests' `discover` pools.
const REFRESH: Duration = Duration::from_millis(300);

/// How long a DNS change may take to show: the brief's `refresh` + 1 s.
const CHANGE_LIMIT: Duration = Duration::from_millis(1300);

/// How long a wait for anything else may take: generous, for a loaded machine.
const SLACK_LIMIT: Duration = Duration::from_secs(5);

/// The name server timeout of the tests' `[dns]`.
const DNS_TIMEOUT: &str = "300ms";

/// An HTTP backend on `127.0.0.N:port`, answering its name (body and `x-served-by`); `/hold`
/// waits until the test releases it; `/health` answers the status the test sets.
struct Backend {
    name: String,
    address: SocketAddr,
    health: Arc<AtomicU16>,
    held: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
}

impl Backend {
    /// Binds `127.0.0.{last}:{port}` (port 0: any).
    async fn bind(last: u8, port: u16) -> std::io::Result<Backend> {
        let listener = TcpListener::bind((Ipv4Addr::new(127, 0, 0, last), port)).await?;
        let address = listener.local_addr()?;
        let backend = Backend {
            name: format!("b{last}"),
            address,
            health: Arc::new(AtomicU16::new(200)),
            held: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
            stop: CancellationToken::new(),
        };
        tokio::spawn(serve(
            listener,
            backend.name.clone(),
            Arc::clone(&backend.health),
            Arc::clone(&backend.held),
            Arc::clone(&backend.gate),
            backend.stop.clone(),
        ));
        Ok(backend)
    }

    /// Lets one held request answer.
    fn release(&self) {
        self.gate.add_permits(1);
    }

    /// Requests waiting at `/hold` now.
    fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve(
    listener: TcpListener,
    name: String,
    health: Arc<AtomicU16>,
    held: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    stop: CancellationToken,
) {
    loop {
        let Some(stream) = accept_until(&listener, &stop).await else {
            return;
        };
        let (name, health, held, gate) = (
            name.clone(),
            Arc::clone(&health),
            Arc::clone(&held),
            Arc::clone(&gate),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let (name, health, held, gate) = (
                    name.clone(),
                    Arc::clone(&health),
                    Arc::clone(&held),
                    Arc::clone(&gate),
                );
                async move {
                    let mut status = StatusCode::OK;
                    match request.uri().path() {
                        "/health" => {
                            status = StatusCode::from_u16(health.load(Ordering::SeqCst))
                                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        }
                        "/hold" => {
                            held.fetch_add(1, Ordering::SeqCst);
                            if let Ok(permit) = gate.acquire().await {
                                permit.forget();
                            }
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        _ => {}
                    }
                    let response = Response::builder()
                        .status(status)
                        .header("x-served-by", name.as_str())
                        .body(Full::new(Bytes::from(name)))
                        .expect("a valid response");
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                () = stop.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Backends on `127.0.0.{last}` for each of `lasts`, all on one port (A records carry no
/// port), and that port.
async fn backends_on_one_port(lasts: &[u8]) -> (u16, Vec<Backend>) {
    for _ in 0..20 {
        let first = Backend::bind(lasts[0], 0).await.expect("bind a backend");
        let port = first.address.port();
        let mut backends = vec![first];
        for &last in &lasts[1..] {
            match Backend::bind(last, port).await {
                Ok(backend) => backends.push(backend),
                Err(_) => break,
            }
        }
        if backends.len() == lasts.len() {
            return (port, backends);
        }
    }
    panic!("no port free on all of 127.0.0.{lasts:?}");
}

/// `127.0.0.{last} NAME` lines for a hosts file.
fn hosts(name: &str, lasts: &[u8]) -> String {
    lasts
        .iter()
        .map(|last| format!("127.0.0.{last} {name}\n"))
        .collect()
}

/// A config with an admin listener, `[dns]` asking `dns`, and `body` (listeners and pools).
fn config(dns: &Dnsmasq, body: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[dns]\nservers = [\"{}\"]\ntimeout = \"{DNS_TIMEOUT}\"\n\n{body}",
        dns.address()
    )
}

/// One HTTP listener `web` on pool `app`, which discovers `discover` (an inline table's
/// contents), plus `extra` pool keys.
fn web_config(dns: &Dnsmasq, discover: &str, extra: &str) -> String {
    config(
        dns,
        &format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\ndiscover = {{ {discover}, refresh = \"{}ms\" }}\n{extra}\n",
            REFRESH.as_millis()
        ),
    )
}

/// `GET path` on a fresh connection to `address`, bounded.
async fn fetch(address: SocketAddr, path: &str) -> TestResponse {
    within(Duration::from_secs(5), "a response", async {
        let mut client = TestClient::connect(address).await;
        client.get(path).await.expect("a response")
    })
    .await
}

/// The backends that served `count` requests in a row on one connection (a status other than
/// 200 counts as its number).
async fn served(address: SocketAddr, count: usize) -> BTreeSet<String> {
    let mut client = TestClient::connect(address).await;
    let mut names = BTreeSet::new();
    for _ in 0..count {
        let response = within(Duration::from_secs(5), "a response", client.get("/"))
            .await
            .expect("a response");
        let name = match response.status {
            StatusCode::OK => response.served_by().unwrap_or("?").to_owned(),
            status => status.as_str().to_owned(),
        };
        names.insert(name);
    }
    names
}

/// The set `names` as a sorted set, for comparisons.
fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

/// Polls (every 50 ms, up to `limit`) until 8 requests in a row are served by exactly `want`;
/// how long that took.
async fn wait_served_by(address: SocketAddr, want: &[&str], limit: Duration) -> Duration {
    let start = tokio::time::Instant::now();
    let want = set(want);
    loop {
        let now = served(address, 8).await;
        if now == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?} still served by {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pool `pool` of `/status`.
async fn pool_status(admin: SocketAddr, pool: &str) -> serde_json::Value {
    let response = admin_get(admin, "/status").await;
    let status: serde_json::Value =
        serde_json::from_slice(&response.body).expect("/status is JSON");
    status["pools"]
        .as_array()
        .and_then(|pools| pools.iter().find(|p| p["name"] == pool))
        .cloned()
        .unwrap_or_else(|| panic!("no pool {pool} in {status}"))
}

/// The backend of `pool` whose address is `address`, from `/status`.
fn backend_status(pool: &serde_json::Value, address: SocketAddr) -> &serde_json::Value {
    pool["backends"]
        .as_array()
        .and_then(|backends| {
            backends
                .iter()
                .find(|b| b["address"] == address.to_string())
        })
        .unwrap_or_else(|| panic!("no backend {address} in {pool}"))
}

/// Polls `/status` (every 50 ms, up to `limit`) until `condition` holds for pool `pool`.
async fn wait_status(
    admin: SocketAddr,
    pool: &str,
    limit: Duration,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = tokio::time::Instant::now();
    loop {
        let status = pool_status(admin, pool).await;
        if condition(&status) {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "after {limit:?} still not {what}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts fulcrum on `text`, reporting listener `listener`.
async fn start(text: &str, listener: &str) -> TestBalancer {
    TestBalancer::from_config("discovery.toml", text, listener).await
}

/// A fulcrum server on `text` with several listeners; stopped on drop.
struct Running {
    listeners: Vec<(String, SocketAddr)>,
    admin: SocketAddr,
    shutdown: CancellationToken,
}

impl Running {
    async fn start(text: &str) -> Running {
        Running::start_from(None, text).await
    }

    /// Starts on `text`, read from `file` when given (so `POST /reload` reads it again).
    async fn start_from(file: Option<&std::path::Path>, text: &str) -> Running {
        let name = file.map_or_else(|| "discovery.toml".to_owned(), |f| f.display().to_string());
        let config = fulcrum::Config::parse(&name, text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n{text}"));
        let names: Vec<String> = config
            .listeners
            .iter()
            .map(|l| l.name.to_string())
            .collect();
        let mut server = fulcrum::Server::bind(config)
            .await
            .expect("bind the balancer");
        if let Some(file) = file {
            server = server.with_config_file(file, text.to_owned());
        }
        let listeners = names
            .into_iter()
            .map(|name| {
                let address = server.local_addr(&name).expect("a bound listener");
                (name, address)
            })
            .collect();
        let admin = server.admin_addr().expect("an admin listener");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        Running {
            listeners,
            admin,
            shutdown,
        }
    }

    fn addr(&self, listener: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, address)| *address)
            .unwrap_or_else(|| panic!("no listener {listener}"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The headless-Service example in `deploy/kubernetes/` discovers the Service it defines: the
/// config in its ConfigMap is valid, and its `discover` name and port are that Service's.
#[test]
fn the_kubernetes_example_discovers_its_headless_service() {
    use yaml_rust2::YamlLoader;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/headless-discovery.yaml");
    let text = std::fs::read_to_string(&path).expect("read the manifest");
    let documents = YamlLoader::load_from_str(&text).expect("valid YAML");
    let find = |kind: &str| {
        documents
            .iter()
            .find(|doc| doc["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("a {kind} in {}", path.display()))
    };
    let service = find("Service");
    assert!(
        service["spec"]["clusterIP"].as_str() == Some("None"),
        "a headless Service"
    );
    let name = service["metadata"]["name"].as_str().expect("a name");
    let namespace = service["metadata"]["namespace"]
        .as_str()
        .expect("a namespace");
    let port = service["spec"]["ports"][0]["port"]
        .as_i64()
        .expect("a port");

    let token_path = "/etc/fulcrum/secret/admin.token";
    let config = find("ConfigMap")["data"]["fulcrum.toml"]
        .as_str()
        .expect("fulcrum.toml in the ConfigMap");
    assert!(config.contains(token_path));
    let dir = common::TempDir::new("k8s-discovery");
    dir.write("admin.token", "0123456789abcdef0123456789abcdef");
    let config = fulcrum::Config::parse(
        &dir.config_file(),
        &config.replace(token_path, "admin.token"),
    )
    .unwrap_or_else(|err| panic!("the ConfigMap's config: {err}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let discover = config
        .pools
        .iter()
        .find_map(|pool| pool.discover.as_ref())
        .expect("a discover pool");
    assert_eq!(
        discover.target,
        fulcrum::config::DiscoverTarget::Name {
            name: format!("{name}.{namespace}.svc.cluster.local").into(),
            port: u16::try_from(port).expect("a port number"),
        }
    );
}
