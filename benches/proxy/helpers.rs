//! The roles this executable plays as a child process, so the orchestrator can pin them to a
//! core and read their CPU time from `/proc`: the backends (`--serve-http`, `--serve-tcp`) and
//! the built-in load generators (`--http-load` where wrk is missing, `--tcp-load`). The load
//! generators print the same report line as wrk's script.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

use crate::Result;
use crate::load::{LoadResult, REPORT_TAG, latency_percentiles};

/// Helpers give up on their own after this long, whatever happens to the parent.
const HELPER_LIFETIME: Duration = Duration::from_secs(3600);

/// Runs a helper that exits when its parent is gone or after `HELPER_LIFETIME`.
pub fn helper(run: fn(&[String]) -> Result<()>, args: &[String]) -> Result<()> {
    let parent = std::os::unix::process::parent_id();
    let born = Instant::now();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent || born.elapsed() > HELPER_LIFETIME {
                std::process::exit(0);
            }
        }
    });
    run(args)
}

/// The `index`th argument parsed, or an error naming `what`.
fn arg<T: std::str::FromStr>(args: &[String], index: usize, what: &str) -> Result<T> {
    args.get(index)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("missing or invalid {what}").into())
}

/// Tells the parent the listener's port on stdout's first line (`PORT N`).
fn announce(address: SocketAddr) -> Result<()> {
    let port = address.port();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "PORT {port}")?;
    stdout.flush()?;
    Ok(())
}

/// `--serve-http BYTES`: answers every request with BYTES bytes, HTTP/1.1 keep-alive and
/// HTTP/2 prior knowledge, on one thread.
pub fn serve_http(args: &[String]) -> Result<()> {
    let size: usize = arg(args, 0, "response size")?;
    let body = Bytes::from(vec![b'x'; size]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // fulcrum's own bind, with the longest accept backlog the kernel allows: a proxy opening
        // a thousand upstream connections at once overflows the 128 of `TcpListener::bind`, and
        // the dropped SYNs' one-second retries showed up as every contender's p99.9 at 1,000
        // connections.
        let listener = fulcrum::server::accept::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        announce(listener.local_addr()?)?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // EMFILE and friends: back off and keep serving.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            // Nagle only adds latency to small responses.
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request: Request<Incoming>| {
                    let mut response = Response::new(Full::new(body.clone()));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain"),
                    );
                    async move { Ok::<_, Infallible>(response) }
                });
                let server = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                // A client going away mid-request is normal under load.
                let _ = server.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    })
}

/// `--serve-tcp`: reads and discards everything on every connection.
pub fn serve_tcp(_args: &[String]) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    announce(listener.local_addr()?)?;
    loop {
        let Ok((mut stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 256 * 1024];
            while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
        });
    }
}

/// `--http-load ADDR CONNECTIONS SECONDS CLOSE(0|1)`: closed loop, one request in flight per
/// connection, like wrk.
pub fn http_load(args: &[String]) -> Result<()> {
    let addr: SocketAddr = arg(args, 0, "address")?;
    let connections: usize = arg(args, 1, "connections")?;
    let seconds: f64 = arg(args, 2, "seconds")?;
    let close = arg::<u8>(args, 3, "close flag")? == 1;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(seconds);
    let results = runtime.block_on(async move {
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(http_connection(addr, deadline, close)))
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.push(task.await.unwrap_or_default());
        }
        all
    });
    let elapsed = started.elapsed();
    let mut total = LoadResult::default();
    let mut latencies = Vec::new();
    for (samples, result) in results {
        latencies.extend(samples);
        total.errors_connect += result.errors_connect;
        total.errors_io += result.errors_io;
        total.errors_status += result.errors_status;
        total.errors_timeout += result.errors_timeout;
    }
    latencies.sort_unstable();
    let [p50, p99, p999, p9999] = latency_percentiles(&latencies);
    println!(
        "{REPORT_TAG} {} {} {} {} {} {} {p50} {p99} {p999} {p9999} 0",
        latencies.len(),
        elapsed.as_micros(),
        total.errors_connect,
        total.errors_io,
        total.errors_status,
        total.errors_timeout,
    );
    Ok(())
}

/// One client connection of the built-in generator: latencies in µs and error counts.
async fn http_connection(
    addr: SocketAddr,
    deadline: tokio::time::Instant,
    close: bool,
) -> (Vec<u32>, LoadResult) {
    let mut samples = Vec::new();
    let mut result = LoadResult::default();
    let grace = deadline + Duration::from_secs(2);
    'connect: while tokio::time::Instant::now() < deadline {
        let Ok(Ok(stream)) =
            tokio::time::timeout_at(grace, tokio::net::TcpStream::connect(addr)).await
        else {
            result.errors_connect += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            result.errors_connect += 1;
            continue;
        };
        // The connection's own error surfaces through `send_request` as well.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        while tokio::time::Instant::now() < deadline {
            let mut request = Request::get("/");
            request = request.header(http::header::HOST, "127.0.0.1");
            if close {
                request = request.header(http::header::CONNECTION, "close");
            }
            let Ok(request) = request.body(Empty::<Bytes>::new()) else {
                return (samples, result);
            };
            let began = Instant::now();
            let exchange = async {
                let response = sender.send_request(request).await?;
                let ok = response.status().is_success();
                response.into_body().collect().await?;
                Ok::<bool, hyper::Error>(ok)
            };
            match tokio::time::timeout_at(grace, exchange).await {
                Err(_) => {
                    result.errors_timeout += 1;
                    continue 'connect;
                }
                Ok(Err(_)) => {
                    result.errors_io += 1;
                    continue 'connect;
                }
                Ok(Ok(ok)) => {
                    if !ok {
                        result.errors_status += 1;
                    }
                    samples.push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
                }
            }
            if close || sender.ready().await.is_err() {
                continue 'connect;
            }
        }
    }
    (samples, result)
}

/// `--tcp-load ADDR CONNECTIONS SECONDS`: each connection writes 64 KiB chunks as fast as it
/// can; prints the bytes written.
pub fn tcp_load(args: &[String]) -> Result<()> {
    let addr: SocketAddr = arg(args, 0, "address")?;
    let connections: usize = arg(args, 1, "connections")?;
    let seconds: f64 = arg(args, 2, "seconds")?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || -> (u64, u64) {
                let Ok(mut stream) = TcpStream::connect(addr) else {
                    return (0, 1);
                };
                let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                let chunk = vec![b'y'; 64 * 1024];
                let mut sent = 0u64;
                while Instant::now() < deadline {
                    match stream.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(_) => return (sent, 1),
                    }
                }
                (sent, 0)
            })
        })
        .collect();
    let mut bytes = 0;
    let mut errors = 0;
    for thread in threads {
        let (sent, failed) = thread.join().unwrap_or((0, 1));
        bytes += sent;
        errors += failed;
    }
    println!(
        "{REPORT_TAG} 0 {} 0 {errors} 0 0 0 0 0 0 {bytes}",
        started.elapsed().as_micros()
    );
    Ok(())
}
