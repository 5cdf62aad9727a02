//! Process-level behaviour of the real `fulcrum` binary: `--check`, `--version`, a SIGTERM
//! drain with a slow request in flight, file and memory settings of the process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

fn write_config(dir: &TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path().join("fulcrum.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

#[test]
fn check_accepts_a_valid_file_and_prints_a_summary() {
    let dir = TempDir::new("check-ok");
    let path = write_config(
        &dir,
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\", { address = \"127.0.0.1:3002\", weight = 2 }]\n",
    );
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run fulcrum");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stdout.contains("pool app (round_robin, 2 backends"),
        "{stdout}"
    );
    assert!(
        stdout.contains("127.0.0.1:3002 (127.0.0.1:3002) weight 2"),
        "{stdout}"
    );
}

#[test]
fn check_names_an_unknown_route_pool_and_warns_about_a_shadowed_route() {
    let dir = TempDir::new("check-routes");
    let routes = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
        [[listeners.routes]]\npath_prefix = \"/api\"\npool = \"app\"\n\n\
        [[listeners.routes]]\nname = \"users\"\npath_prefix = \"/api/users\"\npool = \"POOL\"\n\n\
        [pools.app]\nbackends = [\"127.0.0.1:3001\"]\n";
    let check = |body: &str| {
        let path = write_config(&dir, body);
        let output = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .expect("run fulcrum");
        (path.display().to_string(), output)
    };
    let (file, output) = check(&routes.replace("POOL", "nope"));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "{file}:13:8: listeners[0].routes[1].pool: pool \"nope\" does not exist"
        )),
        "{stderr}"
    );
    let (file, output) = check(&routes.replace("POOL", "app"));
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("route users -> pool app"), "{stdout}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "warning: {file}:10:1: listeners[0].routes[1]: route \"users\" can never match: route \"route-1\" ({file}:6:1)"
        )),
        "{stderr}"
    );
}

#[test]
fn check_rejects_an_invalid_file_listing_every_error() {
    let dir = TempDir::new("check-bad");
    let path = write_config(
        &dir,
        "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"nope\"\n\n[pools.app]\nbackends = [\"127.0.0.1:99999\"]\n",
    );
    let output = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .expect("run fulcrum");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:4:8: listeners[0].pool: pool \"nope\" does not exist"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:7:13: pools.app.backends[0]: \"127.0.0.1:99999\" is not a valid address"
        )),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let output = Command::new(BIN)
        .args(["--config", "/nonexistent/fulcrum.toml", "--check"])
        .output()
        .expect("run fulcrum");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/fulcrum.toml: cannot read config file"),
        "{stderr}"
    );
}

#[test]
fn version_and_help() {
    let output = Command::new(BIN).arg("--version").output().expect("run");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("fulcrum "));
    let output = Command::new(BIN).arg("--help").output().expect("run");
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("--check"));
}

/// A one-request-at-a-time backend on a thread that answers after `delay`.
fn slow_backend(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let address = listener.local_addr().expect("backend address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                let mut line = String::new();
                // Read the request head.
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n" {
                        std::thread::sleep(delay);
                        let body = "slow done\n";
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if stream.write_all(response.as_bytes()).is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            });
        }
    });
    address
}

/// A child process that is killed and reaped if the test ends early.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // Best effort on a failing test's way out.
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts the binary and waits for its startup line; returns the child and the listener address.
fn start_fulcrum(config: &std::path::Path) -> (Running, SocketAddr) {
    let (child, address, _) = start_command(Command::new(BIN), config);
    (child, address)
}

/// Like [`start_fulcrum`], with `command` running the binary (it must exec it, keeping the pid);
/// also returns the admin listener's address, if it has one.
fn start_command(
    mut command: Command,
    config: &std::path::Path,
) -> (Running, SocketAddr, Option<SocketAddr>) {
    let child = command
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fulcrum");
    let mut child = Running(child);
    let stdout = child.0.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Forward every line so the test can watch the drain messages too.
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("fulcrum printed its startup line");
        if let Some(rest) = line.split("web http://").nth(1) {
            let address = rest
                .split_whitespace()
                .next()
                .expect("address after scheme")
                .parse()
                .expect("a socket address");
            let admin = line
                .split("admin=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|admin| admin.parse().ok());
            // Keep draining stdout in the background so the child never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (child, address, admin);
        }
    }
}

#[test]
fn sigterm_drains_a_slow_request_then_exits_zero() {
    let backend = slow_backend(Duration::from_millis(1500));
    let dir = TempDir::new("drain");
    let path = write_config(
        &dir,
        &format!(
            "[runtime]\nshutdown_timeout = \"10s\"\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
        ),
    );
    let (mut child, address) = start_fulcrum(&path);

    let mut client = TcpStream::connect(address).expect("connect to fulcrum");
    client
        .write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send request");
    // Let the request reach the backend, then ask fulcrum to stop.
    std::thread::sleep(Duration::from_millis(300));
    let sent_at = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());

    // New connections are refused once the listener has stopped accepting.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        TcpStream::connect(address).is_err(),
        "listener still accepting after SIGTERM"
    );

    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set timeout");
    let mut response = String::new();
    client
        .read_to_string(&mut response)
        .expect("read response until close");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("slow done\n"), "{response}");

    let exit = wait_with_timeout(&mut child.0, Duration::from_secs(10));
    assert_eq!(exit, Some(0), "fulcrum exit code");
    assert!(
        sent_at.elapsed() >= Duration::from_millis(1000),
        "exited before the slow request finished"
    );
}

/// The soft and hard "Max open files" limits of process `pid`.
fn open_files_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .expect("a Max open files line");
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().expect("soft limit").to_owned();
    let hard = fields.next().expect("hard limit").to_owned();
    (soft, hard)
}

#[test]
fn open_files_soft_limit_is_raised_to_the_hard_limit() {
    let backend = slow_backend(Duration::from_millis(10));
    let dir = TempDir::new("nofile");
    let path = write_config(
        &dir,
        &format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
        ),
    );
    // util-linux's prlimit lowers only the soft limit, then execs fulcrum under the same pid.
    let mut command = Command::new("prlimit");
    command.args(["--nofile=64:", "--", BIN]);
    let (child, _, _) = start_command(command, &path);
    let (soft, hard) = open_files_limits(child.0.id());
    assert_eq!(soft, hard, "soft limit left below the hard limit");
    assert_ne!(soft, "64");
}

/// The kernel's `THP_enabled` flag for process `pid` (`/proc/PID/status`).
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .expect("a THP_enabled line (Linux 5.0 or later)")
        .trim()
        .to_owned()
}

#[test]
fn the_process_runs_without_transparent_huge_pages() {
    let backend = slow_backend(Duration::from_millis(10));
    let dir = TempDir::new("thp");
    let path = write_config(
        &dir,
        &format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
        ),
    );
    // The test process itself may have them; the flag must come from fulcrum.
    let (child, _) = start_fulcrum(&path);
    assert_eq!(thp_enabled(child.0.id()), "0");
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait on child") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Reads one response with a `content-length` body from `stream`; returns head and body.
fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read a head line");
        assert!(!line.is_empty(), "connection closed inside a head: {head}");
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().expect("a content-length");
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("read the body");
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// The `fulcrum_connections_parked` gauge of listener `web`, scraped from `admin`.
fn parked_connections(admin: SocketAddr) -> f64 {
    let mut stream = TcpStream::connect(admin).expect("connect to admin");
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .expect("ask for metrics");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read metrics");
    text.lines()
        .find_map(|line| line.strip_prefix("fulcrum_connections_parked{listener=\"web\"} "))
        .map_or(0.0, |value| value.trim().parse().expect("a gauge value"))
}

/// Polls `condition` every 50 ms for up to `limit`.
fn eventually(limit: Duration, condition: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    condition()
}

#[test]
fn quiet_keep_alive_connections_are_parked_and_resume_on_the_next_request() {
    let backend = slow_backend(Duration::ZERO);
    let dir = TempDir::new("park");
    let path = write_config(
        &dir,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nmetrics = true\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\nidle_timeout = \"30s\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
        ),
    );
    let (_child, address, admin) = start_command(Command::new(BIN), &path);
    let admin = admin.expect("the startup line names the admin listener");
    let mut clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(address).expect("connect to fulcrum"))
        .collect();
    for client in &mut clients {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        client
            .write_all(b"GET /first HTTP/1.1\r\nHost: test\r\n\r\n")
            .expect("send a request");
        let (head, body) = read_response(client);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "slow done\n");
    }
    assert!(
        eventually(Duration::from_secs(5), || parked_connections(admin) == 3.0),
        "three quiet connections parked; gauge {}",
        parked_connections(admin)
    );
    // A parked connection answers its next request as if nothing happened, and counts as
    // active again.
    clients[0]
        .write_all(b"GET /again HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("send a request on the parked connection");
    let (head, body) = read_response(&mut clients[0]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "slow done\n");
    assert_eq!(parked_connections(admin), 2.0);
    // A parked connection the client closes leaves the gauge.
    drop(clients.pop());
    assert!(
        eventually(Duration::from_secs(5), || parked_connections(admin) == 1.0),
        "gauge {}",
        parked_connections(admin)
    );
}

#[test]
fn a_missing_tool_skips_locally_and_fails_under_ci() {
    let missing = "fulcrum-test-no-such-tool";
    assert_eq!(common::tools::require_tool_in(missing, false), None);
    let under_ci = std::panic::catch_unwind(|| common::tools::require_tool_in(missing, true));
    assert!(
        under_ci.is_err(),
        "CI=true must fail a test whose tool is missing"
    );
    assert!(common::tools::require_tool_in("sh", true).is_some());
}

/// Resident memory of process `pid` in KiB (`VmRSS` in `/proc/PID/status`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

#[test]
fn a_rapid_reset_attack_from_one_connection_gets_goaway_in_bounded_memory() {
    let backend = slow_backend(Duration::ZERO);
    let dir = TempDir::new("rapid-reset");
    let path = write_config(
        &dir,
        &format!(
            "[runtime]\nworker_threads = 2\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
        ),
    );
    let (child, address) = start_fulcrum(&path);
    let pid = child.0.id();
    // Warm up: one plain request, so lazily built state is in the idle figure.
    let mut warm = TcpStream::connect(address).expect("connect");
    warm.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    warm.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("request");
    let (head, _) = read_response(&mut warm);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid);

    let mut attacker = TcpStream::connect(address).expect("connect the attacker");
    let mut reader = attacker.try_clone().expect("clone");
    let received = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    });
    attacker
        .write_all(&common::h2frames::preface())
        .expect("preface");
    let started = Instant::now();
    let mut peak = idle;
    let mut next_id = 1u32;
    while started.elapsed() < Duration::from_secs(10) {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.extend(common::h2frames::get(next_id));
            batch.extend(common::h2frames::cancel(next_id));
            next_id += 2;
        }
        peak = peak.max(rss_kib(pid));
        if attacker.write_all(&batch).is_err() {
            break;
        }
    }
    let _ = attacker.shutdown(std::net::Shutdown::Write);
    let received = received.join().expect("reader thread");
    peak = peak.max(rss_kib(pid));
    assert_eq!(
        common::h2frames::goaway_code(&received),
        Some(common::h2frames::ENHANCE_YOUR_CALM),
        "the attacker's connection ends with GOAWAY (ENHANCE_YOUR_CALM) after {} streams",
        next_id / 2
    );
    assert!(
        peak <= idle + 10 * 1024,
        "RSS grew from {idle} KiB to {peak} KiB during the attack"
    );
    println!(
        "rapid reset: {} streams sent in {:?}; RSS idle {idle} KiB, peak {peak} KiB",
        next_id / 2,
        started.elapsed()
    );
}

#[test]
fn an_admin_listener_beyond_loopback_without_a_token_is_warned_about() {
    let dir = TempDir::new("admin-exposed");
    let path = write_config(
        &dir,
        "[admin]\nlisten = \"0.0.0.0:0\"\n\n[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"127.0.0.1:3001\"]\n",
    );
    let mut child = Running(
        Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fulcrum"),
    );
    let stdout = child.0.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let warning = loop {
        let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            panic!("no warning about the exposed admin listener within 10 s");
        };
        if line.contains("WARN") && line.contains("has no token_file") {
            break line;
        }
    };
    assert!(warning.contains("address=0.0.0.0:"), "{warning}");
}

/// With active checks, fulcrum runs the first round of checks before its listener accepts: a
/// client that connects the moment the port takes connections gets an answer from a backend,
/// never a 503 for want of a check.
#[test]
fn clients_connecting_at_start_never_see_503_for_want_of_a_first_check() {
    let backends: Vec<String> = (0..3)
        .map(|_| format!("\"{}\"", slow_backend(Duration::ZERO)))
        .collect();
    // A free port for fulcrum to listen on (clients must know it before it starts).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free port")
        .port();
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = TempDir::new("first-checks");
    let path = write_config(
        &dir,
        &format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"{address}\"\npool = \"app\"\n\n\
             [pools.app]\nbackends = [{}]\n\
             [pools.app.health_check]\npath = \"/health\"\ninterval = \"500ms\"\n\
             timeout = \"500ms\"\njitter = \"50ms\"\n",
            backends.join(", ")
        ),
    );
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut stream = loop {
                    match connect_from_elsewhere(address) {
                        Ok(stream) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(err) => panic!("fulcrum never listened: {err}"),
                    }
                };
                stream
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("read timeout");
                (0..5)
                    .map(|i| {
                        let request = format!("GET /first/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
                        stream.write_all(request.as_bytes()).expect("send");
                        read_response(&mut stream).0
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fulcrum");
    let mut child = Running(child);
    for client in clients {
        for head in client.join().expect("client thread") {
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        }
    }
    child.0.kill().expect("stop fulcrum");
}

/// Connects to `address` from 127.0.0.2: a connect loop on a port nobody listens on yet may
/// otherwise pick that very port as its own and connect to itself (TCP simultaneous open).
fn connect_from_elsewhere(address: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())?;
    socket.connect(&address.into())?;
    Ok(socket.into())
}
