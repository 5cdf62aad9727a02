//! [`TestBalancer`]: a fulcrum server on the test runtime, from a [`BalancerBuilder`] (one HTTP
//! listener, one pool) or from config text a test wrote itself (TLS, TCP, several listeners).

use std::net::SocketAddr;
use std::time::Duration;

use fulcrum::{Config, Server};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::client::{TestClient, TestResponse};
use super::tcp::raw_connect;
use super::within;

/// Builds the config of a [`TestBalancer`]: one listener `web` on `127.0.0.1:0` forwarding to
/// one pool `app` (or the name given to [`BalancerBuilder::pool_name`]).
#[derive(Debug, Clone)]
pub struct BalancerBuilder {
    pool_name: &'static str,
    backends: Vec<(SocketAddr, u32)>,
    algorithm: &'static str,
    listener_settings: Vec<String>,
    pool_settings: Vec<String>,
}

impl BalancerBuilder {
    /// Adds a backend of weight 1.
    pub fn backend(self, address: SocketAddr) -> Self {
        self.weighted(address, 1)
    }

    /// Adds a backend with the given weight.
    pub fn weighted(mut self, address: SocketAddr, weight: u32) -> Self {
        self.backends.push((address, weight));
        self
    }

    /// `"round_robin"` (the default) or `"least_connections"`.
    pub fn algorithm(mut self, algorithm: &'static str) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets a key of the `[[listeners]]` entry; `value` is TOML (`"\"300ms\""`, `"8192"`).
    pub fn listener(mut self, key: &str, value: &str) -> Self {
        self.listener_settings.push(format!("{key} = {value}"));
        self
    }

    /// Names the pool (default `app`): metrics are process-wide, so tests that read a pool's
    /// series give it a name of their own.
    pub fn pool_name(mut self, name: &'static str) -> Self {
        self.pool_name = name;
        self
    }

    /// Sets a key of `[pools.app]`; `value` is TOML (`"\"300ms\""`, `"2"`).
    pub fn pool(mut self, key: &str, value: &str) -> Self {
        self.pool_settings.push(format!("{key} = {value}"));
        self
    }

    /// The config file this builder describes.
    pub fn config_text(&self) -> String {
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(address, weight)| format!("{{ address = \"{address}\", weight = {weight} }}"))
            .collect();
        format!(
            "[runtime]\nshutdown_timeout = \"2s\"\n\n\
             [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"{pool}\"\n{}\n\n\
             [pools.{pool}]\nalgorithm = \"{}\"\nbackends = [{}]\n{}\n",
            self.listener_settings.join("\n"),
            self.algorithm,
            backends.join(", "),
            self.pool_settings.join("\n"),
            pool = self.pool_name,
        )
    }

    /// Parses the config, binds the server and runs it on the current runtime.
    pub async fn start(self) -> TestBalancer {
        TestBalancer::from_config("test.toml", &self.config_text(), "web").await
    }
}

impl BalancerBuilder {
    /// The config text of [`BalancerBuilder::config_text`] plus an `[admin]` section listening
    /// on `127.0.0.1:0` (metrics on).
    pub fn config_text_with_admin(&self) -> String {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
            self.config_text()
        )
    }

    /// Like [`BalancerBuilder::start`], with an admin listener on `127.0.0.1:0`; returns the
    /// balancer and the admin listener's address.
    pub async fn start_with_admin(self) -> (TestBalancer, SocketAddr) {
        let balancer =
            TestBalancer::from_config("test.toml", &self.config_text_with_admin(), "web").await;
        let admin = balancer.admin_addr();
        (balancer, admin)
    }
}

/// A running fulcrum server; [`TestBalancer::addr`] is the address of one of its listeners.
pub struct TestBalancer {
    address: SocketAddr,
    admin: Option<SocketAddr>,
    config: String,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TestBalancer {
    /// A builder with no backends, round-robin, default settings.
    pub fn builder() -> BalancerBuilder {
        BalancerBuilder {
            pool_name: "app",
            backends: Vec::new(),
            algorithm: "round_robin",
            listener_settings: Vec::new(),
            pool_settings: Vec::new(),
        }
    }

    /// Parses `text` as the config file `file` (relative paths in it, such as certificate
    /// files, resolve next to `file`, which is never read), binds the server and runs it on the
    /// current runtime; [`TestBalancer::addr`] reports the listener named `listener`.
    pub async fn from_config(file: &str, text: &str, listener: &str) -> TestBalancer {
        let config = Config::parse(file, text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n--- config ---\n{text}"));
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the test balancer: {err}"));
        let address = server
            .local_addr(listener)
            .unwrap_or_else(|| panic!("the listener `{listener}` is bound"));
        let admin = server.admin_addr();
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        TestBalancer {
            address,
            admin,
            config: text.to_owned(),
            shutdown,
            task: Some(task),
        }
    }

    /// The client-facing listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// The config the server runs with (for failure messages).
    pub fn config(&self) -> &str {
        &self.config
    }

    /// The admin listener's address (the config must have an `[admin]` section).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the admin listener is bound")
    }

    /// A new HTTP/1.1 client connection to the listener.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.address).await
    }

    /// A new raw TCP connection to the listener (TCP listeners, or bytes hyper would not send).
    pub async fn connect(&self) -> TcpStream {
        raw_connect(self.address).await
    }

    /// Triggers graceful shutdown and hands back the server's task without waiting for it, so
    /// a test can watch the drain.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        self.shutdown.cancel();
        self.task.take().expect("the balancer is running")
    }

    /// Triggers graceful shutdown and waits (bounded) for the server to drain and return.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(Duration::from_secs(10), "the balancer to shut down", task)
                .await
                .expect("the balancer task panicked");
        }
    }
}

impl Drop for TestBalancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `GET path` on the admin listener at `admin` (`Host` its address, no token), on a fresh
/// connection, read to the end.
pub async fn admin_get(admin: SocketAddr, path: &str) -> TestResponse {
    admin_request(admin, http::Method::GET, path, &[]).await
}

/// `method path` on the admin listener at `admin` with the extra `fields` (and `Host` its
/// address unless `fields` has one), on a fresh connection, read to the end.
pub async fn admin_request(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    fields: &[(&str, &str)],
) -> TestResponse {
    let mut client = TestClient::connect(admin).await;
    let mut request = http::Request::builder().method(&method).uri(path);
    if !fields
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header(http::header::HOST, admin.to_string());
    }
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let request = request.body(super::empty()).expect("an admin request");
    within(
        Duration::from_secs(5),
        "an admin response",
        client.fetch(request),
    )
    .await
    .unwrap_or_else(|err| panic!("{method} {path} on the admin listener: {err}"))
}
