//! End-to-end throughput and latency: fulcrum side by side with the backend alone (the
//! ceiling), nginx and HAProxy, on loopback. See `benches/README.md` for the scenarios, the
//! contenders' configs and how to read the output.
//!
//! ```sh
//! cargo bench --bench proxy -- --quick     # 1 round of 1 s per contender: under a minute
//! cargo bench --bench proxy                # 3 rounds of 10 s (+1 s warm-up), medians reported
//! cargo bench --bench proxy -- --help      # every option
//! ```
//!
//! The same executable also plays the helpers, started as child processes so they can be
//! pinned to a core and measured from `/proc`: `--serve-http` (a hyper backend),
//! `--serve-tcp` (a TCP sink), `--http-load` (a closed-loop HTTP/1.1 load generator, used when
//! `wrk` is not installed) and `--tcp-load` (the bulk TCP client).
//!
//! Every child is killed on exit, on panic and on Ctrl-C/SIGTERM; helpers also exit on their
//! own when their parent is gone or after an hour. All traffic stays on 127.0.0.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// Size of the "small" responses.
const SMALL_BODY: usize = 13;
/// Helpers give up on their own after this long, whatever happens to the parent.
const HELPER_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a contender may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 scenarios: concurrent streams per client connection (`h2load -m`).
const H2_STREAMS: usize = 10;
/// Idle upstream connections kept per backend: fulcrum's default `max_idle_per_backend`, and
/// nginx's `keepalive` set to match (HAProxy keeps every idle one by default). It covers the
/// requests in flight in every scenario (up to 1000), so no closed loop measures closing and
/// reopening upstream connections instead of proxying.
const UPSTREAM_IDLE: usize = 1024;
/// `idle-10k`: client connections held open at once.
const IDLE_CONNECTIONS: usize = 10_000;
/// `idle-10k`: the proxies' connection limits (clients, upstream connections and slack), and
/// the open-files limit this process needs to hold the client side.
const IDLE_CAPACITY: usize = IDLE_CONNECTIONS + 1_000;
/// `idle-10k`: exchanges in flight while connections are being opened, so that the backend
/// side stays small and the proxy never sees an accept-queue overflow.
const IDLE_OPEN_CONCURRENCY: usize = 100;
/// `idle-10k`: one connect + request + response may take this long.
const IDLE_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// `idle-10k`: opening all the connections may take this long; the rest count as failed.
const IDLE_OPEN_BUDGET: Duration = Duration::from_secs(20);
/// `idle-10k`: pause after the proxy starts and after the connections close, before RSS is
/// read (lets allocators and lazily started tasks settle).
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// `idle-10k`: how long the open connections stay quiet before RSS is read. Idle keep-alive
/// connections are what a proxy holds between a browser's page loads; fulcrum parks them
/// after one to two quiet seconds, nginx releases their buffers as soon as a request ends.
const IDLE_QUIET: Duration = Duration::from_secs(3);

const USAGE: &str = "\
usage: cargo bench --bench proxy -- [options]

  --quick               1 round of 1 s per contender, no warm-up, idle-10k for fulcrum
                        only (under a minute)
  --rounds N            rounds per scenario (default 3); contenders alternate A B C A B C ...
  --duration SECS       measured seconds per run (default 10; --quick: 1)
  --warmup SECS         unmeasured seconds before each run (default 1; --quick: 0; h2 and
                        h2-tls: at least 1)
  --only NAME,...       scenarios to run (default all): keepalive-64 keepalive-1000 body-64k
                        close tls h2 h2-tls failover tcp-bulk idle-10k
  --contenders NAME,... subset of: direct fulcrum nginx haproxy (default all that are installed)
  --fulcrum PATH        the fulcrum binary (default: target/release/fulcrum, built first with
                        `cargo build --release --bin fulcrum`)
  --builtin-load        use the built-in HTTP/1.1 load generator even where wrk is installed
  --no-pin              do not pin processes to cores with taskset
  --json PATH           where to write the JSON report (default target/bench/proxy-<time>.json)
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--serve-http") => helper(serve_http, &args[1..]),
        Some("--serve-tcp") => helper(serve_tcp, &args[1..]),
        Some("--http-load") => http_load(&args[1..]),
        Some("--tcp-load") => tcp_load(&args[1..]),
        _ => orchestrate(&args),
    };
    if let Err(err) = outcome {
        eprintln!("proxy bench: {err}");
        kill_all_children();
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes: registered, killed on drop and on signals.

/// PIDs of every live child, for the signal handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process that is killed (SIGKILL) and reaped when dropped.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn spawn(name: &str, command: &mut Command) -> Result<ChildGuard> {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|err| format!("cannot start {name} ({command:?}): {err}"))?;
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.push(child.id());
        }
        Ok(ChildGuard { child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGKILL now; the process is reaped on drop (so its CPU time does not land in
    /// this process's children's totals mid-measurement).
    fn kill_now(&mut self) {
        // Already exited is fine: there is nothing left to kill.
        let _ = self.child.kill();
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // Errors mean it already exited; either way it is gone after `wait`.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(mut pids) = CHILDREN.lock() {
            pids.retain(|&pid| pid != self.child.id());
        }
    }
}

/// SIGKILLs every registered child (signal path: the guards' destructors will not run).
fn kill_all_children() {
    let pids: Vec<String> = match CHILDREN.lock() {
        Ok(pids) => pids.iter().map(u32::to_string).collect(),
        Err(_) => return,
    };
    if !pids.is_empty() {
        // Best effort on the way out; a failure leaves nothing better to do.
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

/// On SIGINT or SIGTERM: kill the children, remove the temp dir, exit 130.
fn install_signal_handler(temp: PathBuf) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            else {
                return;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            eprintln!("\ninterrupted: stopping every child process");
            kill_all_children();
            // The directory may already be gone.
            let _ = std::fs::remove_dir_all(&temp);
            std::process::exit(130);
        });
    });
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // Leftovers in /tmp are harmless if removal fails.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// Clock ticks per second for /proc/PID/stat times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `(utime + stime, cutime + cstime)` of `pid` in clock ticks.
fn cpu_ticks(pid: &str) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|field| field.parse().ok())
        .collect();
    match fields[..] {
        [utime, stime, cutime, cstime] => Some((utime + stime, cutime + cstime)),
        _ => None,
    }
}

fn own_ticks(pid: u32) -> u64 {
    cpu_ticks(&pid.to_string()).map_or(0, |(own, _)| own)
}

/// CPU time of this process's waited-for children so far (the load generators).
fn reaped_children_ticks() -> u64 {
    cpu_ticks("self").map_or(0, |(_, children)| children)
}

/// Peak resident set size (VmHWM) of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Current resident set size (VmRSS) of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's `(soft, hard)` limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let value = |field: &str| match field {
        "unlimited" => Some(u64::MAX),
        number => number.parse().ok(),
    };
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((value(fields.next()?)?, value(fields.next()?)?))
}

/// Raises this process's soft open-files limit to its hard limit (children started later
/// inherit it) and returns the soft limit now in force. Uses `prlimit(1)` because the crate
/// forbids the `unsafe` a direct `setrlimit(2)` would need.
fn raise_open_files_limit() -> Option<u64> {
    let (soft, hard) = open_files_limit()?;
    if soft < hard {
        // A missing prlimit leaves the limit as it was; the caller checks the result.
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    open_files_limit().map(|(soft, _)| soft)
}

// ---------------------------------------------------------------------------------------------
// Helpers run as child processes.

/// Runs a helper that exits when its parent is gone or after `HELPER_LIFETIME`.
fn helper(run: fn(&[String]) -> Result<()>, args: &[String]) -> Result<()> {
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

fn arg<T: std::str::FromStr>(args: &[String], index: usize, what: &str) -> Result<T> {
    args.get(index)
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| format!("missing or invalid {what}").into())
}

/// Binds 127.0.0.1:0 and tells the parent the port on stdout's first line.
fn announce(listener: &TcpListener) -> Result<()> {
    let port = listener.local_addr()?.port();
    let mut stdout = std::io::stdout();
    writeln!(stdout, "PORT {port}")?;
    stdout.flush()?;
    Ok(())
}

/// `--serve-http BYTES`: answers every request with BYTES bytes, HTTP/1.1 keep-alive and
/// HTTP/2 prior knowledge, on one thread.
fn serve_http(args: &[String]) -> Result<()> {
    let size: usize = arg(args, 0, "response size")?;
    let body = Bytes::from(vec![b'x'; size]);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    announce(&listener)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
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
fn serve_tcp(_args: &[String]) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    announce(&listener)?;
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

/// Totals of one load run, in the format the wrk script prints.
#[derive(Debug, Default, Clone)]
struct LoadResult {
    requests: u64,
    seconds: f64,
    errors_connect: u64,
    errors_io: u64,
    errors_status: u64,
    errors_timeout: u64,
    /// Latency percentiles in microseconds: 50, 99, 99.9.
    latency_us: Option<[f64; 3]>,
    /// TCP runs: bytes sent.
    bytes: u64,
    /// TLS version and cipher suite, where the generator says (h2load does, wrk does not).
    tls: Option<String>,
}

impl LoadResult {
    fn errors(&self) -> u64 {
        self.errors_connect + self.errors_io + self.errors_status + self.errors_timeout
    }
}

/// The line both wrk (through `report.lua`) and the built-in generator print.
const REPORT_TAG: &str = "FULCRUM_BENCH";

/// wrk's `done` hook: one machine-readable line incl. p99.9, which `--latency` does not show.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("FULCRUM_BENCH %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, summary.errors.connect,
    summary.errors.read + summary.errors.write, summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), 0))
end
"#;

fn parse_report(output: &str) -> Option<LoadResult> {
    let line = output.lines().find(|line| line.starts_with(REPORT_TAG))?;
    let numbers: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|field| field.parse().ok())
        .collect();
    let &[
        requests,
        micros,
        connect,
        io,
        status,
        timeout,
        p50,
        p99,
        p999,
        bytes,
    ] = &numbers[..]
    else {
        return None;
    };
    Some(LoadResult {
        requests: requests as u64,
        seconds: micros / 1e6,
        errors_connect: connect as u64,
        errors_io: io as u64,
        errors_status: status as u64,
        errors_timeout: timeout as u64,
        latency_us: (requests > 0.0).then_some([p50, p99, p999]),
        bytes: bytes as u64,
        tls: None,
    })
}

/// wrk's `--latency` table, used when the script line is missing: (p50, p99) in µs.
fn parse_wrk_distribution(output: &str) -> Option<(f64, f64)> {
    let mut p50 = None;
    let mut p99 = None;
    for line in output.lines() {
        let mut fields = line.split_whitespace();
        let (Some(percent), Some(value)) = (fields.next(), fields.next()) else {
            continue;
        };
        let micros = parse_wrk_duration(value);
        match percent {
            "50%" => p50 = micros,
            "99%" => p99 = micros,
            _ => {}
        }
    }
    Some((p50?, p99?))
}

fn parse_wrk_duration(text: &str) -> Option<f64> {
    for (suffix, scale) in [("us", 1.0), ("ms", 1e3), ("m", 60e6), ("s", 1e6)] {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<f64>().ok().map(|n| n * scale);
        }
    }
    None
}

/// h2load's summary plus the latencies from its `--log-file`, which has one line per request:
/// start time (µs since the epoch), status (-1 when the stream failed), µs until the end of the
/// response. h2load itself prints only min/max/mean/sd.
fn parse_h2load(output: &str, log: &Path) -> Result<LoadResult> {
    let line_after = |prefix: &str| {
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .map(str::trim)
    };
    let protocol = line_after("Application protocol:").unwrap_or("none");
    if !protocol.starts_with("h2") {
        return Err(format!("h2load did not get HTTP/2 (protocol: {protocol}): {output:?}").into());
    }
    let seconds = line_after("finished in")
        .and_then(|rest| rest.split(',').next())
        .and_then(parse_wrk_duration)
        .ok_or_else(|| format!("h2load printed no duration: {output:?}"))?
        / 1e6;
    // "requests: 9 total, 9 started, 9 done, 8 succeeded, 1 failed, 1 errored, 0 timeout"
    let requests = line_after("requests:")
        .ok_or_else(|| format!("h2load printed no request counts: {output:?}"))?;
    let count = |label: &str| -> Result<u64> {
        requests
            .split(',')
            .find_map(|field| field.trim().strip_suffix(label)?.trim().parse().ok())
            .ok_or_else(|| format!("h2load's request line has no {label:?}: {requests:?}").into())
    };
    let (done, failed, errored, timeout) = (
        count("done")?,
        count("failed")?,
        count("errored")?,
        count("timeout")?,
    );
    let log = std::fs::read_to_string(log)
        .map_err(|err| format!("cannot read h2load's log {}: {err}", log.display()))?;
    let mut latencies: Vec<u32> = log
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let status: i32 = fields.nth(1)?.parse().ok()?;
            (status > 0).then(|| fields.next()?.parse().ok())?
        })
        .collect();
    latencies.sort_unstable();
    Ok(LoadResult {
        requests: done,
        seconds,
        errors_connect: 0,
        // Timed-out streams count as errored, and errored ones as failed.
        errors_io: errored.saturating_sub(timeout),
        errors_status: failed.saturating_sub(errored),
        errors_timeout: timeout,
        latency_us: (!latencies.is_empty())
            .then(|| [50.0, 99.0, 99.9].map(|p| percentile(&latencies, p))),
        bytes: 0,
        tls: line_after("TLS Protocol:")
            .zip(line_after("Cipher:"))
            .map(|(version, cipher)| format!("{version} {cipher}")),
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `--http-load ADDR CONNECTIONS SECONDS CLOSE(0|1)`: closed loop, one request in flight per
/// connection, like wrk.
fn http_load(args: &[String]) -> Result<()> {
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
    println!(
        "{REPORT_TAG} {} {} {} {} {} {} {} {} {} 0",
        latencies.len(),
        elapsed.as_micros(),
        total.errors_connect,
        total.errors_io,
        total.errors_status,
        total.errors_timeout,
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
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
fn tcp_load(args: &[String]) -> Result<()> {
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
        "{REPORT_TAG} 0 {} 0 {errors} 0 0 0 0 0 {bytes}",
        started.elapsed().as_micros()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The orchestrator.

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    duration: u64,
    warmup: u64,
    only: Option<Vec<String>>,
    contenders: Option<Vec<String>>,
    fulcrum: Option<PathBuf>,
    builtin_load: bool,
    pin: bool,
    json: Option<PathBuf>,
    quick: bool,
}

fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        rounds: 3,
        duration: 10,
        warmup: 1,
        only: None,
        contenders: None,
        fulcrum: None,
        builtin_load: false,
        pin: true,
        json: None,
        quick: false,
    };
    let mut explicit = (None, None, None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| Error::from(format!("{flag} needs a value")))
        };
        let list = |text: String| text.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--quick" => options.quick = true,
            "--rounds" => explicit.0 = Some(value()?.parse()?),
            "--duration" => explicit.1 = Some(value()?.parse()?),
            "--warmup" => explicit.2 = Some(value()?.parse()?),
            "--only" => options.only = Some(list(value()?)),
            "--contenders" => options.contenders = Some(list(value()?)),
            "--fulcrum" => options.fulcrum = Some(PathBuf::from(value()?)),
            "--builtin-load" => options.builtin_load = true,
            "--no-pin" => options.pin = false,
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}\n\n{USAGE}").into()),
        }
    }
    if options.quick {
        (options.rounds, options.duration, options.warmup) = (1, 1, 0);
    }
    options.rounds = explicit.0.unwrap_or(options.rounds).max(1);
    options.duration = explicit.1.unwrap_or(options.duration).max(1);
    options.warmup = explicit.2.unwrap_or(options.warmup);
    Ok(options)
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Traffic {
    /// HTTP/1.1 requests from wrk (or the built-in generator).
    Http,
    /// HTTP/2 requests from h2load, `H2_STREAMS` at once per connection.
    Http2,
    /// Bytes streamed into a TCP sink.
    Tcp,
    /// No load: the proxy's memory, idle and with `connections` idle keep-alive clients.
    Idle,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    about: &'static str,
    traffic: Traffic,
    /// Clients speak TLS to the proxy (terminated there; backends stay plain HTTP/1.1).
    tls: bool,
    connections: usize,
    body: usize,
    close: bool,
    backends: usize,
    kill_one: bool,
}

fn scenarios() -> Vec<Scenario> {
    let base = Scenario {
        name: "",
        about: "",
        traffic: Traffic::Http,
        tls: false,
        connections: 64,
        body: SMALL_BODY,
        close: false,
        backends: 1,
        kill_one: false,
    };
    vec![
        Scenario {
            name: "keepalive-64",
            about: "13 B responses, 64 keep-alive connections, 1 backend",
            ..base.clone()
        },
        Scenario {
            name: "keepalive-1000",
            about: "13 B responses, 1000 keep-alive connections, 1 backend",
            connections: 1000,
            ..base.clone()
        },
        Scenario {
            name: "body-64k",
            about: "64 KiB responses, 64 keep-alive connections, 1 backend",
            body: 64 * 1024,
            ..base.clone()
        },
        Scenario {
            name: "close",
            about: "13 B responses, a new client connection per request (Connection: close), 64 at once",
            close: true,
            ..base.clone()
        },
        Scenario {
            name: "tls",
            about: "HTTPS termination (TLS 1.3), 13 B responses, 64 keep-alive connections, 1 backend over plain HTTP/1.1",
            tls: true,
            ..base.clone()
        },
        Scenario {
            name: "h2",
            about: "HTTP/2 cleartext (prior knowledge), 64 connections x 10 streams, 13 B responses, 1 backend over HTTP/1.1",
            traffic: Traffic::Http2,
            ..base.clone()
        },
        Scenario {
            name: "h2-tls",
            about: "HTTP/2 over TLS (ALPN h2), 64 connections x 10 streams, 13 B responses, 1 backend over HTTP/1.1",
            traffic: Traffic::Http2,
            tls: true,
            ..base.clone()
        },
        Scenario {
            name: "failover",
            about: "13 B responses, 64 connections, 3 backends; one is SIGKILLed halfway",
            backends: 3,
            kill_one: true,
            ..base.clone()
        },
        Scenario {
            name: "tcp-bulk",
            about: "L4: 4 connections each streaming 64 KiB writes into a TCP sink",
            traffic: Traffic::Tcp,
            connections: 4,
            ..base.clone()
        },
        // Last: it raises the open-files limit, which the processes of later scenarios would
        // inherit.
        Scenario {
            name: "idle-10k",
            about: "memory: the proxy's RSS idle, then holding 10 000 idle keep-alive client connections",
            traffic: Traffic::Idle,
            connections: IDLE_CONNECTIONS,
            ..base
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Contender {
    Direct,
    Fulcrum,
    Nginx,
    Haproxy,
}

impl Contender {
    const ALL: [Contender; 4] = [
        Contender::Direct,
        Contender::Fulcrum,
        Contender::Nginx,
        Contender::Haproxy,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Fulcrum => "fulcrum",
            Contender::Nginx => "nginx",
            Contender::Haproxy => "haproxy",
        }
    }
}

/// What the machine offers, found once.
struct Environment {
    fulcrum: PathBuf,
    nginx: Option<PathBuf>,
    nginx_stream_module: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
    /// `taskset` and at least two cores: proxy on core 1, everything else on core 0.
    pin: bool,
    cores: usize,
    ticks: f64,
    me: PathBuf,
    temp: PathBuf,
    /// The certificate every contender serves in the TLS scenarios.
    tls: TlsFiles,
}

/// A self-signed certificate for 127.0.0.1 and localhost, generated per bench run (ECDSA
/// P-256, rcgen's default), as the PEM files the contenders want.
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Certificate followed by key, for HAProxy's `crt`.
    bundle: PathBuf,
}

impl TlsFiles {
    fn generate(dir: &Path) -> Result<TlsFiles> {
        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        let certified = rcgen::generate_simple_self_signed(names)?;
        let (cert_pem, key_pem) = (certified.cert.pem(), certified.signing_key.serialize_pem());
        std::fs::create_dir_all(dir)?;
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            bundle: dir.join("bundle.pem"),
        };
        std::fs::write(&files.cert, &cert_pem)?;
        std::fs::write(&files.key, &key_pem)?;
        std::fs::write(&files.bundle, format!("{cert_pem}{key_pem}"))?;
        Ok(files)
    }
}

impl Environment {
    /// A command, pinned to `core` when pinning.
    fn command(&self, core: u8, program: &Path) -> Command {
        if self.pin {
            let mut command = Command::new("taskset");
            command.arg("-c").arg(core.to_string()).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

fn installed(path: &str) -> Option<PathBuf> {
    let path = PathBuf::from(path);
    path.exists().then_some(path)
}

fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// The release binary, built first unless `--fulcrum` names one. Built with plain
/// `cargo build --release` so it has the same features as a deployed binary (the binary
/// `cargo bench` builds has the dev-dependencies' extra tokio features).
fn fulcrum_binary(options: &Options) -> Result<PathBuf> {
    if let Some(path) = &options.fulcrum {
        return Ok(path.clone());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building fulcrum: cargo build --release --bin fulcrum");
    let mut command = Command::new(cargo);
    // `cargo bench` runs this with its package variables set; build scripts that watch the
    // environment (ring's, via cc) would see a change and rebuild everything each time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
            "CARGO_PRIMARY_",
        ]
        .iter()
        .any(|prefix| name.starts_with(prefix))
            || name == "CARGO_TARGET_TMPDIR"
            || name == "OUT_DIR"
        {
            command.env_remove(&*name);
        }
    }
    let status = command
        .args(["build", "--release", "--bin", "fulcrum"])
        .current_dir(manifest_dir())
        .status()?;
    if !status.success() {
        return Err("cargo build --release --bin fulcrum failed".into());
    }
    Ok(target_dir().join("release").join("fulcrum"))
}

fn orchestrate(args: &[String]) -> Result<()> {
    let options = parse_options(args)?;
    let fulcrum = fulcrum_binary(&options)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let temp = std::env::temp_dir().join(format!("fulcrum-bench-{}", std::process::id()));
    std::fs::create_dir_all(&temp)?;
    let _temp_guard = TempDir(temp.clone());
    install_signal_handler(temp.clone());
    let env = Environment {
        fulcrum,
        nginx: installed("/usr/sbin/nginx").or_else(|| which("nginx")),
        nginx_stream_module: installed("/usr/lib/nginx/modules/ngx_stream_module.so"),
        haproxy: installed("/usr/sbin/haproxy").or_else(|| which("haproxy")),
        wrk: if options.builtin_load {
            None
        } else {
            installed("/usr/bin/wrk").or_else(|| which("wrk"))
        },
        h2load: which("h2load"),
        pin: options.pin && cores >= 2 && which("taskset").is_some(),
        cores,
        ticks: clock_ticks(),
        me: std::env::current_exe()?,
        temp: temp.clone(),
        tls: TlsFiles::generate(&temp.join("tls"))?,
    };
    std::fs::write(temp.join("report.lua"), WRK_SCRIPT)?;

    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    print_header(&env, &options);
    let mut reports = Vec::new();
    for scenario in scenarios() {
        if let Some(only) = &options.only {
            if !only.iter().any(|name| name == scenario.name) {
                continue;
            }
        }
        let report = run_scenario(&env, &options, &scenario);
        print_scenario(&scenario, &report);
        reports.push(report);
    }

    let json = json!({
        "started_unix": started,
        "machine": {
            "cores": env.cores,
            "pinned": env.pin,
            "load_generator": if env.wrk.is_some() { "wrk" } else { "built-in" },
            "clock_ticks_per_second": env.ticks,
        },
        "options": {
            "rounds": options.rounds,
            "duration_s": options.duration,
            "warmup_s": options.warmup,
            "quick": options.quick,
        },
        "binaries": {
            "fulcrum": env.fulcrum.display().to_string(),
            "nginx": env.nginx.as_ref().map(|p| p.display().to_string()),
            "haproxy": env.haproxy.as_ref().map(|p| p.display().to_string()),
            "wrk": env.wrk.as_ref().map(|p| p.display().to_string()),
            "h2load": env.h2load.as_ref().map(|p| p.display().to_string()),
        },
        "scenarios": reports.iter().map(ScenarioReport::to_json).collect::<Vec<_>>(),
    });
    let path = options.json.clone().unwrap_or_else(|| {
        target_dir()
            .join("bench")
            .join(format!("proxy-{}.json", timestamp(started)))
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nJSON report: {}", path.display());
    Ok(())
}

/// `YYYYMMDD-HHMMSS` (UTC) for a Unix time.
fn timestamp(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let seconds = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

fn print_header(env: &Environment, options: &Options) {
    println!("fulcrum end-to-end benchmark (all traffic on 127.0.0.1)");
    println!(
        "  {} round(s) x {} s measured (+{} s warm-up) per contender; contenders alternate each round; medians shown",
        options.rounds, options.duration, options.warmup
    );
    if env.pin {
        println!(
            "  pinned with taskset: proxy on core 1; load generator and backends on core 0 ({} cores)",
            env.cores
        );
    } else {
        println!(
            "  NOT pinned ({} core(s){}): proxy, load generator and backends share the CPUs",
            env.cores,
            if options.pin {
                ", or no taskset"
            } else {
                ", --no-pin"
            }
        );
    }
    println!(
        "  load generator: {}",
        match &env.wrk {
            Some(path) => format!("{} (1 thread)", path.display()),
            None => "built-in closed-loop HTTP/1.1 generator (hyper, 1 thread)".to_owned(),
        }
    );
    println!(
        "  HTTP/2 load generator: {}",
        match &env.h2load {
            Some(path) => format!(
                "{} (1 thread, {H2_STREAMS} streams per connection)",
                path.display()
            ),
            None => "none (h2 and h2-tls are skipped)".to_owned(),
        }
    );
    println!(
        "  backends: built-in hyper server, one single-threaded process each; fulcrum: {}",
        env.fulcrum.display()
    );
    let missing: Vec<&str> = [("nginx", &env.nginx), ("haproxy", &env.haproxy)]
        .iter()
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        println!("  not installed, skipped: {}", missing.join(", "));
    }
}

/// One measured run of one contender.
#[derive(Debug, Clone, Default)]
struct Run {
    load: LoadResult,
    /// Requests (or MiB for TCP, connections for idle-10k) per second.
    rate: f64,
    proxy_cpu_us_per_op: Option<f64>,
    proxy_core: Option<f64>,
    client_core: f64,
    peak_rss_kib: Option<u64>,
    /// idle-10k only.
    idle: Option<IdleRun>,
}

/// What idle-10k measured in one run.
#[derive(Debug, Clone)]
struct IdleRun {
    /// VmRSS `IDLE_SETTLE` after the proxy started listening.
    rss_idle_kib: u64,
    /// VmRSS `IDLE_SETTLE` after the last connection got its response.
    rss_loaded_kib: u64,
    /// VmRSS `IDLE_SETTLE` after every connection was reset: what the proxy keeps.
    rss_closed_kib: u64,
    /// Connections that got a complete keep-alive response.
    opened: usize,
    /// Connections that did not (connect error, timeout, bad response, out of time).
    failed: usize,
    /// Of the opened ones, those still open (not closed or reset by the proxy) when the loaded
    /// RSS was read.
    still_open: usize,
    /// Time to open all of them.
    open_seconds: f64,
}

impl IdleRun {
    /// RSS the open connections added, in KiB (negative if the proxy gave memory back).
    fn added_kib(&self) -> f64 {
        self.rss_loaded_kib as f64 - self.rss_idle_kib as f64
    }
}

impl Run {
    fn to_json(&self) -> Value {
        json!({
            "requests": self.load.requests,
            "seconds": self.load.seconds,
            "rate": self.rate,
            "latency_us": self.load.latency_us.map(|[p50, p99, p999]| json!({"p50": p50, "p99": p99, "p99.9": p999})),
            "errors": {
                "connect": self.load.errors_connect,
                "read_write": self.load.errors_io,
                "status": self.load.errors_status,
                "timeout": self.load.errors_timeout,
            },
            "bytes": self.load.bytes,
            "tls": self.load.tls,
            "proxy_cpu_us_per_op": self.proxy_cpu_us_per_op,
            "proxy_core_share": self.proxy_core,
            "client_core_share": self.client_core,
            "proxy_peak_rss_kib": self.peak_rss_kib,
            "idle": self.idle.as_ref().map(|idle| json!({
                "rss_idle_kib": idle.rss_idle_kib,
                "rss_loaded_kib": idle.rss_loaded_kib,
                "rss_closed_kib": idle.rss_closed_kib,
                "added_kib": idle.added_kib(),
                "connections_opened": idle.opened,
                "connections_failed": idle.failed,
                "connections_still_open": idle.still_open,
                "open_seconds": idle.open_seconds,
            })),
        })
    }
}

/// A contender's runs in one scenario, or why it did not run.
#[derive(Debug)]
struct ContenderReport {
    contender: Contender,
    runs: Vec<Run>,
    failures: Vec<String>,
    skipped: Option<String>,
}

#[derive(Debug)]
struct ScenarioReport {
    name: &'static str,
    about: &'static str,
    unit: &'static str,
    skipped: Option<String>,
    contenders: Vec<ContenderReport>,
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// Medians over the runs of one contender.
#[derive(Debug, Default)]
struct Summary {
    rate: Option<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    errors: Option<f64>,
    cpu: Option<f64>,
    proxy_core: Option<f64>,
    client_core: Option<f64>,
    rss: Option<f64>,
    idle: Option<IdleSummary>,
}

/// idle-10k medians.
#[derive(Debug)]
struct IdleSummary {
    rss_idle_kib: f64,
    rss_loaded_kib: f64,
    rss_closed_kib: f64,
    added_kib: f64,
    opened: f64,
    failed: f64,
    still_open: f64,
    open_seconds: f64,
}

impl ContenderReport {
    fn summary(&self) -> Summary {
        let of = |f: &dyn Fn(&Run) -> Option<f64>| median(self.runs.iter().filter_map(f).collect());
        Summary {
            rate: of(&|run| Some(run.rate)),
            p50: of(&|run| run.load.latency_us.map(|l| l[0])),
            p99: of(&|run| run.load.latency_us.map(|l| l[1])),
            p999: of(&|run| run.load.latency_us.map(|l| l[2])),
            errors: of(&|run| Some(run.load.errors() as f64)),
            cpu: of(&|run| run.proxy_cpu_us_per_op),
            proxy_core: of(&|run| run.proxy_core),
            client_core: of(&|run| Some(run.client_core)),
            rss: of(&|run| run.peak_rss_kib.map(|kib| kib as f64)),
            idle: self.idle_summary(),
        }
    }

    fn idle_summary(&self) -> Option<IdleSummary> {
        let idle: Vec<&IdleRun> = self
            .runs
            .iter()
            .filter_map(|run| run.idle.as_ref())
            .collect();
        let of = |f: &dyn Fn(&IdleRun) -> f64| median(idle.iter().map(|run| f(run)).collect());
        Some(IdleSummary {
            rss_idle_kib: of(&|run| run.rss_idle_kib as f64)?,
            rss_loaded_kib: of(&|run| run.rss_loaded_kib as f64)?,
            rss_closed_kib: of(&|run| run.rss_closed_kib as f64)?,
            added_kib: of(&IdleRun::added_kib)?,
            opened: of(&|run| run.opened as f64)?,
            failed: of(&|run| run.failed as f64)?,
            still_open: of(&|run| run.still_open as f64)?,
            open_seconds: of(&|run| run.open_seconds)?,
        })
    }

    fn to_json(&self) -> Value {
        let summary = self.summary();
        json!({
            "contender": self.contender.name(),
            "skipped": self.skipped,
            "failures": self.failures,
            "median": {
                "rate": summary.rate,
                "latency_us": {"p50": summary.p50, "p99": summary.p99, "p99.9": summary.p999},
                "errors": summary.errors,
                "proxy_cpu_us_per_op": summary.cpu,
                "proxy_core_share": summary.proxy_core,
                "client_core_share": summary.client_core,
                "proxy_peak_rss_kib": summary.rss,
                "idle": summary.idle.as_ref().map(|idle| json!({
                    "rss_idle_kib": idle.rss_idle_kib,
                    "rss_loaded_kib": idle.rss_loaded_kib,
                    "rss_closed_kib": idle.rss_closed_kib,
                    "added_kib": idle.added_kib,
                    "connections_opened": idle.opened,
                    "connections_failed": idle.failed,
                    "connections_still_open": idle.still_open,
                    "open_seconds": idle.open_seconds,
                })),
            },
            "runs": self.runs.iter().map(Run::to_json).collect::<Vec<_>>(),
        })
    }
}

impl ScenarioReport {
    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "about": self.about,
            "rate_unit": self.unit,
            "skipped": self.skipped,
            "contenders": self.contenders.iter().map(ContenderReport::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Why `contender` cannot run `scenario` here, if it cannot.
fn unsupported(env: &Environment, scenario: &Scenario, contender: Contender) -> Option<String> {
    match contender {
        Contender::Direct if scenario.kill_one => {
            Some("no proxy to fail over: not applicable".to_owned())
        }
        Contender::Direct if scenario.tls => {
            Some("the backend speaks plain HTTP only: not applicable".to_owned())
        }
        Contender::Direct if scenario.traffic == Traffic::Idle => {
            Some("no proxy to measure: not applicable".to_owned())
        }
        Contender::Nginx if env.nginx.is_none() => Some("nginx not installed".to_owned()),
        Contender::Nginx
            if scenario.traffic == Traffic::Tcp && env.nginx_stream_module.is_none() =>
        {
            Some("nginx stream module not installed (Debian: libnginx-mod-stream)".to_owned())
        }
        Contender::Haproxy if env.haproxy.is_none() => Some("haproxy not installed".to_owned()),
        _ => None,
    }
}

fn run_scenario(env: &Environment, options: &Options, scenario: &Scenario) -> ScenarioReport {
    let unit = match scenario.traffic {
        Traffic::Tcp => "MiB/s",
        Traffic::Idle => "conn/s",
        Traffic::Http | Traffic::Http2 => "req/s",
    };
    let skipped = match scenario.traffic {
        Traffic::Http2 if env.h2load.is_none() => {
            Some("skipped: h2load not installed (Debian: nghttp2-client)".to_owned())
        }
        Traffic::Http if scenario.tls && env.wrk.is_none() => Some(
            "skipped: needs wrk (the built-in load generator speaks plain HTTP/1.1 only)"
                .to_owned(),
        ),
        Traffic::Idle => match raise_open_files_limit() {
            Some(limit) if limit >= IDLE_CAPACITY as u64 => None,
            limit => Some(format!(
                "skipped: needs an open-files limit of at least {IDLE_CAPACITY} (ulimit -n), have {}",
                limit.map_or_else(|| "unknown".to_owned(), |limit| limit.to_string())
            )),
        },
        _ => None,
    };
    let mut report = ScenarioReport {
        name: scenario.name,
        about: scenario.about,
        unit,
        skipped,
        contenders: Vec::new(),
    };
    if report.skipped.is_some() {
        return report;
    }
    let chosen: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|contender| {
            options
                .contenders
                .as_ref()
                .is_none_or(|names| names.iter().any(|name| name == contender.name()))
        })
        .collect();
    for &contender in &chosen {
        report.contenders.push(ContenderReport {
            contender,
            runs: Vec::new(),
            failures: Vec::new(),
            skipped: unsupported(env, scenario, contender).or_else(|| {
                // Their memory does not change with fulcrum's code; it is a third of the time.
                let quick_idle = options.quick
                    && options.contenders.is_none()
                    && scenario.traffic == Traffic::Idle
                    && contender != Contender::Fulcrum;
                quick_idle.then(|| "--quick measures fulcrum only here".to_owned())
            }),
        });
    }
    let runnable: Vec<usize> = (0..report.contenders.len())
        .filter(|&i| report.contenders[i].skipped.is_none())
        .collect();
    eprintln!("== {}: {}", scenario.name, scenario.about);
    for round in 0..options.rounds {
        // Rotate the starting contender each round: A B C, B C A, C A B ...
        for step in 0..runnable.len() {
            let index = runnable[(round + step) % runnable.len()];
            let contender = report.contenders[index].contender;
            eprintln!(
                "   round {} / {}: {}",
                round + 1,
                options.rounds,
                contender.name()
            );
            match measure(env, options, scenario, contender) {
                Ok(run) => report.contenders[index].runs.push(run),
                Err(err) => {
                    eprintln!("   {} failed: {err}", contender.name());
                    report.contenders[index].failures.push(err.to_string());
                }
            }
        }
    }
    report
}

/// A started backend: its guard and address.
struct Backend {
    guard: ChildGuard,
    addr: SocketAddr,
}

fn start_backend(env: &Environment, scenario: &Scenario) -> Result<Backend> {
    let mut command = env.command(0, &env.me);
    if scenario.traffic == Traffic::Tcp {
        command.arg("--serve-tcp");
    } else {
        command.arg("--serve-http").arg(scenario.body.to_string());
    }
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut guard = ChildGuard::spawn("backend", &mut command)?;
    let stdout = guard
        .child
        .stdout
        .take()
        .ok_or("backend has no stdout pipe")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|port| port.trim().parse().ok())
        .ok_or_else(|| format!("backend did not announce its port (said {line:?})"))?;
    Ok(Backend {
        guard,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

/// A free loopback port (bound and released; the contender binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started proxy: its guard, where clients connect, its log.
struct Proxy {
    guard: ChildGuard,
    addr: SocketAddr,
    log: PathBuf,
}

fn start_proxy(
    env: &Environment,
    scenario: &Scenario,
    contender: Contender,
    backends: &[SocketAddr],
) -> Result<Proxy> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = env.temp.join(contender.name());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("output.log");
    let front = Front {
        addr,
        tcp: scenario.traffic == Traffic::Tcp,
        tls: scenario.tls.then_some(&env.tls),
        h2c: scenario.traffic == Traffic::Http2 && !scenario.tls,
        many_idle: scenario.traffic == Traffic::Idle,
    };
    let mut command = match contender {
        Contender::Direct => return Err("direct has no proxy".into()),
        Contender::Fulcrum => {
            let config = dir.join("fulcrum.toml");
            std::fs::write(&config, fulcrum_config(&front, free_port()?, backends))?;
            let mut command = env.command(1, &env.fulcrum);
            command
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "warn"]);
            command
        }
        Contender::Nginx => {
            let config = dir.join("nginx.conf");
            let module = env.nginx_stream_module.as_deref();
            std::fs::write(&config, nginx_config(&dir, &front, module, backends))?;
            let binary = env.nginx.as_deref().ok_or("nginx not installed")?;
            let mut command = env.command(1, binary);
            command.arg("-p").arg(&dir).arg("-c").arg(&config);
            command
        }
        Contender::Haproxy => {
            let config = dir.join("haproxy.cfg");
            std::fs::write(&config, haproxy_config(&front, backends))?;
            let binary = env.haproxy.as_deref().ok_or("haproxy not installed")?;
            let mut command = env.command(1, binary);
            command.arg("-db").arg("-f").arg(&config);
            command
        }
    };
    let output = std::fs::File::create(&log)?;
    command.stdout(output.try_clone()?).stderr(output);
    let mut guard = ChildGuard::spawn(contender.name(), &mut command)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if guard.exited() || Instant::now() > deadline {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = said.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!(
                "{} did not start listening on {addr}: {tail}",
                contender.name()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proxy { guard, addr, log })
}

/// What a proxy's client side offers beyond plain HTTP/1.1, and what it must hold.
struct Front<'a> {
    addr: SocketAddr,
    /// Raw TCP (L4) instead of HTTP.
    tcp: bool,
    /// Terminate TLS with these files, offering h2 and http/1.1 through ALPN.
    tls: Option<&'a TlsFiles>,
    /// Cleartext HTTP/2 with prior knowledge: fulcrum detects it on any http listener, nginx
    /// and HAProxy must be told (and then speak only HTTP/2 there).
    h2c: bool,
    /// Room and patience for `IDLE_CONNECTIONS` idle keep-alive clients.
    many_idle: bool,
}

fn fulcrum_config(front: &Front, admin: u16, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let protocol = if front.tcp { "tcp" } else { "http" };
    let mut listener = String::new();
    if front.many_idle {
        // The idle timeout must outlast opening the connections plus the measurement.
        listener.push_str("header_read_timeout = \"60s\"\nidle_timeout = \"120s\"\n");
    }
    if let Some(tls) = front.tls {
        // Defaults otherwise: ALPN h2 + http/1.1, TLS 1.2 and 1.3.
        let _ = write!(
            listener,
            "\n[listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            tls.cert.display(),
            tls.key.display()
        );
    }
    format!(
        "# Generated by benches/proxy.rs.\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\nmetrics = true\n\n\
         [runtime]\nworker_threads = 1\nshutdown_timeout = \"1s\"\n\n\
         [[listeners]]\nname = \"bench\"\nlisten = \"{}\"\nprotocol = \"{protocol}\"\npool = \"app\"\n{listener}\n\
         [pools.app]\nalgorithm = \"round_robin\"\nbackends = [{}]\nretries = 2\n",
        front.addr,
        list.join(", "),
    )
}

fn nginx_config(
    dir: &Path,
    front: &Front,
    stream_module: Option<&Path>,
    backends: &[SocketAddr],
) -> String {
    let (addr, tcp) = (front.addr, front.tcp);
    let dir = dir.display();
    let servers: String = backends
        .iter()
        .map(|backend| format!("    server {backend};\n"))
        .collect();
    let mut config = String::new();
    if let (true, Some(module)) = (tcp, stream_module) {
        let _ = writeln!(config, "load_module {};", module.display());
    }
    let keepalive = UPSTREAM_IDLE;
    // worker_rlimit_nofile 16384 covers IDLE_CAPACITY as well.
    let worker_connections = if front.many_idle { IDLE_CAPACITY } else { 8192 };
    let _ = write!(
        config,
        "# Generated by benches/proxy.rs.\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections {worker_connections}; }}\n"
    );
    let listen = match front.tls {
        // nginx 1.22 leaves TLS 1.3 off by default (1.23.4 turned it on); fulcrum and HAProxy
        // offer 1.2 and 1.3.
        Some(tls) => format!(
            "listen {addr} ssl http2;\n\
             \x20   ssl_protocols TLSv1.2 TLSv1.3;\n\
             \x20   ssl_certificate {};\n\
             \x20   ssl_certificate_key {};",
            tls.cert.display(),
            tls.key.display()
        ),
        None if front.h2c => format!("listen {addr} http2;"),
        None => format!("listen {addr};"),
    };
    if tcp {
        let _ = write!(
            config,
            "stream {{\n  upstream app {{\n{servers}  }}\n  server {{\n    listen {addr};\n    proxy_pass app;\n  }}\n}}\n"
        );
    } else {
        let _ = write!(
            config,
            "http {{\n\
             \x20 access_log off;\n\
             \x20 keepalive_requests 1000000;\n\
             \x20 client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             \x20 fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             \x20 upstream app {{\n{servers}    keepalive {keepalive};\n    keepalive_requests 1000000;\n  }}\n\
             \x20 server {{\n\
             \x20   {listen}\n\
             \x20   location / {{\n\
             \x20     proxy_pass http://app;\n\
             \x20     proxy_http_version 1.1;\n\
             \x20     proxy_set_header Connection \"\";\n\
             \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
             \x20     proxy_set_header X-Forwarded-Host $host;\n\
             \x20     proxy_max_temp_file_size 0;\n\
             \x20   }}\n\
             \x20 }}\n\
             }}\n"
        );
    }
    config
}

fn haproxy_config(front: &Front, backends: &[SocketAddr]) -> String {
    let (addr, tcp) = (front.addr, front.tcp);
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| format!("  server s{i} {backend}\n"))
        .collect();
    let (mode, http_options) = if tcp {
        ("tcp", "")
    } else {
        ("http", "  http-reuse always\n  option forwardfor\n")
    };
    // HAProxy wants 2 descriptors per connection and by default refuses to start when it cannot
    // raise its limit that far; idle clients hold one each (idle upstream connections are
    // shared), so for idle-10k a limit below 2 x maxconn is fine: `no strict-limits` makes that
    // a warning.
    let (maxconn, strict) = if front.many_idle {
        (IDLE_CAPACITY, "  no strict-limits\n")
    } else {
        (4096, "")
    };
    let bind = match front.tls {
        Some(tls) => format!("{addr} ssl crt {} alpn h2,http/1.1", tls.bundle.display()),
        None if front.h2c => format!("{addr} proto h2"),
        None => addr.to_string(),
    };
    format!(
        "# Generated by benches/proxy.rs.\n\
         global\n  nbthread 1\n  maxconn {maxconn}\n{strict}\n\
         defaults\n  mode {mode}\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n\
         \x20 retries 2\n  option redispatch 1\n{http_options}\n\
         frontend bench\n  bind {bind}\n  default_backend app\n\n\
         backend app\n  balance roundrobin\n{servers}"
    )
}

/// A running load generator.
struct Load {
    guard: ChildGuard,
    /// h2load: its per-request log (latencies), read once it has finished.
    h2load_log: Option<PathBuf>,
}

/// Starts the load generator against `addr` for `seconds`.
fn start_load(
    env: &Environment,
    scenario: &Scenario,
    addr: SocketAddr,
    seconds: u64,
) -> Result<Load> {
    let scheme = if scenario.tls { "https" } else { "http" };
    let mut h2load_log = None;
    let mut command = match (&env.wrk, scenario.traffic) {
        (_, Traffic::Idle) => return Err("idle-10k has no load generator".into()),
        (_, Traffic::Http2) => {
            let h2load = env.h2load.as_deref().ok_or("h2load not installed")?;
            let log = env.temp.join("h2load.log");
            // A leftover from an earlier run must not be read as this one's.
            let _ = std::fs::remove_file(&log);
            let mut command = env.command(0, h2load);
            command
                .arg("-t1")
                .arg(format!("-c{}", scenario.connections))
                .arg(format!("-m{H2_STREAMS}"))
                .arg(format!("-D{seconds}"))
                // Like wrk's --timeout 2s: a connection silent for 2 s is given up.
                .arg("-N2")
                .arg(format!("--log-file={}", log.display()))
                .arg(format!("{scheme}://{addr}/"));
            h2load_log = Some(log);
            command
        }
        (_, Traffic::Tcp) => {
            let mut command = env.command(0, &env.me);
            command
                .arg("--tcp-load")
                .arg(addr.to_string())
                .arg(scenario.connections.to_string())
                .arg(seconds.to_string());
            command
        }
        (Some(wrk), _) => {
            let mut command = env.command(0, wrk);
            command
                .arg("-t1")
                .arg(format!("-c{}", scenario.connections))
                .arg(format!("-d{seconds}s"))
                .args(["--timeout", "2s", "--latency", "-s"])
                .arg(env.temp.join("report.lua"));
            if scenario.close {
                command.args(["-H", "Connection: close"]);
            }
            command.arg(format!("{scheme}://{addr}/"));
            command
        }
        (None, _) => {
            let mut command = env.command(0, &env.me);
            command
                .arg("--http-load")
                .arg(addr.to_string())
                .arg(scenario.connections.to_string())
                .arg(seconds.to_string())
                .arg(if scenario.close { "1" } else { "0" });
            command
        }
    };
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let guard = ChildGuard::spawn("load generator", &mut command)?;
    Ok(Load { guard, h2load_log })
}

/// Waits for the load generator and parses its report.
fn finish_load(load: Load, seconds: u64) -> Result<LoadResult> {
    let Load {
        guard: mut load,
        h2load_log,
    } = load;
    let mut output = String::new();
    if let Some(mut stdout) = load.child.stdout.take() {
        // Reads until the generator exits (it closes stdout); bounded by its own duration.
        stdout.read_to_string(&mut output)?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds + 10);
    while !load.exited() {
        if Instant::now() > deadline {
            return Err("load generator did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(log) = h2load_log {
        return parse_h2load(&output, &log);
    }
    let mut result = parse_report(&output)
        .ok_or_else(|| format!("load generator printed no report: {output:?}"))?;
    if result.latency_us.is_none() {
        if let Some((p50, p99)) = parse_wrk_distribution(&output) {
            result.latency_us = Some([p50, p99, f64::NAN]);
        }
    }
    Ok(result)
}

fn measure(
    env: &Environment,
    options: &Options,
    scenario: &Scenario,
    contender: Contender,
) -> Result<Run> {
    if scenario.traffic == Traffic::Idle {
        return measure_idle(env, scenario, contender);
    }
    let mut backends = (0..scenario.backends)
        .map(|_| start_backend(env, scenario))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let proxy = match contender {
        Contender::Direct => None,
        _ => Some(start_proxy(env, scenario, contender, &addrs)?),
    };
    let target = proxy.as_ref().map_or(addrs[0], |proxy| proxy.addr);
    // HTTP/2 always warms up: its first burst of 640 requests makes the proxies open hundreds
    // of upstream connections at once, more than the backend's accept queue (128) holds, and
    // the dropped SYNs come back a second later as latency outliers.
    let warmup = if scenario.traffic == Traffic::Http2 {
        options.warmup.max(1)
    } else {
        options.warmup
    };
    if warmup > 0 && !scenario.kill_one {
        finish_load(start_load(env, scenario, target, warmup)?, warmup)?;
    }

    let proxy_pid = proxy.as_ref().map(|proxy| proxy.guard.pid());
    let backend_ticks = |backends: &[Backend]| -> u64 {
        backends
            .iter()
            .map(|backend| own_ticks(backend.guard.pid()))
            .sum()
    };
    let proxy_before = proxy_pid.map(own_ticks);
    let backends_before = backend_ticks(&backends);
    let reaped_before = reaped_children_ticks();
    let began = Instant::now();
    let load = start_load(env, scenario, target, options.duration)?;
    let mut killed_ticks = 0;
    if scenario.kill_one {
        std::thread::sleep(Duration::from_secs_f64(options.duration as f64 / 2.0));
        let victim = &mut backends[1];
        killed_ticks = own_ticks(victim.guard.pid());
        victim.guard.kill_now();
    }
    let result = finish_load(load, options.duration)?;
    let wall = began.elapsed().as_secs_f64();
    let loadgen_ticks = reaped_children_ticks().saturating_sub(reaped_before);
    let backends_after = backend_ticks(&backends) + killed_ticks;
    let proxy_ticks = proxy_pid
        .zip(proxy_before)
        .map(|(pid, before)| own_ticks(pid).saturating_sub(before));
    let peak_rss_kib = proxy_pid.and_then(peak_rss_kib);
    if let Some(proxy) = &proxy {
        if result.requests == 0 && result.bytes == 0 {
            let said = std::fs::read_to_string(&proxy.log).unwrap_or_default();
            return Err(format!("no traffic got through; proxy said: {said}").into());
        }
    }

    let ops = if scenario.traffic == Traffic::Tcp {
        result.bytes as f64 / (1024.0 * 1024.0)
    } else {
        result.requests as f64
    };
    let seconds = if result.seconds > 0.0 {
        result.seconds
    } else {
        wall
    };
    let client = (loadgen_ticks + backends_after.saturating_sub(backends_before)) as f64;
    Ok(Run {
        rate: ops / seconds,
        proxy_cpu_us_per_op: proxy_ticks
            .filter(|_| ops > 0.0)
            .map(|ticks| ticks as f64 / env.ticks * 1e6 / ops),
        proxy_core: proxy_ticks.map(|ticks| ticks as f64 / env.ticks / wall),
        client_core: client / env.ticks / wall,
        peak_rss_kib,
        load: result,
        idle: None,
    })
}

/// idle-10k: the proxy's RSS idle, then with `scenario.connections` idle keep-alive client
/// connections, each of which has had one complete request and response.
fn measure_idle(env: &Environment, scenario: &Scenario, contender: Contender) -> Result<Run> {
    let backend = start_backend(env, scenario)?;
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
    std::thread::sleep(IDLE_QUIET);
    let rss_loaded_kib = rss_kib(pid).ok_or("cannot read the proxy's VmRSS")?;
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

/// One idle-10k connection: connect, one keep-alive GET, the whole response; then handed
/// back as a std socket so nothing in this process polls it.
async fn idle_connection(addr: SocketAddr) -> Result<TcpStream> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        // Closing sends a reset: 10,000 connections leave no TIME_WAIT behind.
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

/// Whether the peer has neither closed nor reset `stream` (a nonblocking socket).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.peek(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
}

// ---------------------------------------------------------------------------------------------
// Output.

fn fmt_latency(micros: Option<f64>) -> String {
    match micros {
        None => "-".to_owned(),
        Some(us) if us.is_nan() => "n/a".to_owned(),
        Some(us) if us >= 1e6 => format!("{:.2}s", us / 1e6),
        Some(us) if us >= 1e3 => format!("{:.2}ms", us / 1e3),
        Some(us) => format!("{us:.0}us"),
    }
}

fn fmt_option(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), format)
}

fn print_scenario(scenario: &Scenario, report: &ScenarioReport) {
    println!("\n== {}: {}", report.name, report.about);
    if let Some(reason) = &report.skipped {
        println!("   {reason}");
        return;
    }
    if scenario.traffic == Traffic::Idle {
        print_idle(scenario, report);
        return;
    }
    let cpu_unit = if scenario.traffic == Traffic::Tcp {
        "CPU/MiB"
    } else {
        "CPU/req"
    };
    println!(
        "   {:<9} {:>11} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>7} {:>9}",
        "contender",
        report.unit,
        "p50",
        "p99",
        "p99.9",
        "errors",
        cpu_unit,
        "proxy%",
        "client%",
        "peak RSS"
    );
    let mut summaries: HashMap<Contender, Summary> = HashMap::new();
    for contender in &report.contenders {
        let name = contender.contender.name();
        if let Some(reason) = &contender.skipped {
            println!("   {name:<9} skipped: {reason}");
            continue;
        }
        if contender.runs.is_empty() {
            let why = contender.failures.first().map_or("", String::as_str);
            println!("   {name:<9} failed: {why}");
            continue;
        }
        let s = contender.summary();
        println!(
            "   {:<9} {:>11} {:>9} {:>9} {:>9} {:>8} {:>9} {:>7} {:>7} {:>9}",
            name,
            fmt_option(s.rate, |r| format!("{r:.0}")),
            fmt_latency(s.p50),
            fmt_latency(s.p99),
            fmt_latency(s.p999),
            fmt_option(s.errors, |e| format!("{e:.0}")),
            fmt_option(s.cpu, |us| format!("{us:.1}us")),
            fmt_option(s.proxy_core, |c| format!("{:.0}%", c * 100.0)),
            fmt_option(s.client_core, |c| format!("{:.0}%", c * 100.0)),
            fmt_option(s.rss, |kib| format!("{:.1}MiB", kib / 1024.0)),
        );
        if !contender.failures.is_empty() {
            println!(
                "   {:<9} ({} failed run(s): {})",
                "",
                contender.failures.len(),
                contender.failures[0]
            );
        }
        summaries.insert(contender.contender, s);
    }
    let ceiling = summaries.get(&Contender::Direct).and_then(|s| s.rate);
    for contender in &report.contenders {
        let Some(s) = summaries.get(&contender.contender) else {
            continue;
        };
        let name = contender.contender.name();
        let mut verdict = String::new();
        if let (Some(ceiling), Some(rate), false) =
            (ceiling, s.rate, contender.contender == Contender::Direct)
        {
            let _ = write!(verdict, "{:.0}% of direct; ", rate / ceiling * 100.0);
        }
        let proxy = s.proxy_core.unwrap_or(0.0);
        let client = s.client_core.unwrap_or(0.0);
        verdict.push_str(if proxy >= 0.9 {
            "bound by the proxy (its core is busy)"
        } else if client >= 0.9 {
            "bound by the client side (load generator + backends saturate their core)"
        } else {
            "no core saturated (latency-bound, or a different limit)"
        });
        if let Some(tls) = contender
            .runs
            .iter()
            .find_map(|run| run.load.tls.as_deref())
        {
            let _ = write!(verdict, "; {tls}");
        }
        println!("   {name:<9} -> {verdict}");
    }
}

/// Issue #9's memory targets for fulcrum, printed next to every contender's idle-10k figures.
const IDLE_TARGET_MIB: f64 = 20.0;
const IDLE_ADDED_TARGET_MIB: f64 = 40.0;

fn print_idle(scenario: &Scenario, report: &ScenarioReport) {
    let mib = |kib: f64| format!("{:.1}MiB", kib / 1024.0);
    println!(
        "   {:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>6} {:>9}",
        "contender",
        "idle RSS",
        format!("{}k RSS", scenario.connections / 1000),
        "added",
        "per conn",
        "closed",
        "opened",
        "failed",
        "kept",
        "in",
        "CPU/conn"
    );
    for contender in &report.contenders {
        let name = contender.contender.name();
        if let Some(reason) = &contender.skipped {
            println!("   {name:<9} skipped: {reason}");
            continue;
        }
        let summary = contender.summary();
        let Some(idle) = &summary.idle else {
            let why = contender.failures.first().map_or("", String::as_str);
            println!("   {name:<9} failed: {why}");
            continue;
        };
        println!(
            "   {:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7.0} {:>6.0} {:>6.0} {:>6} {:>9}",
            name,
            mib(idle.rss_idle_kib),
            mib(idle.rss_loaded_kib),
            mib(idle.added_kib),
            format!("{:.1}KiB", idle.added_kib / idle.opened.max(1.0)),
            mib(idle.rss_closed_kib),
            idle.opened,
            idle.failed,
            idle.still_open,
            format!("{:.1}s", idle.open_seconds),
            fmt_option(summary.cpu, |us| format!("{us:.0}us")),
        );
    }
    for contender in &report.contenders {
        let Some(idle) = contender.summary().idle else {
            continue;
        };
        let (idle_mib, added_mib) = (idle.rss_idle_kib / 1024.0, idle.added_kib / 1024.0);
        let meets = |value: f64, target: f64| if value < target { "met" } else { "MISSED" };
        let mut line = format!(
            "idle {idle_mib:.1} MiB (target < {IDLE_TARGET_MIB} MiB: {}); {:.0} idle connections add {added_mib:.1} MiB (target < {IDLE_ADDED_TARGET_MIB} MiB: {})",
            meets(idle_mib, IDLE_TARGET_MIB),
            idle.opened,
            meets(added_mib, IDLE_ADDED_TARGET_MIB),
        );
        if idle.still_open < scenario.connections as f64 {
            let _ = write!(
                line,
                "; only {:.0} of {} connections were open at the reading",
                idle.still_open, scenario.connections
            );
        }
        println!("   {:<9} -> {line}", contender.contender.name());
    }
}
