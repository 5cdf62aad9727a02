//! Test harness for fulcrum's integration tests: real sockets on `127.0.0.1:0`, real hyper
//! servers and clients, no mocks.
//!
//! - [`TestBackend`]: an in-process HTTP/1.1 backend that names itself in every answer and
//!   records every request it receives, with selectable misbehaviour ([`Behaviour`]).
//! - [`TestBalancer`]: a fulcrum [`Server`] built from a generated config, run on the test
//!   runtime, stopped with [`TestBalancer::stop`].
//! - [`TestClient`]: one keep-alive HTTP/1.1 (or HTTP/2 prior-knowledge) client connection,
//!   and [`raw_exchange`] for bytes hyper's client would refuse to send.
//!
//! Every wait in here is bounded; [`bounded`] puts an overall limit on a test body.

#![allow(dead_code)] // each test binary uses a different subset of the harness

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fulcrum::{Config, Server};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Error type of every body in the harness.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type used by the harness's clients and backends.
pub type TestBody = BoxBody<Bytes, BoxError>;

/// Upper bound for a whole test body; generous, it only exists so a hang fails instead of
/// blocking the suite.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// Runs `future`, failing the test if it takes longer than [`TEST_LIMIT`].
pub async fn bounded<T>(future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Awaits `future` for at most `limit`, panicking with `what` on timeout.
pub async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------------------------

/// How a [`TestBackend`] treats every request (routes below apply on top of `Normal`/`Delay`).
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Answers at once.
    Normal,
    /// Waits this long before answering each request.
    Delay(Duration),
    /// Reads and records the request, then never answers.
    Hang,
    /// Accepts TCP connections and resets them immediately, without reading anything
    /// (raw listener, no HTTP; [`TestBackend::request_count`] counts connections instead).
    Reset,
    /// Answers every request with this status (body and `x-served-by` as usual).
    Status(StatusCode),
}

/// One request as the backend saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: Method,
    /// Path of the request target.
    pub path: String,
    /// HTTP version on the backend's connection.
    pub version: Version,
    /// Headers exactly as received.
    pub headers: HeaderMap,
}

/// State shared between a backend's connections and its [`TestBackend`] handle.
struct BackendState {
    name: String,
    behaviour: Behaviour,
    requests: Mutex<Vec<Recorded>>,
    count: AtomicUsize,
    /// TCP connections accepted.
    connections: AtomicUsize,
    /// Every data chunk received on `/upload`, in order, as soon as it arrives.
    uploads: mpsc::UnboundedSender<Bytes>,
    /// Permits that let a `/gated` response send its second chunk.
    gate: Semaphore,
}

/// The `Date` the test backend's `/hop-headers` answer carries.
pub const OLD_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// An in-process HTTP/1.1 backend on `127.0.0.1:0`.
///
/// Every answer carries the backend's name as body and in `x-served-by`. Routes:
/// - `/echo`: streams the request body back as the response body.
/// - `/upload`: forwards each request-body chunk to [`TestBackend::next_upload_chunk`] as it
///   arrives, then answers with the total byte count.
/// - `/gated`: sends the chunk `first`, waits for [`TestBackend::open_gate`], then sends `rest`.
/// - `/chunks/<n>/<ms>`: sends `n` chunks `chunk-<i>;` with `ms` milliseconds between them.
/// - `/slow/<ms>`: answers after `ms` milliseconds.
/// - `/hop-headers`: the response carries hop-by-hop fields (`Keep-Alive`, a field named in
///   `Connection`) plus `x-backend-kept` and a `Date` of 1994 ([`OLD_DATE`]), to check what
///   the proxy lets through.
/// - anything else: the name.
pub struct TestBackend {
    state: Arc<BackendState>,
    address: SocketAddr,
    uploads: tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>,
    stop: CancellationToken,
    connections: TaskTracker,
    accept_loop: Option<JoinHandle<()>>,
}

impl TestBackend {
    /// A well-behaved backend called `name`.
    pub async fn spawn(name: &str) -> TestBackend {
        TestBackend::with_behaviour(name, Behaviour::Normal).await
    }

    /// A backend called `name` that behaves as `behaviour` says.
    pub async fn with_behaviour(name: &str, behaviour: Behaviour) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a test backend on 127.0.0.1:0");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (uploads_tx, uploads_rx) = mpsc::unbounded_channel();
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            behaviour: behaviour.clone(),
            requests: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            uploads: uploads_tx,
            gate: Semaphore::new(0),
        });
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loop = if behaviour == Behaviour::Reset {
            tokio::spawn(reset_loop(listener, Arc::clone(&state), stop.clone()))
        } else {
            tokio::spawn(http_loop(
                listener,
                Arc::clone(&state),
                stop.clone(),
                connections.clone(),
            ))
        };
        TestBackend {
            state,
            address,
            uploads: tokio::sync::Mutex::new(uploads_rx),
            stop,
            connections,
            accept_loop: Some(accept_loop),
        }
    }

    /// The backend's name (its response body and `x-served-by`).
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The address it listens on (still reported after [`TestBackend::stop`]).
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Requests received so far (connections, for [`Behaviour::Reset`]).
    pub fn request_count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connection_count(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open now (their peer has not closed them).
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.requests).clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<Recorded> {
        lock(&self.state.requests).last().cloned()
    }

    /// The next chunk an `/upload` request delivered, waiting at most `limit`.
    pub async fn next_upload_chunk(&self, limit: Duration) -> Bytes {
        let mut uploads = self.uploads.lock().await;
        within(limit, "an upload chunk at the backend", uploads.recv())
            .await
            .expect("the backend state holds the upload sender")
    }

    /// Lets one waiting (or future) `/gated` response send its second chunk.
    pub fn open_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Closes the port and every open connection, and waits for its tasks to end.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(accept_loop) = self.accept_loop.take() {
            within(
                Duration::from_secs(5),
                "the backend accept loop",
                accept_loop,
            )
            .await
            .expect("backend accept loop panicked");
        }
        self.connections.close();
        within(
            Duration::from_secs(5),
            "backend connections to close",
            self.connections.wait(),
        )
        .await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts connections and serves HTTP/1.1 on each until `stop`.
async fn http_loop(
    listener: TcpListener,
    state: Arc<BackendState>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        let stop = stop.clone();
        connections.spawn(async move {
            let service = service_fn(move |request| handle(Arc::clone(&state), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Accepts connections and resets each one at once (SO_LINGER 0 makes the close an RST).
async fn reset_loop(listener: TcpListener, state: Arc<BackendState>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    state.count.fetch_add(1, Ordering::SeqCst);
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    // Best effort: without it the close is a FIN, which still fails the exchange.
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                }
            }
        }
    }
}

/// The backend's answer with `body` and the `x-served-by` header.
fn named(state: &BackendState, status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        "x-served-by",
        HeaderValue::from_str(&state.name).expect("backend names are valid header values"),
    );
    response
}

/// `/a/b/c` → `["a", "b", "c"]` after the given prefix, parsed as numbers.
fn numbers_after(path: &str, prefix: &str) -> Option<Vec<u64>> {
    path.strip_prefix(prefix)?
        .split('/')
        .map(|part| part.parse().ok())
        .collect()
}

async fn handle(
    state: Arc<BackendState>,
    request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = request.uri().path().to_owned();
    lock(&state.requests).push(Recorded {
        method: request.method().clone(),
        path: path.clone(),
        version: request.version(),
        headers: request.headers().clone(),
    });
    state.count.fetch_add(1, Ordering::SeqCst);

    match &state.behaviour {
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::Delay(delay) => tokio::time::sleep(*delay).await,
        Behaviour::Status(status) => {
            return Ok(named(&state, *status, full(state.name.clone())));
        }
        Behaviour::Normal | Behaviour::Reset => {}
    }

    let response = if path == "/echo" {
        let body = request.into_body().map_err(BoxError::from).boxed();
        named(&state, StatusCode::OK, body)
    } else if path == "/upload" {
        let mut body = request.into_body();
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        total += data.len();
                        let _ = state.uploads.send(data);
                    }
                }
                Err(err) => {
                    return Ok(named(
                        &state,
                        StatusCode::BAD_REQUEST,
                        full(format!("upload failed: {err}")),
                    ));
                }
            }
        }
        named(&state, StatusCode::OK, full(total.to_string()))
    } else if path == "/gated" {
        let (tx, body) = channel_body();
        let gate_state = Arc::clone(&state);
        tokio::spawn(async move {
            if tx.send(Bytes::from_static(b"first")).await.is_err() {
                return;
            }
            if let Ok(permit) = gate_state.gate.acquire().await {
                permit.forget();
                let _ = tx.send(Bytes::from_static(b"rest")).await;
            }
        });
        named(&state, StatusCode::OK, body)
    } else if let Some([count, pause_ms]) = numbers_after(&path, "/chunks/").as_deref() {
        let (count, pause) = (*count, Duration::from_millis(*pause_ms));
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if tx.send(Bytes::from(format!("chunk-{i};"))).await.is_err() {
                    return;
                }
            }
        });
        named(&state, StatusCode::OK, body)
    } else if let Some([ms]) = numbers_after(&path, "/slow/").as_deref() {
        tokio::time::sleep(Duration::from_millis(*ms)).await;
        named(&state, StatusCode::OK, full(state.name.clone()))
    } else if path == "/hop-headers" {
        let mut response = named(&state, StatusCode::OK, full(state.name.clone()));
        let headers = response.headers_mut();
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            "connection",
            HeaderValue::from_static("x-backend-hop, keep-alive"),
        );
        headers.insert("x-backend-hop", HeaderValue::from_static("1"));
        headers.insert("x-backend-kept", HeaderValue::from_static("1"));
        headers.insert("date", HeaderValue::from_static(OLD_DATE));
        response
    } else {
        named(&state, StatusCode::OK, full(state.name.clone()))
    };
    Ok(response)
}

/// An address on which nothing listens: bound to `127.0.0.1:0`, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a throwaway listener");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

// ---------------------------------------------------------------------------------------------
// Balancer
// ---------------------------------------------------------------------------------------------

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
        let text = self.config_text();
        let config = Config::parse("test.toml", &text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n--- config ---\n{text}"));
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the test balancer: {err}"));
        let address = server
            .local_addr("web")
            .expect("the listener `web` is bound");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        TestBalancer {
            address,
            config: text,
            shutdown,
            task: Some(task),
        }
    }
}

/// A running fulcrum server with one HTTP listener.
pub struct TestBalancer {
    address: SocketAddr,
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

    /// The client-facing listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// The config the server runs with (for failure messages).
    pub fn config(&self) -> &str {
        &self.config
    }

    /// A new HTTP/1.1 client connection to the listener.
    pub async fn client(&self) -> TestClient {
        TestClient::connect(self.address).await
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

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-served-by` header, if the response came from a [`TestBackend`].
    pub fn served_by(&self) -> Option<&str> {
        self.headers
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
    }

    /// Reads `response` to the end.
    pub async fn collect(response: Response<Incoming>) -> Result<TestResponse, hyper::Error> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<TestBody>),
    Http2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// One client connection; requests on it are sent one after another (keep-alive).
pub struct TestClient {
    sender: Sender,
    connection: JoinHandle<()>,
}

/// The `Host` the client helpers send unless told otherwise.
pub const TEST_HOST: &str = "fulcrum.test";

impl TestClient {
    /// Opens an HTTP/1.1 connection to `address`.
    pub async fn connect(address: SocketAddr) -> TestClient {
        let stream = connect_tcp(address).await;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 client handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        TestClient {
            sender: Sender::Http1(sender),
            connection,
        }
    }

    /// Opens an HTTP/2 connection to `address` with prior knowledge (no upgrade).
    pub async fn connect_h2(address: SocketAddr) -> TestClient {
        let stream = connect_tcp(address).await;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 client handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        TestClient {
            sender: Sender::Http2(sender),
            connection,
        }
    }

    /// Sends `request` and returns the response head with its still-streaming body.
    pub async fn send(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    /// Sends `request` and reads the whole response.
    pub async fn fetch(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<TestResponse, hyper::Error> {
        let response = self.send(request).await?;
        TestResponse::collect(response).await
    }

    /// `GET path` with `Host: fulcrum.test`, read to the end.
    pub async fn get(&mut self, path: &str) -> Result<TestResponse, hyper::Error> {
        self.fetch(get(path)).await
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A `GET path` request with `Host: fulcrum.test` and an empty body.
pub fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, TEST_HOST)
        .body(empty())
        .expect("a valid GET request")
}

async fn connect_tcp(address: SocketAddr) -> TcpStream {
    let stream = within(
        Duration::from_secs(5),
        "a TCP connect",
        TcpStream::connect(address),
    )
    .await
    .unwrap_or_else(|err| panic!("connect to {address}: {err}"));
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
}

/// Writes `bytes` on a fresh TCP connection and returns everything read back until the peer
/// closes the connection or `limit` passes (whichever comes first), as lossy text.
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = connect_tcp(address).await;
    stream.write_all(bytes).await.expect("write raw request");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// A client left in a listener's accept backlog: it connects (the kernel accepts), sends
/// `GET path` with `Connection: close`, and this asserts nothing answers for 300 ms. Read
/// its answer later with [`backlogged_response`].
pub async fn backlogged_request(address: SocketAddr, path: &str) -> TcpStream {
    let mut stream = connect_tcp(address).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {TEST_HOST}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write a request");
    let mut buffer = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "the backlogged client was served: {early:?}"
    );
    stream
}

/// The whole response to a [`backlogged_request`] once the listener takes it (bounded), as
/// lossy text.
pub async fn backlogged_response(mut stream: TcpStream) -> String {
    let mut response = Vec::new();
    within(
        Duration::from_secs(5),
        "the backlogged client's response",
        stream.read_to_end(&mut response),
    )
    .await
    .expect("read the response");
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of the first status line in a raw response, if any.
pub fn raw_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Opens a raw TCP connection to `address`.
pub async fn raw_connect(address: SocketAddr) -> TcpStream {
    connect_tcp(address).await
}

// ---------------------------------------------------------------------------------------------
// Controllable backend (health tests)
// ---------------------------------------------------------------------------------------------

/// What a [`ControlledBackend`] does with a request outside its probe routes. Changeable while
/// it runs ([`ControlledBackend::set_mode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers 200 with its name at once.
    Normal,
    /// Answers this status with its name as body.
    Status(u16),
    /// Records the request, then never answers.
    Hang,
    /// Reads the whole request (head and body), records it, then closes the connection
    /// without answering (with a reset when the mode was already set when it was accepted).
    ResetAfterRead,
}

/// One non-probe request as a [`ControlledBackend`] saw it.
#[derive(Debug, Clone)]
pub struct Hit {
    /// When its head arrived.
    pub at: std::time::Instant,
    /// Request method.
    pub method: Method,
    /// Path of the request target.
    pub path: String,
    /// The request body (read only in [`Mode::ResetAfterRead`]; empty otherwise).
    pub body: Bytes,
}

struct ControlState {
    name: String,
    mode: Mutex<Mode>,
    /// Status `/health` answers.
    health: std::sync::atomic::AtomicU16,
    /// While `true`, `/health` waits before answering.
    hold: tokio::sync::watch::Sender<bool>,
    /// Arrival times of probe requests (`/health`, `/status/<code>`).
    probes: Mutex<Vec<std::time::Instant>>,
    /// Every other request.
    hits: Mutex<Vec<Hit>>,
}

struct Running {
    stop: CancellationToken,
    accept_loop: JoinHandle<()>,
    connections: TaskTracker,
}

/// An HTTP/1.1 backend on `127.0.0.1:0` that can be reconfigured, stopped and restarted on the
/// same port while a test runs.
///
/// Probe routes, answered whatever the [`Mode`]:
/// - `/health`: the status set by [`ControlledBackend::set_health`] (200 at first), after
///   waiting while [`ControlledBackend::hold_health`] holds it.
/// - `/status/<code>`: that status.
///
/// Probe requests are only counted with their arrival time ([`ControlledBackend::probes`]);
/// every other request is recorded as a [`Hit`] and handled as the current [`Mode`] says.
/// Answers carry the name as body and in `x-served-by`.
pub struct ControlledBackend {
    state: Arc<ControlState>,
    address: SocketAddr,
    running: Option<Running>,
}

impl ControlledBackend {
    /// A backend called `name` in [`Mode::Normal`] with a passing `/health`.
    pub async fn spawn(name: &str) -> ControlledBackend {
        ControlledBackend::with_mode(name, Mode::Normal).await
    }

    /// A backend called `name` in `mode` with a passing `/health`.
    pub async fn with_mode(name: &str, mode: Mode) -> ControlledBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a controlled backend on 127.0.0.1:0");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(ControlState {
            name: name.to_owned(),
            mode: Mutex::new(mode),
            health: std::sync::atomic::AtomicU16::new(200),
            hold: tokio::sync::watch::Sender::new(false),
            probes: Mutex::new(Vec::new()),
            hits: Mutex::new(Vec::new()),
        });
        let mut backend = ControlledBackend {
            state,
            address,
            running: None,
        };
        backend.serve(listener);
        backend
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept_loop = tokio::spawn(controlled_loop(
            listener,
            Arc::clone(&self.state),
            stop.clone(),
            connections.clone(),
        ));
        self.running = Some(Running {
            stop,
            accept_loop,
            connections,
        });
    }

    /// The backend's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The address it listens on (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.address
    }

    /// Changes how non-probe requests are handled from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.state.mode) = mode;
    }

    /// Sets the status `/health` answers.
    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// While `held`, `/health` requests wait (without answering) until released.
    pub fn hold_health(&self, held: bool) {
        self.state.hold.send_replace(held);
    }

    /// Arrival times of every probe request so far.
    pub fn probes(&self) -> Vec<std::time::Instant> {
        lock(&self.state.probes).clone()
    }

    /// Number of probe requests so far.
    pub fn probe_count(&self) -> usize {
        lock(&self.state.probes).len()
    }

    /// Probe requests that arrived at or after `since`.
    pub fn probes_since(&self, since: std::time::Instant) -> Vec<std::time::Instant> {
        lock(&self.state.probes)
            .iter()
            .copied()
            .filter(|at| *at >= since)
            .collect()
    }

    /// Every non-probe request so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        lock(&self.state.hits).clone()
    }

    /// Number of non-probe requests so far.
    pub fn hit_count(&self) -> usize {
        lock(&self.state.hits).len()
    }

    /// Arrival times of the non-probe requests that arrived at or after `since`.
    pub fn hits_since(&self, since: std::time::Instant) -> Vec<std::time::Instant> {
        lock(&self.state.hits)
            .iter()
            .map(|hit| hit.at)
            .filter(|at| *at >= since)
            .collect()
    }

    /// Closes the port and every open connection (like a killed process), and waits for its
    /// tasks to end. Counters survive.
    pub async fn stop(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        running.stop.cancel();
        within(
            Duration::from_secs(5),
            "the controlled backend's accept loop",
            running.accept_loop,
        )
        .await
        .expect("controlled backend accept loop panicked");
        running.connections.close();
        within(
            Duration::from_secs(5),
            "controlled backend connections to close",
            running.connections.wait(),
        )
        .await;
    }

    /// Listens again on the same address after [`ControlledBackend::stop`].
    pub async fn restart(&mut self) {
        assert!(self.running.is_none(), "restart of a running backend");
        let listener = TcpListener::bind(self.address)
            .await
            .unwrap_or_else(|err| panic!("rebind {}: {err}", self.address));
        self.serve(listener);
    }
}

impl Drop for ControlledBackend {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.stop.cancel();
        }
    }
}

async fn controlled_loop(
    listener: TcpListener,
    state: Arc<ControlState>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        if *lock(&state.mode) == Mode::ResetAfterRead {
            // Best effort: makes the close an RST; a FIN fails the exchange just as well.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
        let state = Arc::clone(&state);
        let stop = stop.clone();
        let kill = CancellationToken::new();
        connections.spawn(async move {
            let service_kill = kill.clone();
            let service = service_fn(move |request| {
                controlled_handle(Arc::clone(&state), request, service_kill.clone())
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
                () = kill.cancelled() => {}
            }
        });
    }
}

async fn controlled_handle(
    state: Arc<ControlState>,
    request: Request<Incoming>,
    kill: CancellationToken,
) -> Result<Response<TestBody>, Infallible> {
    let at = std::time::Instant::now();
    let path = request.uri().path().to_owned();
    let name = state.name.clone();
    let answer = move |status: u16| {
        let mut response = Response::new(full(name.clone()));
        *response.status_mut() = StatusCode::from_u16(status).expect("a valid status code");
        response.headers_mut().insert(
            "x-served-by",
            HeaderValue::from_str(&name).expect("backend names are valid header values"),
        );
        Ok(response)
    };
    if path == "/health" {
        lock(&state.probes).push(at);
        let mut hold = state.hold.subscribe();
        let _ = hold.wait_for(|held| !*held).await;
        return answer(state.health.load(Ordering::SeqCst));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        lock(&state.probes).push(at);
        return answer(code.parse().unwrap_or(400));
    }
    let mode = *lock(&state.mode);
    let method = request.method().clone();
    let body = if mode == Mode::ResetAfterRead {
        match tokio::time::timeout(Duration::from_secs(2), request.into_body().collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            _ => Bytes::new(),
        }
    } else {
        Bytes::new()
    };
    lock(&state.hits).push(Hit {
        at,
        method,
        path,
        body,
    });
    match mode {
        Mode::Normal => answer(200),
        Mode::Status(status) => answer(status),
        Mode::Hang => std::future::pending().await,
        Mode::ResetAfterRead => {
            kill.cancel();
            std::future::pending().await
        }
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

// ---------------------------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------------------------

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
        let text = self.config_text_with_admin();
        let config = Config::parse("test.toml", &text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n--- config ---\n{text}"));
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the test balancer: {err}"));
        let address = server
            .local_addr("web")
            .expect("the listener `web` is bound");
        let admin = server.admin_addr().expect("the admin listener is bound");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        let balancer = TestBalancer {
            address,
            config: text,
            shutdown,
            task: Some(task),
        };
        (balancer, admin)
    }
}

/// `GET path` on the admin listener at `admin`, on a fresh connection, read to the end.
pub async fn admin_get(admin: SocketAddr, path: &str) -> TestResponse {
    let mut client = TestClient::connect(admin).await;
    within(
        Duration::from_secs(5),
        "an admin response",
        client.get(path),
    )
    .await
    .unwrap_or_else(|err| panic!("GET {path} on the admin listener: {err}"))
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

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The config file name to hand to `Config::parse` (never written).
    pub fn config_file(&self) -> String {
        self.join("fulcrum.toml").to_string_lossy().into_owned()
    }

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

/// Longer than fulcrum takes to park a quiet HTTP/1 connection (one to two seconds), so a test
/// that sleeps this long between requests goes through a park and a wake.
pub const PAST_PARKING: Duration = Duration::from_millis(2500);
