//! End-to-end tests of TCP (layer 4) balancing: real TCP backends written here with tokio, a real
//! fulcrum server with a `protocol = "tcp"` listener, real clients; plus a real database client
//! (`redis-benchmark` against two `redis-server`s) when Redis is installed.

#[path = "../common/mod.rs"]
mod common;

mod balancing;
mod config;
mod connections;
mod hashing;
mod proxy_protocol;
mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::balancer::TestBalancer;
use common::tcp::closed_port;
use common::{bounded_for, tally, within};
use fulcrum::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// Upper bound for one test body, so a hang fails instead of blocking the suite (tighter than
/// the harness default: these tests bound every wait closely).
const TEST_LIMIT: Duration = Duration::from_secs(25);

/// What a [`Backend`] does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Echoes until EOF, then closes its write side.
    Echo,
    /// Sends its name and `\n`, then behaves like [`Mode::Echo`].
    NamedEcho,
    /// Reads everything until EOF, waits a little, then sends it all back and closes: every byte
    /// of the reply travels after the client's FIN.
    EchoAfterEof,
    /// Sends [`GREETING_LEN`] pattern bytes and closes its write side at once, then reads until
    /// EOF and reports what it received.
    SpeakFirst,
    /// Reads until EOF, reports everything it received (PROXY header included), sends nothing.
    Capture,
}

/// Bytes a [`Mode::SpeakFirst`] backend sends before closing its write side.
const GREETING_LEN: usize = 256 * 1024;

/// A TCP server on `127.0.0.1:0` counting its connections.
struct Backend {
    name: String,
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    received: Mutex<mpsc::UnboundedReceiver<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Backend {
    async fn spawn(name: &str, mode: Mode) -> Backend {
        Backend::spawn_at(name, mode, "127.0.0.1:0".parse().expect("address")).await
    }

    async fn spawn_at(name: &str, mode: Mode, address: SocketAddr) -> Backend {
        let listener = TcpListener::bind(address)
            .await
            .expect("bind a test backend");
        let addr = listener.local_addr().expect("backend address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (report, received) = mpsc::unbounded_channel();
        let task = tokio::spawn({
            let name = name.to_owned();
            let accepted = Arc::clone(&accepted);
            let open = Arc::clone(&open);
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    open.fetch_add(1, Ordering::SeqCst);
                    let open = Arc::clone(&open);
                    let report = report.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        // Errors (resets) just end the connection.
                        let _ = serve(stream, mode, &name, &report).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Backend {
            name: name.to_owned(),
            addr,
            accepted,
            open,
            received: Mutex::new(received),
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// The next report of a [`Mode::Capture`] or [`Mode::SpeakFirst`] connection.
    async fn next_report(&self) -> Vec<u8> {
        within(Duration::from_secs(5), "the backend's report", async {
            self.received.lock().await.recv().await
        })
        .await
        .expect("the backend task is alive")
    }

    /// Waits until this backend has no open connection.
    async fn wait_idle(&self) {
        within(
            Duration::from_secs(5),
            "the backend's connections to close",
            async {
                while self.open() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection as `mode` says; an error (a reset) just ends it.
async fn serve(
    mut stream: TcpStream,
    mode: Mode,
    name: &str,
    report: &mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<()> {
    match mode {
        Mode::Echo | Mode::NamedEcho => {
            if mode == Mode::NamedEcho {
                stream.write_all(format!("{name}\n").as_bytes()).await?;
            }
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                let read = stream.read(&mut buffer).await?;
                if read == 0 {
                    break;
                }
                stream.write_all(&buffer[..read]).await?;
            }
            stream.shutdown().await
        }
        Mode::EchoAfterEof => {
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream.write_all(&all).await?;
            stream.shutdown().await
        }
        Mode::SpeakFirst => {
            stream.write_all(&pattern(GREETING_LEN, 7)).await?;
            stream.shutdown().await?;
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await?;
            let _ = report.send(all);
            Ok(())
        }
        Mode::Capture => {
            let mut all = Vec::new();
            stream.read_to_end(&mut all).await?;
            let _ = report.send(all);
            stream.shutdown().await
        }
    }
}

/// `len` deterministic pseudo-random bytes (xorshift), different for each `seed`.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Runs a balancer on `text` (a [`tcp_config`]); its address is that of the listener `db`.
async fn start(text: &str) -> TestBalancer {
    TestBalancer::from_config("l4.toml", text, "db").await
}

/// A config with one tcp listener `db` on `127.0.0.1:0` forwarding to pool `app`.
/// `listener_extra` and `pool_extra` are TOML lines added to the listener and the pool
/// (sub-tables of the pool last).
fn tcp_config(backends: &[SocketAddr], listener_extra: &str, pool_extra: &str) -> String {
    let backends: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
    format!(
        "[runtime]\nshutdown_timeout = \"2s\"\n\n\
         [[listeners]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"app\"\n\
         {listener_extra}\n\n\
         [pools.app]\nbackends = [{}]\n{pool_extra}\n",
        backends.join(", ")
    )
}

/// Reads one `\n`-terminated line (a [`Mode::NamedEcho`] backend's name).
async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut line = Vec::new();
    within(Duration::from_secs(5), "the backend's name line", async {
        loop {
            let byte = stream.read_u8().await.expect("read the backend's name");
            if byte == b'\n' {
                break;
            }
            line.push(byte);
        }
    })
    .await;
    String::from_utf8(line).expect("utf-8 name")
}

/// Connects through the balancer to a [`Mode::NamedEcho`] backend; returns the stream and the
/// name of the backend serving it.
async fn named_connect(lb: &TestBalancer) -> (TcpStream, String) {
    let mut stream = lb.connect().await;
    let name = read_line(&mut stream).await;
    (stream, name)
}

/// Sends `payload`, closes the write side and returns everything read until EOF.
async fn exchange(stream: &mut TcpStream, payload: &[u8]) -> Vec<u8> {
    let (mut reader, mut writer) = stream.split();
    let write = async {
        writer
            .write_all(payload)
            .await
            .expect("write to the balancer");
        writer.shutdown().await.expect("shut down the write side");
    };
    let read = async {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.expect("read until EOF");
        all
    };
    within(Duration::from_secs(10), "an echo exchange", async {
        tokio::join!(write, read).1
    })
    .await
}

/// Backends `a`, `b` and `c`, all in `mode`.
async fn three(mode: Mode) -> [Backend; 3] {
    [
        Backend::spawn("a", mode).await,
        Backend::spawn("b", mode).await,
        Backend::spawn("c", mode).await,
    ]
}

/// The backends' addresses, for [`tcp_config`].
fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}
