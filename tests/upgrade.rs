//! Running fulcrum like infrastructure, through the real binary: an upgrade under load, an
//! upgrade whose new config is broken (the old process keeps serving), systemd socket
//! activation and `sd_notify`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::TempDir;
use common::process::Process;

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

/// A config with listener `web` on port 0 of loopback and the admin listener.
fn config(dir: &TempDir, backend: SocketAddr, extra: &str) -> std::path::PathBuf {
    config_on(dir, "127.0.0.1:0", backend, extra)
}

/// A config with listener `web` on `web` and the admin listener on port 0 of loopback.
fn config_on(dir: &TempDir, web: &str, backend: SocketAddr, extra: &str) -> std::path::PathBuf {
    let path = dir.path().join("fulcrum.toml");
    let text = format!(
        "{extra}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listeners]]\nname = \"web\"\n\
         listen = \"{web}\"\npool = \"app\"\n\n[pools.app]\nbackends = [\"{backend}\"]\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// Starts `command` (the binary, or something that execs it) on `config`, collecting its log.
fn spawn(mut command: Command, config: &std::path::Path) -> Process {
    command.arg("--config").arg(config);
    Process::spawn(command)
}

/// Starts `command` (the binary, or something that execs it) on `config` and waits for the
/// startup line; returns the process and the addresses of `web` and the admin listener.
fn start(command: Command, config: &std::path::Path) -> (Process, SocketAddr, SocketAddr) {
    let mut process = spawn(command, config);
    process.wait_started_blocking();
    let (web, admin) = (process.listener("web"), process.admin());
    (process, web, admin)
}

/// One request on a new connection (`Connection: close`); the status line, or why none came.
fn request(address: SocketAddr, path: &str) -> Result<String, String> {
    let stream = TcpStream::connect(address).map_err(|err| format!("connect: {err}"))?;
    request_on(stream, path)
}

/// One request on `stream` (`Connection: close`); the status line, or why none came.
fn request_on(mut stream: TcpStream, path: &str) -> Result<String, String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
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
    let old_pid = old.id();
    // The file is broken after start (the running process keeps its last good config).
    std::fs::write(&path, "[[listeners]]\nname = 3\n").expect("break the config");
    signal(old_pid, "USR2");
    old.wait_log_blocking("upgrade failed; still serving", Duration::from_secs(60));
    assert!(
        old.child().try_wait().expect("wait").is_none(),
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
    signal(process.id(), "HUP");
    expect("RELOADING=1");
    expect("READY=1");
    signal(process.id(), "TERM");
    expect("STOPPING=1");
    let status = exit_status(process.child(), Duration::from_secs(30));
    assert!(
        status.success(),
        "drained and exited 0 on SIGTERM: {status}"
    );
    assert!(heard.load(Ordering::Relaxed) >= 4);
}

/// Waits (at most `limit`) for `child` to exit.
fn exit_status(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait on the process") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The next message on a notify socket, waiting at most its read timeout.
fn notification(notify: &UnixDatagram, waiting_for: &str) -> String {
    let mut message = [0u8; 256];
    let len = notify
        .recv(&mut message)
        .unwrap_or_else(|err| panic!("waiting for {waiting_for}: {err}"));
    String::from_utf8_lossy(&message[..len]).into_owned()
}

#[test]
fn an_upgrade_tells_the_service_manager_the_new_main_pid_and_does_not_stop_the_service() {
    let backend = backend();
    let dir = TempDir::new("notify-upgrade");
    let path = config(&dir, backend, "");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut command = Command::new(BIN);
    command.env("NOTIFY_SOCKET", &notify_path);
    let (mut old, _, admin) = start(command, &path);
    let old_pid = old.id();
    while !notification(&notify, "READY=1").contains("READY=1") {}
    signal(old_pid, "USR2");
    // systemd takes the new process as the service's main one from its MAINPID= (with
    // NotifyAccess=all, as deploy/systemd sets).
    let new_pid = loop {
        let message = notification(&notify, "the new process's MAINPID=");
        assert!(!message.contains("STOPPING=1"), "{message:?}");
        let pid = message
            .lines()
            .find_map(|line| line.strip_prefix("MAINPID="))
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid.filter(|pid| *pid != old_pid) {
            assert!(message.contains("READY=1"), "{message:?}");
            break pid;
        }
    };
    let _new = KillOnDrop(new_pid);
    let status = exit_status(old.child(), Duration::from_secs(60));
    assert!(
        status.success(),
        "the old process drained and exited 0: {status}"
    );
    // Whatever the old process said is queued by now: STOPPING=1 from it would have made
    // systemd stop the service, new process included.
    notify.set_nonblocking(true).expect("non-blocking");
    let mut message = [0u8; 256];
    while let Ok(len) = notify.recv(&mut message) {
        let text = String::from_utf8_lossy(&message[..len]);
        assert!(!text.contains("STOPPING=1"), "after a hand-over: {text:?}");
    }
    assert_eq!(serving_pid(admin), Some(u64::from(new_pid)));
    notify.set_nonblocking(false).expect("blocking");
    signal(new_pid, "TERM");
    while !notification(&notify, "STOPPING=1").contains("STOPPING=1") {}
}

/// Kills a process by PID when the test ends, however it ends (the new process of an upgrade
/// is the old one's child, not the test's).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        signal(self.0, "KILL");
    }
}

/// The admin `/status` document, or `None` while nothing answers it well.
async fn status_async(admin: SocketAddr) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8(response).ok()?;
        serde_json::from_str(response.split("\r\n\r\n").nth(1)?).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls `condition` every 20 ms until it holds, failing the test after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the load clients saw, summed over every client task.
#[derive(Debug, Default)]
struct Tally {
    /// Requests answered `200 ok`.
    ok: usize,
    /// Connects refused (or failed otherwise): must stay zero.
    refused: Vec<String>,
    /// Requests that failed: must stay zero (see [`load`]).
    failed: Vec<String>,
    /// Keep-alive connections the server closed between requests (seen before sending).
    closed_idle: usize,
    /// Requests sent on a reused connection that the server closed before any response byte,
    /// sent again on a new connection; the paths, checked against what the backend received.
    resent: Vec<String>,
}

/// One request to `path` on a connection; `Err(true)` when the connection was a reused one
/// that closed before any byte of a response (the client may send again), `Err(false)` for
/// any other failure; the message says what happened.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<common::TestBody>,
    path: &str,
    reused: bool,
    close: bool,
) -> Result<(), (bool, String)> {
    use http_body_util::BodyExt as _;
    let mut request = http::Request::get(path).header("host", "upgrade.test");
    if close {
        request = request.header("connection", "close");
    }
    let request = request.body(common::empty()).expect("request");
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(err) => {
            // Closed (cleanly or by a reset) before any response byte: the race every HTTP/1.1
            // client has with a server closing an idle keep-alive connection.
            let closed_early = err.is_incomplete_message()
                || err.is_canceled()
                || std::error::Error::source(&err)
                    .and_then(|source| source.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
            return Err((reused && closed_early, format!("{path}: {err:?}")));
        }
    };
    let status = response.status();
    match response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
    {
        Ok(body) if status == 200 && body == "app" => Ok(()),
        Ok(body) => Err((false, format!("{path}: {status} {body:?}"))),
        Err(err) => Err((false, format!("{path}: body: {err:?}"))),
    }
}

/// A client task sending `GET /load/{task}/{n}` until `stop`: on keep-alive connections (a new
/// one whenever the server closed the last) or, with `keep_alive` false, on a new connection
/// per request.
///
/// "Zero failed" means: every connect succeeded, and every request got a complete `200` whose
/// body is the backend's, except one case, which a browser retries too: a request sent on a
/// connection that had already carried a response, and that the server closed before sending
/// any byte of a response to it. That request is sent once more on a new connection (a second
/// failure is a failure) and recorded in `resent`; the test then checks that the backend
/// received each resent path exactly once, so the first attempt never reached it (fulcrum
/// closed the connection between requests, it did not lose a request it had taken).
async fn load(
    task: usize,
    web: SocketAddr,
    keep_alive: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut connection = None;
    let mut served = 0usize;
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) && n < 50_000 {
        n += 1;
        let path = format!("/load/{task}/{n}");
        let mut resent = false;
        loop {
            if let Some(sender) = connection.as_mut() {
                let ready: &mut hyper::client::conn::http1::SendRequest<common::TestBody> = sender;
                if ready.ready().await.is_err() {
                    // The server closed the idle connection (after `Connection: close` or a
                    // drain) before this request went out: a new connection, nothing lost.
                    tally.closed_idle += 1;
                    connection = None;
                }
            }
            if connection.is_none() {
                match tokio::net::TcpStream::connect(web).await {
                    Ok(stream) => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        match hyper::client::conn::http1::handshake(io).await {
                            Ok((sender, conn)) => {
                                tokio::spawn(conn);
                                connection = Some(sender);
                                served = 0;
                            }
                            Err(err) => {
                                tally.failed.push(format!("{path}: handshake: {err}"));
                                break;
                            }
                        }
                    }
                    Err(err) => {
                        tally.refused.push(format!("{path}: connect: {err}"));
                        break;
                    }
                }
            }
            let sender = connection.as_mut().expect("connected above");
            match exchange(sender, &path, served > 0, !keep_alive).await {
                Ok(()) => {
                    tally.ok += 1;
                    served += 1;
                    if !keep_alive {
                        connection = None;
                    }
                    break;
                }
                Err((true, _)) if !resent => {
                    resent = true;
                    tally.resent.push(path.clone());
                    connection = None;
                }
                Err((_, message)) => {
                    tally.failed.push(message);
                    connection = None;
                    break;
                }
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_under_load_fails_no_request_and_refuses_no_connection() {
    let backend = common::backend::TestBackend::spawn("app").await;
    let dir = TempDir::new("upgrade-load");
    let path = config(
        &dir,
        backend.addr(),
        "[runtime]\nshutdown_timeout = \"20s\"\n",
    );
    let (mut old, web, admin) = tokio::task::block_in_place(|| start(Command::new(BIN), &path));
    let old_pid = old.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two clients on keep-alive connections, two opening a connection per request.
    let clients: Vec<_> = (0..4)
        .map(|task| tokio::spawn(load(task, web, task < 2, std::sync::Arc::clone(&stop))))
        .collect();
    eventually(Duration::from_secs(10), "load served", || async {
        backend.request_count() >= 200
    })
    .await;
    signal(old_pid, "USR2");
    let serving = || async {
        status_async(admin)
            .await
            .and_then(|status| status["pid"].as_u64())
            .and_then(|pid| u32::try_from(pid).ok())
    };
    // Both processes answer on the shared admin socket until the old one stops accepting.
    let deadline = Instant::now() + Duration::from_secs(60);
    let new_pid = loop {
        if let Some(pid) = serving().await.filter(|pid| *pid != old_pid) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new process in /status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _new = KillOnDrop(new_pid);
    eventually(Duration::from_secs(60), "the old process to exit", || {
        let exited = old
            .child()
            .try_wait()
            .expect("wait on the old process")
            .is_some();
        async move { exited }
    })
    .await;
    let after_exit = backend.request_count();
    eventually(
        Duration::from_secs(10),
        "load served by the new process",
        || async { backend.request_count() >= after_exit + 200 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for client in clients {
        let part = common::within(Duration::from_secs(30), "a load client", client)
            .await
            .expect("load client panicked");
        tally.ok += part.ok;
        tally.refused.extend(part.refused);
        tally.failed.extend(part.failed);
        tally.closed_idle += part.closed_idle;
        tally.resent.extend(part.resent);
    }
    println!(
        "upgrade under load: {} ok, {} idle closes, {} resent, {} failed, {} refused",
        tally.ok,
        tally.closed_idle,
        tally.resent.len(),
        tally.failed.len(),
        tally.refused.len()
    );
    assert!(tally.refused.is_empty(), "refused: {:?}", tally.refused);
    assert!(tally.failed.is_empty(), "failed: {:?}", tally.failed);
    let received = backend.requests();
    for path in &tally.resent {
        let times = received
            .iter()
            .filter(|request| request.path == *path)
            .count();
        assert_eq!(times, 1, "{path} was resent after the backend got it");
    }
    assert_eq!(serving().await, Some(new_pid));
}

#[test]
fn under_systemd_socket_activation_the_inherited_socket_serves() {
    let Some(activate) = common::tools::require_tool("systemd-socket-activate") else {
        return;
    };
    let backend = backend();
    let dir = TempDir::new("socket-activation");
    // A port that was free a moment ago, for systemd-socket-activate to bind; fulcrum cannot
    // bind it itself while that socket is open, so serving on it means using the inherited one.
    let web = TcpListener::bind("127.0.0.1:0")
        .and_then(|probe| probe.local_addr())
        .expect("a free port");
    let path = config_on(&dir, &web.to_string(), backend, "");
    let mut command = Command::new(activate);
    command
        .arg(format!("--listen={web}"))
        .arg("--fdname=web")
        .arg(BIN);
    let mut process = spawn(command, &path);
    // systemd-socket-activate starts fulcrum on the first connection, which must be served:
    // connect until its socket is there (refused before), then send on that connection.
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match TcpStream::connect(web) {
            Ok(stream) => break stream,
            Err(err) => {
                if let Some(status) = process.child().try_wait().expect("wait") {
                    panic!("systemd-socket-activate exited ({status}); was {web} taken?");
                }
                assert!(
                    Instant::now() < deadline,
                    "systemd-socket-activate did not listen on {web}: {err}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(
        request_on(first, "/first"),
        Ok("HTTP/1.1 200 OK".to_owned())
    );
    process.wait_log_blocking("fulcrum started", Duration::from_secs(20));
    let lines = process.lines();
    assert!(
        lines
            .iter()
            .any(|line| line.contains("using an inherited socket")
                && line.contains(&web.to_string())),
        "the listener took the inherited socket: {lines:#?}"
    );
    assert_eq!(request(web, "/second"), Ok("HTTP/1.1 200 OK".to_owned()));
}
