//! [`ControlledBackend`]: an HTTP/1.1 backend whose answers, health endpoint and very
//! existence (stop, restart on the same port) a test changes while it runs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tcp::accept_until;
use super::{TestBody, full, lock, within};

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

    /// Starts accepting on `listener` (at spawn and after a restart).
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

/// Accepts connections and serves HTTP/1.1 on each until `stop`; a request in
/// [`Mode::ResetAfterRead`] kills its own connection.
async fn controlled_loop(
    listener: TcpListener,
    state: Arc<ControlState>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let Some(stream) = accept_until(&listener, &stop).await else {
            return;
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
            // HTTP/1.1, or HTTP/2 with prior knowledge for pools with `http2 = true`.
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
                () = kill.cancelled() => {}
            }
        });
    }
}

/// Answers probes from the health state and every other request as the current [`Mode`] says.
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
