//! [`TestBackend`]: an in-process HTTP/1.1 backend with routes that stream, hang, gate or
//! misbehave on demand, recording every request it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tcp::accept_until;
use super::{BoxError, TestBody, channel_body, full, lock, within};

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

/// Accepts connections and serves HTTP/1.1 on each until `stop`.
async fn http_loop(
    listener: TcpListener,
    state: Arc<BackendState>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let Some(stream) = accept_until(&listener, &stop).await else {
            return;
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

/// Records `request`, then answers as the backend's behaviour and the route say.
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
