//! A tiny HTTP application server for demos, manual testing and benchmarks
//! of `fulcrum`.
//!
//! It speaks HTTP/1.1 and cleartext HTTP/2 (h2c) on one port and prints a
//! single line, `listening on http://ADDR name=NAME`, to stdout once bound,
//! so a parent process can learn the port when started with `--port 0`.
//!
//! ```text
//! cargo run --example backend -- --port 9001 --name a --delay 20ms --fail-rate 0.1
//! ```
//!
//! Routes (every response carries `X-Served-By: NAME`):
//!
//! * `GET /health` – `200 ok` (never affected by `--fail-rate`)
//! * `/slow/<millis>` – sleeps, then answers with the instance name
//! * `/status/<code>` – answers with that status code
//! * `/bytes/<n>` – streams an `n`-byte body in 64 KiB chunks
//! * `/echo` – streams the request body back, keeping its content type
//! * `/headers` – the request line and headers as plain text
//! * anything else – `NAME\n`
//!
//! `--delay` is applied before every response; `--fail-rate r` makes exactly
//! a fraction `r` of requests (deterministically spread) answer `500`.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
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

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Example HTTP backend for fulcrum demos and benchmarks")]
struct Args {
    /// Port to listen on (0 picks an ephemeral port).
    #[arg(long)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Instance name, returned in bodies and the `X-Served-By` header.
    #[arg(long, default_value = "backend", value_parser = parse_name)]
    name: HeaderValue,
    /// Delay before every response, e.g. `200ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Fraction of requests (0..=1) that answer 500.
    #[arg(long, value_parser = parse_rate)]
    fail_rate: Option<f64>,
}

fn parse_name(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|e| format!("not a valid header value: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a number between 0 and 1")),
    }
}

/// Per-process state shared by all connections.
struct State {
    name: HeaderValue,
    delay: Option<Duration>,
    fail_rate: f64,
    requests: AtomicU64,
}

impl State {
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

/// A complete in-memory body.
fn full(data: impl Into<Bytes>) -> ResBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response with the given status and body.
fn respond(status: StatusCode, body: ResBody) -> Response<ResBody> {
    let mut res = Response::new(body);
    *res.status_mut() = status;
    res
}

fn bad_request(what: &str) -> Response<ResBody> {
    respond(StatusCode::BAD_REQUEST, full(format!("bad {what}\n")))
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
    let name = String::from_utf8_lossy(state.name.as_bytes()).into_owned();
    let mut res = if path == "/health" {
        respond(StatusCode::OK, full("ok"))
    } else if state.should_fail() {
        respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            full("injected failure\n"),
        )
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                respond(StatusCode::OK, full(format!("{name}\n")))
            }
            Err(_) => bad_request("millis"),
        }
    } else if let Some(code) = path.strip_prefix("/status/") {
        match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => respond(code, full(format!("{code}\n"))),
            None => bad_request("status code"),
        }
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        match n.parse::<u64>() {
            Ok(n) => respond(StatusCode::OK, FillerBody { remaining: n }.boxed()),
            Err(_) => bad_request("length"),
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
        let mut text = format!("{} {} {:?}\n", req.method(), target, req.version());
        for (key, value) in req.headers() {
            text.push_str(&format!(
                "{key}: {}\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        respond(StatusCode::OK, full(text))
    } else {
        respond(StatusCode::OK, full(format!("{name}\n")))
    };
    res.headers_mut().insert("x-served-by", state.name.clone());
    Ok(res)
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() {
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

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(SocketAddr::new(args.host, args.port)).await?;
    let name = String::from_utf8_lossy(args.name.as_bytes()).into_owned();
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "listening on http://{} name={name}",
        listener.local_addr()?
    )
    .expect("write to stdout");
    stdout.flush().expect("flush stdout");
    drop(stdout);

    let state = Arc::new(State {
        name: args.name,
        delay: args.delay,
        fail_rate: args.fail_rate.unwrap_or(0.0),
        requests: AtomicU64::new(0),
    });
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
    let shutdown = shutdown_signal();
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
    eprintln!("{name}: shutting down");
    Ok(())
}
