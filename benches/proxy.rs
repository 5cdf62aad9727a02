//! End-to-end throughput and latency: fulcrum side by side with the backend alone (the
//! ceiling), nginx and HAProxy, on loopback. See `benches/README.md` for the scenarios, the
//! contenders' configs and how to read the output.
//!
//! ```sh
//! cargo bench --bench proxy -- --quick     # 1 round of 2 s per contender, under a minute
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

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// Size of the "small" responses.
const SMALL_BODY: usize = 13;
/// Helpers give up on their own after this long, whatever happens to the parent.
const HELPER_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a contender may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: cargo bench --bench proxy -- [options]

  --quick               1 round of 2 s per contender, no warm-up (under a minute)
  --rounds N            rounds per scenario (default 3); contenders alternate A B C A B C ...
  --duration SECS       measured seconds per run (default 10; --quick: 2)
  --warmup SECS         unmeasured seconds before each run (default 1; --quick: 0)
  --only NAME,...       scenarios to run (default all): keepalive-64 keepalive-1000 body-64k
                        close h2 tls failover tcp-bulk
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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
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
        (options.rounds, options.duration, options.warmup) = (1, 2, 0);
    }
    options.rounds = explicit.0.unwrap_or(options.rounds).max(1);
    options.duration = explicit.1.unwrap_or(options.duration).max(1);
    options.warmup = explicit.2.unwrap_or(options.warmup);
    Ok(options)
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Traffic {
    Http,
    Http2,
    Tls,
    Tcp,
}

#[derive(Debug, Clone)]
struct Scenario {
    name: &'static str,
    about: &'static str,
    traffic: Traffic,
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
            name: "h2",
            about: "HTTP/2 (h2c prior knowledge) from the client",
            traffic: Traffic::Http2,
            ..base.clone()
        },
        Scenario {
            name: "tls",
            about: "HTTPS termination",
            traffic: Traffic::Tls,
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
    /// Requests (or MiB for TCP) per second.
    rate: f64,
    proxy_cpu_us_per_op: Option<f64>,
    proxy_core: Option<f64>,
    client_core: f64,
    peak_rss_kib: Option<u64>,
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
            "proxy_cpu_us_per_op": self.proxy_cpu_us_per_op,
            "proxy_core_share": self.proxy_core,
            "client_core_share": self.client_core,
            "proxy_peak_rss_kib": self.peak_rss_kib,
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
        }
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
    let unit = if scenario.traffic == Traffic::Tcp {
        "MiB/s"
    } else {
        "req/s"
    };
    let skipped = match scenario.traffic {
        Traffic::Tls => Some(
            "skipped: not implemented in this bench yet (needs a generated certificate and wrk over https)"
                .to_owned(),
        ),
        Traffic::Http2 => Some(if env.h2load.is_none() {
            "skipped: h2load not installed (Debian: nghttp2-client)".to_owned()
        } else {
            "skipped: h2load support not implemented yet".to_owned()
        }),
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
            skipped: unsupported(env, scenario, contender),
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
    let tcp = scenario.traffic == Traffic::Tcp;
    let mut command = match contender {
        Contender::Direct => return Err("direct has no proxy".into()),
        Contender::Fulcrum => {
            let config = dir.join("fulcrum.toml");
            std::fs::write(&config, fulcrum_config(addr, free_port()?, tcp, backends))?;
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
            std::fs::write(&config, nginx_config(&dir, addr, tcp, module, backends))?;
            let binary = env.nginx.as_deref().ok_or("nginx not installed")?;
            let mut command = env.command(1, binary);
            command.arg("-p").arg(&dir).arg("-c").arg(&config);
            command
        }
        Contender::Haproxy => {
            let config = dir.join("haproxy.cfg");
            std::fs::write(&config, haproxy_config(addr, tcp, backends))?;
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

fn fulcrum_config(addr: SocketAddr, admin: u16, tcp: bool, backends: &[SocketAddr]) -> String {
    let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    let protocol = if tcp { "tcp" } else { "http" };
    format!(
        "# Generated by benches/proxy.rs.\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\nmetrics = true\n\n\
         [runtime]\nworker_threads = 1\nshutdown_timeout = \"1s\"\n\n\
         [[listeners]]\nname = \"bench\"\nlisten = \"{addr}\"\nprotocol = \"{protocol}\"\npool = \"app\"\n\n\
         [pools.app]\nalgorithm = \"round_robin\"\nbackends = [{}]\nretries = 2\n",
        list.join(", ")
    )
}

fn nginx_config(
    dir: &Path,
    addr: SocketAddr,
    tcp: bool,
    stream_module: Option<&Path>,
    backends: &[SocketAddr],
) -> String {
    let dir = dir.display();
    let servers: String = backends
        .iter()
        .map(|backend| format!("    server {backend};\n"))
        .collect();
    let mut config = String::new();
    if let (true, Some(module)) = (tcp, stream_module) {
        let _ = writeln!(config, "load_module {};", module.display());
    }
    let _ = write!(
        config,
        "# Generated by benches/proxy.rs.\n\
         daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 16384;\n\
         pid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\n\
         events {{ worker_connections 8192; }}\n"
    );
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
             \x20 upstream app {{\n{servers}    keepalive 64;\n    keepalive_requests 1000000;\n  }}\n\
             \x20 server {{\n\
             \x20   listen {addr};\n\
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

fn haproxy_config(addr: SocketAddr, tcp: bool, backends: &[SocketAddr]) -> String {
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
    format!(
        "# Generated by benches/proxy.rs.\n\
         global\n  nbthread 1\n  maxconn 4096\n\n\
         defaults\n  mode {mode}\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n\
         \x20 retries 2\n  option redispatch 1\n{http_options}\n\
         frontend bench\n  bind {addr}\n  default_backend app\n\n\
         backend app\n  balance roundrobin\n{servers}"
    )
}

/// Starts the load generator against `addr` for `seconds`.
fn start_load(
    env: &Environment,
    scenario: &Scenario,
    addr: SocketAddr,
    seconds: u64,
) -> Result<ChildGuard> {
    let mut command = match (&env.wrk, scenario.traffic) {
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
            command.arg(format!("http://{addr}/"));
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
    ChildGuard::spawn("load generator", &mut command)
}

/// Waits for the load generator and parses its report.
fn finish_load(mut load: ChildGuard, seconds: u64) -> Result<LoadResult> {
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
    let mut backends = (0..scenario.backends)
        .map(|_| start_backend(env, scenario))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let proxy = match contender {
        Contender::Direct => None,
        _ => Some(start_proxy(env, scenario, contender, &addrs)?),
    };
    let target = proxy.as_ref().map_or(addrs[0], |proxy| proxy.addr);
    if options.warmup > 0 && !scenario.kill_one {
        finish_load(
            start_load(env, scenario, target, options.warmup)?,
            options.warmup,
        )?;
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
    })
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
        println!("   {name:<9} -> {verdict}");
    }
}
