//! The idle scenarios (idle-2k, idle-10k): what a proxy's memory costs when idle and when
//! holding thousands of idle keep-alive client connections that have each served one request.
//! This process opens the connections itself and then leaves them untouched for the scenario's
//! quiet time.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::contenders::{Contender, start_backend, start_proxy};
use crate::environment::Environment;
use crate::load::LoadResult;
use crate::report::{IdleRun, Run};
use crate::sampling::{own_ticks, peak_rss_kib, rss_kib};
use crate::scenarios::{IdleShape, Scenario};
use crate::{Error, Result};

/// Exchanges in flight while connections are being opened, so that the backend
/// side stays small and the proxy never sees an accept-queue overflow.
const IDLE_OPEN_CONCURRENCY: usize = 100;
/// One connect + request + response may take this long.
const IDLE_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Opening all the connections may take this long; the rest count as failed.
const IDLE_OPEN_BUDGET: Duration = Duration::from_secs(20);
/// Pause after the proxy starts and after the connections close, before RSS is
/// read (lets allocators and lazily started tasks settle).
const IDLE_SETTLE: Duration = Duration::from_secs(1);

/// The proxy's RSS idle, then with `scenario.connections` idle keep-alive client connections,
/// each of which has had one complete request and response and then `shape.quiet` of quiet.
pub fn measure_idle(
    env: &Environment,
    scenario: &Scenario,
    shape: IdleShape,
    contender: Contender,
) -> Result<Run> {
    let backend = start_backend(env, scenario, 0)?;
    let proxy = start_proxy(env, scenario, contender, &[backend.addr])?;
    let pid = proxy.guard.pid();
    std::thread::sleep(IDLE_SETTLE);
    let rss_idle_kib = rss_kib(pid).ok_or("cannot read the proxy's VmRSS")?;
    let (ticks_before, backend_before) = (own_ticks(pid), own_ticks(backend.guard.pid()));
    let began = Instant::now();
    let (streams, failed) = open_idle_connections(proxy.addr, scenario.connections)?;
    let open_seconds = began.elapsed().as_secs_f64();
    let proxy_ticks = own_ticks(pid).saturating_sub(ticks_before);
    let backend_ticks = own_ticks(backend.guard.pid()).saturating_sub(backend_before);
    std::thread::sleep(shape.quiet);
    let rss_loaded_kib = rss_kib(pid).ok_or("cannot read the proxy's VmRSS")?;
    let parked = proxy.admin.and_then(parked_connections);
    let still_open = streams.iter().filter(|stream| still_open(stream)).count();
    let peak_rss_kib = peak_rss_kib(pid);
    let opened = streams.len();
    // Resets every connection at once (SO_LINGER 0): nothing is left in TIME_WAIT.
    drop(streams);
    if opened == 0 {
        let said = std::fs::read_to_string(&proxy.log).unwrap_or_default();
        return Err(format!("no connection got a response; proxy said: {said}").into());
    }
    std::thread::sleep(IDLE_SETTLE);
    let rss_closed_kib = rss_kib(pid).ok_or("cannot read the proxy's VmRSS")?;
    Ok(Run {
        load: LoadResult {
            requests: opened as u64,
            seconds: open_seconds,
            errors_io: failed as u64,
            ..LoadResult::default()
        },
        rate: opened as f64 / open_seconds,
        proxy_cpu_us_per_op: Some(proxy_ticks as f64 / env.ticks * 1e6 / opened as f64),
        proxy_user_us_per_op: None,
        proxy_system_us_per_op: None,
        proxy_core: Some(proxy_ticks as f64 / env.ticks / open_seconds),
        // The client side is this process: only the backend's share is known.
        client_core: backend_ticks as f64 / env.ticks / open_seconds,
        peak_rss_kib,
        idle: Some(IdleRun {
            rss_idle_kib,
            rss_loaded_kib,
            rss_closed_kib,
            opened,
            failed,
            still_open,
            parked,
            open_seconds,
        }),
    })
}

/// Opens `count` connections to `addr`, at most `IDLE_OPEN_CONCURRENCY` exchanges at a time,
/// within `IDLE_OPEN_BUDGET`. Returns the connections that got their response (nonblocking
/// std sockets, left idle) and how many did not.
fn open_idle_connections(addr: SocketAddr, count: usize) -> Result<(Vec<TcpStream>, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let opened = runtime.block_on(async move {
        let deadline = tokio::time::Instant::now() + IDLE_OPEN_BUDGET;
        let mut tasks = tokio::task::JoinSet::new();
        let (mut open, mut failed, mut started) = (Vec::with_capacity(count), 0, 0);
        loop {
            while started < count && tasks.len() < IDLE_OPEN_CONCURRENCY {
                tasks.spawn(idle_connection(addr));
                started += 1;
            }
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(None) => break,
                Ok(Some(Ok(Ok(stream)))) => open.push(stream),
                Ok(Some(_)) => failed += 1,
                Err(_) => {
                    failed += tasks.len() + (count - started);
                    tasks.abort_all();
                    break;
                }
            }
        }
        (open, failed)
    });
    Ok(opened)
}

/// One idle connection: connect, one keep-alive GET, the whole response; then handed
/// back as a std socket so nothing in this process polls it.
async fn idle_connection(addr: SocketAddr) -> Result<TcpStream> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // Closing sends a reset: thousands of connections leave no TIME_WAIT behind.
        socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO))?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: fulcrum-bench\r\n\r\n")
            .await?;
        read_keepalive_response(&mut stream).await?;
        Ok::<_, Error>(stream.into_std()?)
    };
    tokio::time::timeout(IDLE_EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| "no response in time")?
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; fails unless it is a 2xx that
/// keeps the connection open.
async fn read_keepalive_response(stream: &mut tokio::net::TcpStream) -> Result<()> {
    let mut buffer = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("connection closed before a complete response".into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(head_end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") else {
            if buffer.len() > 16 * 1024 {
                return Err("response head too long".into());
            }
            continue;
        };
        let head = std::str::from_utf8(&buffer[..head_end])?.to_ascii_lowercase();
        if !head.starts_with("http/1.1 2") {
            let status = head.lines().next().unwrap_or_default();
            return Err(format!("unexpected status line {status:?}").into());
        }
        let header = |name: &str| {
            head.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        if header("connection") == Some("close") {
            return Err("the response closes the connection".into());
        }
        let length: usize = header("content-length")
            .and_then(|length| length.parse().ok())
            .ok_or("response without a content-length")?;
        let have = buffer.len() - head_end - 4;
        if have > length {
            return Err("more bytes than the response".into());
        }
        if have == length {
            return Ok(());
        }
    }
}

/// fulcrum's `fulcrum_connections_parked` gauge (summed over listeners), scraped from its admin
/// listener; `None` if it cannot be read.
fn parked_connections(admin: SocketAddr) -> Option<usize> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let values: Vec<f64> = text
        .lines()
        .filter(|line| line.starts_with("fulcrum_connections_parked{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as usize)
}

/// Whether the peer has neither closed nor reset `stream` (a nonblocking socket).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}
