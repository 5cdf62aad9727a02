//! The example app server shared by the `backend` and `demo` examples: routes, failure
//! injection and an accept loop. See `examples/backend.rs` for the routes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;

/// Response body type shared by all routes.
type ResBody = BoxBody<Bytes, hyper::Error>;

/// Per-process state shared by all connections.
pub struct State {
    name: HeaderValue,
    name_str: String,
    delay: Option<Duration>,
    fail_rate: f64,
    requests: AtomicU64,
}

impl State {
    /// State for an instance called `name` (must be a valid header value).
    pub fn new(name: HeaderValue, delay: Option<Duration>, fail_rate: f64) -> Self {
        Self {
            name_str: String::from_utf8_lossy(name.as_bytes()).into_owned(),
            name,
            delay,
            fail_rate,
            requests: AtomicU64::new(0),
        }
    }

    /// True when request number `n` (1-based) should fail: the integer part of
    /// `n * rate` steps up exactly `rate * N` times over `N` requests.
    fn should_fail(&self) -> bool {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        (n as f64 * self.fail_rate).floor() > ((n - 1) as f64 * self.fail_rate).floor()
    }
}

/// 64 KiB of filler, shared by every `/bytes` response.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// A body of `remaining` filler bytes, produced one chunk at a time.
struct FillerBody {
    remaining: u64,
}

impl Body for FillerBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = this.remaining.min(CHUNK.len() as u64) as usize;
        this.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..len])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A response with the given status and body.
fn respond(status: StatusCode, body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res
}

/// A response with an in-memory text body.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResBody> {
    let body = Full::new(body.into()).map_err(|never| match never {});
    respond(status, body.boxed())
}

/// Routes one request.
async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    if let Some(delay) = state.delay {
        tokio::time::sleep(delay).await;
    }
    let path = req.uri().path().to_owned();
    let bad = |what: &str| text(StatusCode::BAD_REQUEST, format!("bad {what}\n"));
    let mut res = if path == "/health" {
        text(StatusCode::OK, "ok")
    } else if state.should_fail() {
        text(StatusCode::INTERNAL_SERVER_ERROR, "injected failure\n")
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        match ms.parse() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("{}\n", state.name_str))
            }
            Err(_) => bad("millis"),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match StatusCode::from_bytes(code.as_bytes()) {
            Ok(code) => text(code, format!("{code}\n")),
            Err(_) => bad("status code"),
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse() {
            Ok(remaining) => respond(StatusCode::OK, FillerBody { remaining }.boxed()),
            Err(_) => bad("length"),
        }
    } else if path == "/echo" {
        let content_type = req.headers().get(CONTENT_TYPE).cloned();
        let mut res = respond(StatusCode::OK, req.into_body().boxed());
        if let Some(ct) = content_type {
            res.headers_mut().insert(CONTENT_TYPE, ct);
        }
        res
    } else if path == "/headers" {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut dump = format!("{} {target} {:?}\n", req.method(), req.version());
        for (key, value) in req.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            dump.push_str(&format!("{key}: {value}\n"));
        }
        text(StatusCode::OK, dump)
    } else {
        text(StatusCode::OK, format!("{}\n", state.name_str))
    };
    res.headers_mut().insert("x-served-by", state.name.clone());
    Ok(res)
}

/// Serves `listener` with `state` until `shutdown` completes. Accept errors are logged and
/// retried after 50 ms; the loop never dies.
pub async fn serve(listener: TcpListener, state: Arc<State>, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("accept error: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("set TCP_NODELAY for {peer}: {e}");
        }
        let (state, builder) = (state.clone(), builder.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection {peer}: {e}");
            }
        });
    }
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => drop(s.recv().await),
            Err(e) => {
                eprintln!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
