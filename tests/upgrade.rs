//! Running fulcrum like infrastructure, through the real binary: an upgrade whose new config is
//! broken (the old process keeps serving) and `sd_notify`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// A backend answering every request with `ok` (one thread per connection, keep-alive).
fn backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
    let address = listener.local_addr().expect("backend address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                let mut line = String::new();
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if line == "\r\n"
                        && stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                            .is_err()
                    {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    address
}

/// A config with listener `web` and the admin listener on port 0 of loopback.
fn config(dir: &TempDir, backend: SocketAddr, extra: &str) -> std::path::PathBuf {
    let path = dir.path().join("fulcrum.toml");
    let text = format!(
        "{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\n\
         listen = \"127.0.0.1:0\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

/// A process that is stopped when the test ends, however it ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// Starts `command` (the binary, or something that execs it) on `config` and waits for the
/// startup line; returns the process and the addresses of `web` and the admin listener.
fn start(mut command: Command, config: &std::path::Path) -> (Process, SocketAddr, SocketAddr) {
    let child = command
        .arg("--config")
        .arg(config)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fulcrum");
    let mut process = Process(child);
    let stdout = process.0.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("fulcrum printed its startup line");
        let field = |after: &str| {
            line.split(after)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|address| address.trim_matches(',').parse().ok())
        };
        if let (Some(web), Some(admin)) = (field("web http://"), field("admin=")) {
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return (process, web, admin);
        }
    }
}

/// One request on a new connection (`Connection: close`); the status line, or why none came.
fn request(address: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(address).map_err(|err| format!("connect: {err}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|err| err.to_string())?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream
        .write_all(head.as_bytes())
        .map_err(|err| format!("write: {err}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|err| format!("read: {err}"))?;
    response
        .lines()
        .next()
        .map(str::to_owned)
        .filter(|line| !line.is_empty())
        .ok_or_else(|| "closed without a response".to_owned())
}

/// The admin `/status` document.
fn status(admin: SocketAddr) -> serde_json::Value {
    let mut stream = TcpStream::connect(admin).expect("connect to admin");
    stream
        .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let body = response.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON status")
}

/// The PID `/status` names; `None` while no process answers.
fn serving_pid(admin: SocketAddr) -> Option<u64> {
    std::panic::catch_unwind(|| status(admin)["pid"].as_u64())
        .ok()
        .flatten()
}

#[test]
fn an_upgrade_to_a_broken_config_leaves_the_old_process_serving() {
    let backend = backend();
    let dir = TempDir::new("upgrade-broken");
    let path = config(&dir, backend, "");
    let (mut old, web, admin) = start(Command::new(BIN), &path);
    let old_pid = old.0.id();
    // The file is broken after start (the running process keeps its last good config).
    std::fs::write(&path, "[[listeners]]\nname = 3\n").expect("break the config");
    signal(old_pid, "USR2");
    // The new process exits at once on the broken file; give it time to try.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        old.0.try_wait().expect("wait").is_none(),
        "the old process keeps running"
    );
    assert_eq!(serving_pid(admin), Some(u64::from(old_pid)));
    assert_eq!(request(web, "/still"), Ok("HTTP/1.1 200 OK".to_owned()));
}

#[test]
fn the_service_manager_hears_ready_reloading_and_stopping() {
    let backend = backend();
    let dir = TempDir::new("notify");
    let path = config(&dir, backend, "");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut command = Command::new(BIN);
    command.env("NOTIFY_SOCKET", &notify_path);
    let (mut process, _, _) = start(command, &path);
    let heard = AtomicUsize::new(0);
    let expect = |state: &str| {
        let mut message = [0u8; 256];
        loop {
            let len = notify
                .recv(&mut message)
                .unwrap_or_else(|err| panic!("waiting for {state}: {err}"));
            heard.fetch_add(1, Ordering::Relaxed);
            if String::from_utf8_lossy(&message[..len]).contains(state) {
                return;
            }
        }
    };
    expect("READY=1");
    signal(process.0.id(), "HUP");
    expect("RELOADING=1");
    expect("READY=1");
    signal(process.0.id(), "TERM");
    expect("STOPPING=1");
    let _ = process.0.wait();
    assert!(heard.load(Ordering::Relaxed) >= 4);
}
