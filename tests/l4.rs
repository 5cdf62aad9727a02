//! End-to-end tests of TCP (layer 4) balancing: real TCP backends written here with tokio, a real
//! fulcrum server with a `protocol = "tcp"` listener, real clients; plus a real database client
//! (`redis-benchmark` against two `redis-server`s) when Redis is installed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fulcrum::{Config, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound for one test body, so a hang fails instead of blocking the suite.
const TEST_LIMIT: Duration = Duration::from_secs(25);

/// Runs `future`, failing the test if it takes longer than [`TEST_LIMIT`].
async fn bounded<T>(future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(TEST_LIMIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Awaits `future` for at most `limit`, panicking with `what` on timeout.
async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

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

/// An address on which nothing listens: bound to `127.0.0.1:0`, then released.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a throwaway listener");
    listener.local_addr().expect("bound address")
}

// ---------------------------------------------------------------------------------------------
// Balancer
// ---------------------------------------------------------------------------------------------

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

/// A running fulcrum server.
struct Balancer {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Balancer {
    async fn start(text: &str) -> Balancer {
        let config = Config::parse("l4.toml", text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n--- config ---\n{text}"));
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the balancer: {err}"));
        let addr = server.local_addr("db").expect("listener `db` is bound");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        Balancer {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    async fn connect(&self) -> TcpStream {
        within(
            Duration::from_secs(5),
            "connecting to the balancer",
            TcpStream::connect(self.addr),
        )
        .await
        .expect("connect to the balancer")
    }

    /// Starts a graceful shutdown and waits (bounded) for the server to return.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(Duration::from_secs(10), "the balancer to shut down", task)
                .await
                .expect("the balancer task panicked");
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
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
async fn named_connect(lb: &Balancer) -> (TcpStream, String) {
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

/// Tallies names.
fn tally<'a>(names: impl IntoIterator<Item = &'a String>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(name.clone()).or_insert(0) += 1;
    }
    counts
}

async fn three(mode: Mode) -> [Backend; 3] {
    [
        Backend::spawn("a", mode).await,
        Backend::spawn("b", mode).await,
        Backend::spawn("c", mode).await,
    ]
}

fn addrs(backends: &[Backend]) -> Vec<SocketAddr> {
    backends.iter().map(|b| b.addr).collect()
}

// ---------------------------------------------------------------------------------------------
// Balancing
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_sequential_connections_exactly_evenly() {
    bounded(async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &addrs(&backends),
            "",
            "algorithm = \"round_robin\"",
        ))
        .await;
        let mut sequence = Vec::new();
        for i in 0..60 {
            let (mut stream, name) = named_connect(&lb).await;
            let payload = format!("ping {i}");
            assert_eq!(
                exchange(&mut stream, payload.as_bytes()).await,
                payload.as_bytes(),
                "connection {i} via {name}"
            );
            sequence.push(name);
        }
        let counts = tally(&sequence);
        for backend in &backends {
            assert_eq!(counts.get(&backend.name), Some(&20), "{counts:?}");
            assert_eq!(backend.accepted(), 20, "connections at {}", backend.name);
        }
        for (start, window) in sequence.windows(3).enumerate() {
            for name in ["a", "b", "c"] {
                assert!(
                    window.iter().any(|n| n == name),
                    "window at {start} lacks {name}: {sequence:?}"
                );
            }
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_concurrent_connections_are_spread_and_echo_intact() {
    bounded(async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(&addrs(&backends), "", "")).await;
        // Open all 60 first, so they are all open at the same time.
        let mut streams = Vec::new();
        for _ in 0..60 {
            streams.push(lb.connect().await);
        }
        let mut tasks = Vec::new();
        for (i, mut stream) in streams.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let name = read_line(&mut stream).await;
                let payload = pattern(64 * 1024 + i, i as u64);
                let echoed = exchange(&mut stream, &payload).await;
                assert!(echoed == payload, "connection {i} via {name}: echo differs");
                name
            }));
        }
        let mut names = Vec::new();
        for task in tasks {
            names.push(task.await.expect("client task"));
        }
        let counts = tally(&names);
        println!("60 concurrent connections, round_robin: {counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 60);
        for backend in &backends {
            let count = counts.get(&backend.name).copied().unwrap_or(0);
            assert!(
                (10..=30).contains(&count),
                "{} served {count} of 60: {counts:?}",
                backend.name
            );
            assert_eq!(backend.accepted(), count);
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_sends_new_connections_to_the_least_busy_backend() {
    bounded(async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &addrs(&backends),
            "",
            "algorithm = \"least_connections\"",
        ))
        .await;
        let mut held: Vec<(TcpStream, String)> = Vec::new();
        let open_counts = |held: &[(TcpStream, String)]| {
            let mut counts: HashMap<String, usize> =
                ["a", "b", "c"].iter().map(|n| (n.to_string(), 0)).collect();
            for (_, name) in held {
                *counts.entry(name.clone()).or_insert(0) += 1;
            }
            counts
        };
        // Held-open connections fill the backends evenly.
        for k in 0..6 {
            held.push(named_connect(&lb).await);
            let counts = open_counts(&held);
            let max = counts.values().max().copied().unwrap_or(0);
            let min = counts.values().min().copied().unwrap_or(0);
            assert!(max - min <= 1, "after {} connections: {counts:?}", k + 1);
        }
        assert!(open_counts(&held).values().all(|&n| n == 2));

        // Close both of a's connections: the next two go to a.
        let mut index = 0;
        while index < held.len() {
            if held[index].1 == "a" {
                let (mut stream, _) = held.remove(index);
                assert_eq!(exchange(&mut stream, b"bye").await, b"bye");
            } else {
                index += 1;
            }
        }
        backends[0].wait_idle().await;
        // The proxy releases its count right after both directions end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        for _ in 0..2 {
            let (stream, name) = named_connect(&lb).await;
            assert_eq!(name, "a", "open before: {:?}", open_counts(&held));
            held.push((stream, name));
        }

        // Close one of c's: the next one goes to c.
        let position = held.iter().position(|(_, n)| n == "c").expect("c is held");
        let (mut stream, _) = held.remove(position);
        assert_eq!(exchange(&mut stream, b"bye").await, b"bye");
        within(
            Duration::from_secs(5),
            "c to have one open connection",
            async {
                while backends[2].open() != 1 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (stream, name) = named_connect(&lb).await;
        assert_eq!(name, "c", "open before: {:?}", open_counts(&held));
        held.push((stream, name));

        for (mut stream, _) in held {
            assert_eq!(exchange(&mut stream, b"end").await, b"end");
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backends_connections_go_to_the_others() {
    bounded(async {
        for algorithm in ["round_robin", "least_connections"] {
            let a = Backend::spawn("a", Mode::NamedEcho).await;
            let b = Backend::spawn("b", Mode::NamedEcho).await;
            let dead = closed_port().await;
            let mut lb = Balancer::start(&tcp_config(
                &[a.addr, dead, b.addr],
                "",
                &format!("algorithm = \"{algorithm}\""),
            ))
            .await;
            // Sequential…
            let mut names = Vec::new();
            for i in 0..30 {
                let (mut stream, name) = named_connect(&lb).await;
                let payload = format!("{algorithm} {i}");
                assert_eq!(
                    exchange(&mut stream, payload.as_bytes()).await,
                    payload.as_bytes()
                );
                names.push(name);
            }
            // …and concurrent.
            let mut tasks = Vec::new();
            for i in 0..30 {
                let addr = lb.addr;
                tasks.push(tokio::spawn(async move {
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    let name = read_line(&mut stream).await;
                    let payload = format!("concurrent {i}");
                    assert_eq!(
                        exchange(&mut stream, payload.as_bytes()).await,
                        payload.as_bytes()
                    );
                    name
                }));
            }
            for task in tasks {
                names.push(task.await.expect("client task"));
            }
            let counts = tally(&names);
            println!("{algorithm} with a dead backend: {counts:?}");
            assert_eq!(counts.values().sum::<usize>(), 60, "{counts:?}");
            assert!(counts.keys().all(|n| n == "a" || n == "b"), "{counts:?}");
            assert!(a.accepted() > 0 && b.accepted() > 0, "{counts:?}");
            assert_eq!(a.accepted() + b.accepted(), 60);
            lb.stop().await;
        }
    })
    .await;
}

/// A listening socket that never accepts, with its accept queue filled, so new connects to it
/// hang (their SYNs are dropped) instead of being refused.
async fn blackhole() -> (TcpListener, Vec<TcpStream>, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("address");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(100), TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    (listener, fillers, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_does_not_answer_connects_times_out_and_is_retried_elsewhere() {
    bounded(async {
        let (_listener, _fillers, hole) = blackhole().await;
        // Check the premise: a connect to it hangs.
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(hole)).await;
        if probe.is_ok() {
            println!("skipping: could not make a connect hang on this host ({probe:?})");
            return;
        }
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &[hole, a.addr],
            "",
            "connect_timeout = \"200ms\"\n[pools.app.passive]\nconsecutive_failures = 0",
        ))
        .await;
        let mut slow = 0;
        for i in 0..4 {
            let started = Instant::now();
            let (mut stream, name) = named_connect(&lb).await;
            let elapsed = started.elapsed();
            assert_eq!(name, "a", "connection {i}");
            assert!(
                elapsed < Duration::from_secs(1),
                "connection {i} took {elapsed:?}"
            );
            if elapsed >= Duration::from_millis(180) {
                slow += 1;
            }
            assert_eq!(exchange(&mut stream, b"x").await, b"x");
        }
        // Round-robin tries the silent backend first every other connection: those waited for
        // the connect timeout, then went to `a`.
        assert_eq!(slow, 2, "connections that waited for connect_timeout");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_health_checks_keep_connections_off_a_down_backend() {
    bounded(async {
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let b_addr = closed_port().await;
        // No retries and no passive ejection: a connection sent to a closed port would fail, so
        // every success shows the checks kept it away.
        let mut lb = Balancer::start(&tcp_config(
            &[a.addr, b_addr],
            "",
            "retries = 0\n\
             [pools.app.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n\
             [pools.app.passive]\nconsecutive_failures = 0",
        ))
        .await;
        let round = |lb: &Balancer| {
            let addr = lb.addr;
            async move {
                let mut names = Vec::new();
                for i in 0..10 {
                    let mut stream = TcpStream::connect(addr).await.expect("connect");
                    let mut first = [0u8; 1];
                    let n = within(
                        Duration::from_secs(2),
                        "a name or EOF",
                        stream.peek(&mut first),
                    )
                    .await
                    .unwrap_or(0);
                    assert_eq!(n, 1, "connection {i} was closed without reaching a backend");
                    names.push(read_line(&mut stream).await);
                }
                tally(&names)
            }
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let counts = round(&lb).await;
        assert_eq!(counts.get("a"), Some(&10), "b is down: {counts:?}");

        let b = Backend::spawn_at("b", Mode::NamedEcho, b_addr).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        let counts = round(&lb).await;
        println!("after b came up: {counts:?}");
        assert_eq!(counts.get("b"), Some(&5), "b is up again: {counts:?}");
        assert_eq!(counts.get("a"), Some(&5), "b is up again: {counts:?}");

        drop(b);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let counts = round(&lb).await;
        assert_eq!(counts.get("a"), Some(&10), "b is down again: {counts:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_reachable_backend_the_client_connection_is_closed() {
    bounded(async {
        let dead = [closed_port().await, closed_port().await];
        let mut lb = Balancer::start(&tcp_config(&dead, "", "")).await;
        for retries in 0..3 {
            let mut stream = lb.connect().await;
            let mut buffer = [0u8; 8];
            let result = within(
                Duration::from_secs(2),
                "the connection to be closed",
                stream.read(&mut buffer),
            )
            .await;
            assert!(
                matches!(result, Ok(0)) || result.is_err(),
                "attempt {retries}: expected the connection closed, got {result:?}"
            );
        }
        lb.stop().await;

        // retries = 0: a connection that picks the dead backend is closed, not retried.
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &[closed_port().await, a.addr],
            "",
            "retries = 0\n[pools.app.passive]\nconsecutive_failures = 0",
        ))
        .await;
        let mut served = 0;
        let mut closed = 0;
        for _ in 0..6 {
            let mut stream = lb.connect().await;
            let mut byte = [0u8; 1];
            match within(
                Duration::from_secs(2),
                "a name or EOF",
                stream.read(&mut byte),
            )
            .await
            {
                Ok(1) => served += 1,
                _ => closed += 1,
            }
        }
        assert_eq!(
            (served, closed),
            (3, 3),
            "round-robin over one dead, one live"
        );
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Half-close, bulk transfer, idle timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fin_keeps_the_backend_to_client_direction_open() {
    bounded(async {
        // The backend answers only after it has seen the client's FIN.
        let backend = Backend::spawn("late", Mode::EchoAfterEof).await;
        let mut lb = Balancer::start(&tcp_config(&[backend.addr], "", "")).await;
        let payload = pattern(1024 * 1024, 1);
        let mut stream = lb.connect().await;
        stream.write_all(&payload).await.expect("write");
        stream.shutdown().await.expect("shut down the write side");
        let mut echoed = Vec::new();
        within(
            Duration::from_secs(5),
            "the reply after the client's FIN",
            stream.read_to_end(&mut echoed),
        )
        .await
        .expect("read until EOF");
        assert_eq!(echoed.len(), payload.len(), "bytes after the client's FIN");
        assert!(echoed == payload, "reply differs from what was sent");

        // A streaming echo while the client's FIN is in flight: nothing is cut short.
        let echo = Backend::spawn("echo", Mode::Echo).await;
        let mut lb2 = Balancer::start(&tcp_config(&[echo.addr], "", "")).await;
        let payload = pattern(4 * 1024 * 1024, 2);
        let mut stream = lb2.connect().await;
        let echoed = exchange(&mut stream, &payload).await;
        assert_eq!(echoed.len(), payload.len());
        assert!(echoed == payload, "echo differs");
        lb.stop().await;
        lb2.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_fin_keeps_the_client_to_backend_direction_open() {
    bounded(async {
        let backend = Backend::spawn("first", Mode::SpeakFirst).await;
        let mut lb = Balancer::start(&tcp_config(&[backend.addr], "", "")).await;
        let mut stream = lb.connect().await;
        // The backend sends its data and closes its write side without reading anything.
        let mut greeting = Vec::new();
        within(
            Duration::from_secs(5),
            "the backend's data and FIN",
            stream.read_to_end(&mut greeting),
        )
        .await
        .expect("read until EOF");
        assert_eq!(greeting.len(), GREETING_LEN);
        assert!(greeting == pattern(GREETING_LEN, 7), "greeting differs");
        // The client has seen EOF but can still send; the backend gets every byte.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let upload = pattern(512 * 1024, 3);
        stream
            .write_all(&upload)
            .await
            .expect("write after receiving EOF");
        stream.shutdown().await.expect("shut down the write side");
        let received = backend.next_report().await;
        assert_eq!(
            received.len(),
            upload.len(),
            "bytes after the backend's FIN"
        );
        assert!(received == upload, "upload differs");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_either_side_ends_the_other_side() {
    bounded(async {
        let backend = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &[backend.addr],
            "",
            "algorithm = \"least_connections\"",
        ))
        .await;
        // The client resets (SO_LINGER 0) mid-stream: the backend's connection is closed.
        let (mut stream, _) = named_connect(&lb).await;
        stream.write_all(b"partial").await.expect("write");
        let mut echo = [0u8; 7];
        stream.read_exact(&mut echo).await.expect("echo");
        stream.set_zero_linger().expect("SO_LINGER 0");
        drop(stream);
        backend.wait_idle().await;

        // The backend resets: the client's connection ends.
        let raw = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let raw_addr = raw.local_addr().expect("address");
        let mut lb2 = Balancer::start(&tcp_config(&[raw_addr], "", "")).await;
        let mut victim = lb2.connect().await;
        let (accepted, _) = within(Duration::from_secs(5), "the proxied connect", raw.accept())
            .await
            .expect("accept");
        accepted.set_zero_linger().expect("SO_LINGER 0");
        drop(accepted);
        let mut buffer = [0u8; 8];
        let result = within(
            Duration::from_secs(3),
            "the client side to end after a backend reset",
            victim.read(&mut buffer),
        )
        .await;
        assert!(matches!(result, Ok(0)) || result.is_err(), "{result:?}");
        lb.stop().await;
        lb2.stop().await;
    })
    .await;
}

/// Whether `data`, read at stream offset `position`, matches the cyclic `period`.
fn matches_cyclic(period: &[u8], mut position: usize, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        let offset = position % period.len();
        let n = data.len().min(period.len() - offset);
        if data[..n] != period[offset..offset + n] {
            return false;
        }
        data = &data[n..];
        position += n;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_both_ways_arrives_intact() {
    const TOTAL: usize = 256 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    bounded(async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb = Balancer::start(&tcp_config(&[backend.addr], "", "")).await;
        // A period that is not a multiple of any buffer size, so a misplaced chunk shows.
        let period = Arc::new(pattern(1_048_573, 42));
        let stream = lb.connect().await;
        let (mut reader, mut writer) = stream.into_split();
        let started = Instant::now();
        let write = tokio::spawn({
            let period = Arc::clone(&period);
            async move {
                let mut sent = 0;
                while sent < TOTAL {
                    let offset = sent % period.len();
                    let n = CHUNK.min(period.len() - offset).min(TOTAL - sent);
                    writer
                        .write_all(&period[offset..offset + n])
                        .await
                        .expect("upload");
                    sent += n;
                }
                writer.shutdown().await.expect("shut down the write side");
                started.elapsed()
            }
        });
        let read = tokio::spawn({
            let period = Arc::clone(&period);
            async move {
                let mut buffer = vec![0u8; CHUNK];
                let mut received = 0;
                loop {
                    let n = reader.read(&mut buffer).await.expect("download");
                    if n == 0 {
                        break;
                    }
                    assert!(
                        matches_cyclic(&period, received, &buffer[..n]),
                        "corrupted bytes at offset {received}..{}",
                        received + n
                    );
                    received += n;
                }
                received
            }
        });
        let upload_time = write.await.expect("upload task");
        let received = read.await.expect("download task");
        let elapsed = started.elapsed();
        assert_eq!(received, TOTAL, "bytes echoed back");
        let mib = (TOTAL / (1024 * 1024)) as f64;
        println!(
            "large transfer: {mib} MiB each way (concurrently) in {:.2} s \
             (upload done after {:.2} s): {:.0} MiB/s per direction, {:.0} MiB/s total",
            elapsed.as_secs_f64(),
            upload_time.as_secs_f64(),
            mib / elapsed.as_secs_f64(),
            2.0 * mib / elapsed.as_secs_f64()
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_quiet_connections_and_spares_busy_ones() {
    bounded(async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "", "idle_timeout = \"300ms\"")).await;
        let quiet = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            let mut byte = [0u8; 1];
            let result = within(
                Duration::from_millis(1500),
                "the idle connection to be closed",
                stream.read(&mut byte),
            )
            .await;
            let elapsed = started.elapsed();
            assert!(
                matches!(result, Ok(0)) || result.is_err(),
                "expected EOF, got {result:?}"
            );
            assert!(
                elapsed >= Duration::from_millis(250),
                "closed after only {elapsed:?}"
            );
            println!("quiet connection closed after {elapsed:?}");
        };
        let busy = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            for i in 0..9u8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                stream.write_all(&[i]).await.expect("write while busy");
                let mut byte = [0u8; 1];
                within(
                    Duration::from_secs(1),
                    "an echo on the busy connection",
                    stream.read_exact(&mut byte),
                )
                .await
                .unwrap_or_else(|err| {
                    panic!(
                        "busy connection closed after {:?}: {err}",
                        started.elapsed()
                    )
                });
                assert_eq!(byte[0], i);
            }
            assert!(started.elapsed() > Duration::from_millis(600));
            // Once it falls quiet, it is closed too.
            let mut byte = [0u8; 1];
            let result = within(
                Duration::from_millis(1500),
                "the formerly busy connection to be closed",
                stream.read(&mut byte),
            )
            .await;
            assert!(
                matches!(result, Ok(0)) || result.is_err(),
                "expected EOF, got {result:?}"
            );
        };
        tokio::join!(quiet, busy);
        backend.wait_idle().await;
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_open_tcp_connections() {
    bounded(async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb = Balancer::start(&tcp_config(&[backend.addr], "", "")).await;
        let mut stream = lb.connect().await;
        stream.write_all(b"before").await.expect("write");
        let mut buffer = [0u8; 6];
        stream.read_exact(&mut buffer).await.expect("echo");
        lb.shutdown.cancel();
        let task = lb.task.take().expect("running");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !task.is_finished(),
            "the server returned with a connection open"
        );
        // The open connection still works during the drain.
        stream
            .write_all(b"during")
            .await
            .expect("write during drain");
        stream
            .read_exact(&mut buffer)
            .await
            .expect("echo during drain");
        assert_eq!(&buffer, b"during");
        // New connections are refused.
        let late = TcpStream::connect(lb.addr).await;
        assert!(late.is_err(), "a new connection was accepted during drain");
        // Closing the last connection lets the server finish before shutdown_timeout (2 s).
        let started = Instant::now();
        assert_eq!(exchange(&mut stream, b"after").await, b"after");
        within(Duration::from_millis(1500), "the drain to finish", task)
            .await
            .expect("server task");
        println!(
            "drained {:?} after the last connection closed",
            started.elapsed()
        );
    })
    .await;
}

/// The sum of the samples of `metric` whose labels include every one of `labels`.
fn metric_sum(text: &str, metric: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to admin");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("send request");
    let mut response = Vec::new();
    within(
        Duration::from_secs(5),
        "the admin response",
        stream.read_to_end(&mut response),
    )
    .await
    .expect("read response");
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_counted_in_the_metrics() {
    bounded(async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let dead = closed_port().await;
        // Names of its own: the metrics recorder is shared by every test in this process.
        let text = format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"metered\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
             pool = \"metered_pool\"\n\n\
             [pools.metered_pool]\nbackends = [\"{dead}\", \"{}\"]\n\
             [pools.metered_pool.passive]\nconsecutive_failures = 0\n",
            backend.addr
        );
        let config = Config::parse("l4.toml", &text).expect("config");
        let server = Server::bind(config).await.expect("bind");
        let addr = server.local_addr("metered").expect("listener");
        let Some(admin) = server.admin_addr() else {
            panic!("admin listener not bound");
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone().cancelled_owned()));
        for i in 0..4 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let payload = pattern(1000, i);
            assert_eq!(exchange(&mut stream, &payload).await, payload);
        }
        let listener = "listener=\"metered\"";
        let mut metrics = String::new();
        let done = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                metrics = http_get(admin, "/metrics").await;
                if metric_sum(&metrics, "fulcrum_requests_total", &[listener]) >= 4.0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if !metrics.contains("fulcrum_") {
            println!("skipping metric checks: the recorder is not installed in this process");
        } else {
            let relevant: Vec<&str> = metrics
                .lines()
                .filter(|line| line.contains("metered") || line.contains(&dead.to_string()))
                .collect();
            let context = relevant.join("\n");
            assert!(done.is_ok(), "requests never reached 4:\n{context}");
            assert_eq!(
                metric_sum(
                    &metrics,
                    "fulcrum_requests_total",
                    &[listener, "code_class=\"2xx\""]
                ),
                4.0,
                "{context}"
            );
            assert_eq!(
                metric_sum(&metrics, "fulcrum_connections_total", &[listener]),
                4.0,
                "{context}"
            );
            assert_eq!(
                metric_sum(
                    &metrics,
                    "fulcrum_bytes_total",
                    &[listener, "direction=\"in\""]
                ),
                4000.0,
                "{context}"
            );
            assert_eq!(
                metric_sum(
                    &metrics,
                    "fulcrum_bytes_total",
                    &[listener, "direction=\"out\""]
                ),
                4000.0,
                "{context}"
            );
            // Round-robin tried the dead backend first for every other connection.
            assert_eq!(
                metric_sum(
                    &metrics,
                    "fulcrum_upstream_connect_errors_total",
                    &[&format!("backend=\"{dead}\"")]
                ),
                2.0,
                "{context}"
            );
            assert_eq!(
                metric_sum(
                    &metrics,
                    "fulcrum_upstream_connections_total",
                    &[&format!("backend=\"{}\"", backend.addr)]
                ),
                4.0,
                "one upstream connection per client connection\n{context}"
            );
        }
        shutdown.cancel();
        within(Duration::from_secs(5), "shutdown", task)
            .await
            .expect("server task");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

/// Sends `payload` through `lb` to a [`Mode::Capture`] backend; returns the client's local port
/// and everything the backend received.
async fn capture_through(lb: &Balancer, backend: &Backend, payload: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = lb.connect().await;
    let port = stream.local_addr().expect("client address").port();
    assert_eq!(exchange(&mut stream, payload).await, b"");
    (port, backend.next_report().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sends_a_byte_exact_proxy_v1_header() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "", "proxy_protocol = \"v1\"")).await;
        let (client_port, received) = capture_through(&lb, &backend, b"hello").await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nhello",
            lb.addr.port()
        );
        assert_eq!(
            String::from_utf8_lossy(&received),
            expected,
            "bytes at the backend"
        );
        assert_eq!(received, expected.as_bytes());
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sends_a_byte_exact_proxy_v2_header() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "", "proxy_protocol = \"v2\"")).await;
        let (client_port, received) = capture_through(&lb, &backend, b"hello").await;
        let mut expected = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 address bytes
            127, 0, 0, 1, // source
            127, 0, 0, 1, // destination
        ];
        expected.extend_from_slice(&client_port.to_be_bytes());
        expected.extend_from_slice(&lb.addr.port().to_be_bytes());
        expected.extend_from_slice(b"hello");
        assert_eq!(received, expected, "bytes at the backend");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_for_an_ipv6_client_are_byte_exact() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        for version in ["v1", "v2"] {
            let text = tcp_config(
                &[backend.addr],
                "",
                &format!("proxy_protocol = \"{version}\""),
            )
            .replace("127.0.0.1:0", "[::1]:0");
            let Ok(config) = Config::parse("l4.toml", &text) else {
                panic!("config: {text}");
            };
            let server = match Server::bind(config).await {
                Ok(server) => server,
                Err(err) => {
                    println!("skipping: cannot bind [::1] ({err})");
                    return;
                }
            };
            let addr = server.local_addr("db").expect("bound");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(server.run(shutdown.clone().cancelled_owned()));
            let mut stream = TcpStream::connect(addr).await.expect("connect over IPv6");
            let client_port = stream.local_addr().expect("client address").port();
            assert_eq!(exchange(&mut stream, b"six").await, b"");
            let received = backend.next_report().await;
            let expected = if version == "v1" {
                format!("PROXY TCP6 ::1 ::1 {client_port} {}\r\nsix", addr.port()).into_bytes()
            } else {
                let mut expected = vec![
                    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21,
                    0x21, // AF_INET6, STREAM
                    0x00, 0x24, // 36 address bytes
                ];
                let loopback = std::net::Ipv6Addr::LOCALHOST.octets();
                expected.extend_from_slice(&loopback);
                expected.extend_from_slice(&loopback);
                expected.extend_from_slice(&client_port.to_be_bytes());
                expected.extend_from_slice(&addr.port().to_be_bytes());
                expected.extend_from_slice(b"six");
                expected
            };
            assert_eq!(received, expected, "{version}");
            shutdown.cancel();
            within(Duration::from_secs(5), "shutdown", task)
                .await
                .expect("server task");
        }
    })
    .await;
}

/// Splits a v1 header line off `received`: its fields and the bytes after it.
fn split_v1(received: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = received
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("no v1 header in {:?}", String::from_utf8_lossy(received)));
    let line = String::from_utf8(received[..end].to_vec()).expect("ascii header");
    (
        line.split(' ').map(str::to_owned).collect(),
        received[end + 2..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_accepts_a_proxy_header_and_forwards_the_original_client() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = Balancer::start(&tcp_config(
            &[backend.addr],
            "proxy_protocol = true",
            "proxy_protocol = \"v1\"",
        ))
        .await;

        // v1 header and data in one write.
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\nhello",
        )
        .await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(
            fields,
            [
                "PROXY",
                "TCP4",
                "203.0.113.7",
                "198.51.100.9",
                "40000",
                "5432"
            ],
            "both announced ends are passed on"
        );
        assert_eq!(rest, b"hello", "data after the header");

        // The header split over several writes, the data in its own.
        let mut stream = lb.connect().await;
        for piece in [
            &b"PROXY TCP4 192.0.2."[..],
            b"44 198.51.100.9 ",
            b"1234 5432\r\n",
        ] {
            stream.write_all(piece).await.expect("write header piece");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(exchange(&mut stream, b"world").await, b"");
        let (fields, rest) = split_v1(&backend.next_report().await);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "192.0.2.44"], "{fields:?}");
        assert_eq!(fields[4], "1234", "{fields:?}");
        assert_eq!(rest, b"world");

        // A v2 header from the client is accepted too.
        let mut v2 = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x0C, 10, 1, 2, 3, 10, 9, 9, 9,
        ];
        v2.extend_from_slice(&5555u16.to_be_bytes());
        v2.extend_from_slice(&6379u16.to_be_bytes());
        v2.extend_from_slice(b"data");
        let (_, received) = capture_through(&lb, &backend, &v2).await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "10.1.2.3"], "{fields:?}");
        assert_eq!(fields[4], "5555", "{fields:?}");
        assert_eq!(rest, b"data");

        // A v2 header with a TLV (a NOOP, as some cloud balancers pad with): the TLV is not
        // passed on as data.
        let mut v2 = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x12, 10, 1, 2, 4, 10, 9, 9, 9,
        ];
        v2.extend_from_slice(&5556u16.to_be_bytes());
        v2.extend_from_slice(&6379u16.to_be_bytes());
        v2.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        v2.extend_from_slice(b"tlv");
        let (_, received) = capture_through(&lb, &backend, &v2).await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "10.1.2.4"], "{fields:?}");
        assert_eq!(fields[4], "5556", "{fields:?}");
        assert_eq!(rest, b"tlv");

        // A v2 LOCAL header (health checks of a front balancer) falls back to the real peer.
        let mut local = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00,
            0x00, 0x00,
        ];
        local.extend_from_slice(b"local");
        let (client_port, received) = capture_through(&lb, &backend, &local).await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nlocal",
            lb.addr.port()
        );
        assert_eq!(String::from_utf8_lossy(&received), expected);

        // `PROXY UNKNOWN` falls back to the real peer.
        let (client_port, received) =
            capture_through(&lb, &backend, b"PROXY UNKNOWN\r\nmore").await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nmore",
            lb.addr.port()
        );
        assert_eq!(String::from_utf8_lossy(&received), expected);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_proxy_header_is_stripped_when_the_pool_sends_none() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\nSELECT 1;",
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&received), "SELECT 1;");
        // A header with nothing after it: the backend sees an empty stream.
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\n",
        )
        .await;
        assert_eq!(received, b"");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_from_a_proxy_header_is_forwarded_as_tcp6() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = Balancer::start(&tcp_config(
            &[backend.addr],
            "proxy_protocol = true",
            "proxy_protocol = \"v1\"",
        ))
        .await;
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\nhi",
        )
        .await;
        // Both ends announced by the front balancer are passed on, as HAProxy's
        // accept-proxy + send-proxy do.
        assert_eq!(
            String::from_utf8_lossy(&received),
            "PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\nhi"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_proxy_header_is_closed_after_5s() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        let silent = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            let mut buffer = [0u8; 8];
            let result = within(
                Duration::from_secs(8),
                "the close",
                stream.read(&mut buffer),
            )
            .await;
            assert!(matches!(result, Ok(0)) || result.is_err(), "{result:?}");
            started.elapsed()
        };
        let partial = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            stream.write_all(b"PROXY TCP4 10.0.0").await.expect("write");
            let mut buffer = [0u8; 8];
            let result = within(
                Duration::from_secs(8),
                "the close",
                stream.read(&mut buffer),
            )
            .await;
            assert!(matches!(result, Ok(0)) || result.is_err(), "{result:?}");
            started.elapsed()
        };
        let (silent, partial) = tokio::join!(silent, partial);
        println!("no header: closed after {silent:?}; partial header: closed after {partial:?}");
        for elapsed in [silent, partial] {
            assert!(
                (Duration::from_millis(4800)..Duration::from_millis(7000)).contains(&elapsed),
                "closed after {elapsed:?}"
            );
        }
        assert_eq!(backend.accepted(), 0);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_closes_a_connection_without_a_valid_proxy_header() {
    bounded(async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb =
            Balancer::start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            b"hello, this is not a PROXY header at all\r\n",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\nhello",
            &[0u8; 64][..],
        ] {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            // Nothing more is sent, so only the header check (not its 5 s timeout) can close it.
            stream.write_all(garbage).await.expect("write garbage");
            let mut buffer = [0u8; 16];
            let result = within(
                Duration::from_secs(3),
                "the connection to be closed",
                stream.read(&mut buffer),
            )
            .await;
            assert!(
                matches!(result, Ok(0)) || result.is_err(),
                "{:?}: expected the connection closed, got {result:?}",
                String::from_utf8_lossy(garbage)
            );
            assert!(started.elapsed() < Duration::from_secs(3));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backend.accepted(), 0, "garbage reached a backend");
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Config validation
// ---------------------------------------------------------------------------------------------

/// The error text of an invalid config (panics if it is valid).
fn config_error(text: &str) -> String {
    match Config::parse("l4.toml", text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn a_full_tcp_config_is_accepted() {
    let text = tcp_config(
        &[
            "127.0.0.1:5433".parse().expect("addr"),
            "127.0.0.1:5434".parse().expect("addr"),
        ],
        "proxy_protocol = true",
        "algorithm = \"least_connections\"\n\
         connect_timeout = \"250ms\"\n\
         retries = 1\n\
         idle_timeout = \"90s\"\n\
         slow_start = \"5s\"\n\
         fail_open = true\n\
         proxy_protocol = \"v2\"\n\
         [pools.app.health_check]\n\
         interval = \"1s\"\n\
         timeout = \"500ms\"\n\
         jitter = \"0s\"\n\
         healthy_threshold = 1\n\
         unhealthy_threshold = 2\n\
         [pools.app.passive]\n\
         consecutive_failures = 3\n\
         ejection_time = \"2s\"",
    );
    let config = Config::parse("l4.toml", &text)
        .unwrap_or_else(|err| panic!("valid tcp config refused:\n{err}\n{text}"));
    let listener = &config.listeners[0];
    assert_eq!(listener.protocol, fulcrum::config::Protocol::Tcp);
    assert!(listener.accept_proxy_protocol);
    let pool = config.pool("app").expect("pool app");
    assert_eq!(pool.protocol, fulcrum::config::Protocol::Tcp);
    assert_eq!(pool.algorithm, fulcrum::config::Algorithm::LeastConnections);
    assert_eq!(pool.connect_timeout, Duration::from_millis(250));
    assert_eq!(pool.retries, 1);
    assert_eq!(pool.idle_timeout, Duration::from_secs(90));
    assert_eq!(pool.slow_start, Some(Duration::from_secs(5)));
    assert!(pool.fail_open);
    assert_eq!(
        pool.proxy_protocol,
        Some(fulcrum::config::ProxyProtocol::V2)
    );
    let check = pool.health_check.as_ref().expect("health check");
    // A tcp pool's check defaults to a TCP connect.
    assert_eq!(check.kind, fulcrum::config::CheckKind::Tcp);
    assert_eq!(check.interval, Duration::from_secs(1));
    assert_eq!(check.jitter, Duration::ZERO);
    assert_eq!(pool.passive.consecutive_failures, 3);

    // The tcp idle timeout defaults to an hour.
    let text = tcp_config(&["127.0.0.1:5433".parse().expect("addr")], "", "");
    let config = Config::parse("l4.toml", &text).expect("minimal tcp config");
    assert_eq!(
        config.pool("app").expect("pool").idle_timeout,
        Duration::from_secs(3600)
    );
    assert_eq!(config.pool("app").expect("pool").proxy_protocol, None);
    assert!(!config.listeners[0].accept_proxy_protocol);
}

#[test]
fn http_only_keys_on_a_tcp_pool_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "", "request_timeout = \"5s\""));
    assert!(
        err.contains("pools.app.request_timeout") && err.contains("tcp"),
        "{err}"
    );

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.health_check]\npath = \"/health\"",
    ));
    assert!(err.contains("pools.app.health_check.path"), "{err}");

    let err = config_error(&tcp_config(&[backend], "", "max_idle_per_backend = 4"));
    assert!(err.contains("pools.app.max_idle_per_backend"), "{err}");

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.health_check]\nkind = \"http\"",
    ));
    assert!(err.contains("pools.app.health_check.kind"), "{err}");

    let err = config_error(&tcp_config(
        &[backend],
        "",
        "[pools.app.passive]\nfailure_statuses = [503]",
    ));
    assert!(err.contains("pools.app.passive.failure_statuses"), "{err}");
}

#[test]
fn http_only_keys_on_a_tcp_listener_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "max_header_bytes = 16384", ""));
    assert!(
        err.contains("listeners[0].max_header_bytes") && err.contains("tcp"),
        "{err}"
    );
    for key in ["header_read_timeout = \"5s\"", "idle_timeout = \"5s\""] {
        let err = config_error(&tcp_config(&[backend], key, ""));
        let name = key.split(' ').next().expect("key name");
        assert!(err.contains(&format!("listeners[0].{name}")), "{err}");
    }
}

#[test]
fn tcp_only_keys_on_http_are_errors_naming_the_key() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\
                proxy_protocol = true\n\n\
                [pools.app]\nbackends = [\"127.0.0.1:5433\"]\nproxy_protocol = \"v1\"\n";
    let err = config_error(text);
    assert!(err.contains("listeners[0].proxy_protocol"), "{err}");
    assert!(err.contains("pools.app.proxy_protocol"), "{err}");
}

#[test]
fn bad_tcp_values_are_errors_naming_the_key() {
    let backend: SocketAddr = "127.0.0.1:5433".parse().expect("addr");
    let err = config_error(&tcp_config(&[backend], "", "proxy_protocol = \"v3\""));
    println!("proxy_protocol = \"v3\": {err}");
    assert!(err.contains("proxy_protocol"), "{err}");
    let err = config_error(&tcp_config(&[backend], "proxy_protocol = \"yes\"", ""));
    println!("listener proxy_protocol = \"yes\": {err}");
    assert!(err.contains("proxy_protocol"), "{err}");
    let err = config_error(&tcp_config(&[backend], "", "idle_timeout = \"0s\""));
    assert!(err.contains("pools.app.idle_timeout"), "{err}");
    let text = tcp_config(&[backend], "", "").replace("\"tcp\"", "\"udp\"");
    let err = config_error(&text);
    println!("protocol = \"udp\": {err}");
    assert!(err.contains("protocol"), "{err}");
    let err = config_error(&tcp_config(
        &[backend],
        "[listeners.tls]\ncertificates = [{ cert = \"a.pem\", key = \"a.key\" }]",
        "",
    ));
    assert!(err.contains("listeners[0].tls"), "{err}");
}

#[test]
fn a_pool_shared_by_http_and_tcp_listeners_is_an_error() {
    let text = "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                [[listeners]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\
                pool = \"app\"\n\n\
                [pools.app]\nbackends = [\"127.0.0.1:5433\"]\n";
    let err = config_error(text);
    assert!(err.contains("listeners[1].pool"), "{err}");
    assert!(err.contains("\"app\""), "{err}");
    assert!(err.contains("http") && err.contains("tcp"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// A real database client
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on a free port; killed and reaped on drop.
struct RedisServer {
    port: u16,
    child: std::process::Child,
}

impl RedisServer {
    async fn start() -> RedisServer {
        let port = closed_port().await.port();
        let child = std::process::Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer { port, child };
        within(
            Duration::from_secs(10),
            "redis-server to answer PING",
            async {
                loop {
                    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                        let mut reply = [0u8; 7];
                        if stream.write_all(b"PING\r\n").await.is_ok()
                            && stream.read_exact(&mut reply).await.is_ok()
                            && &reply == b"+PONG\r\n"
                        {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `INFO section` through `redis-cli`, as `field → value`.
    async fn info(&self, section: &str) -> HashMap<String, String> {
        let output = tokio::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info", section])
            .output()
            .await
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli failed: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    async fn connections_received(&self) -> u64 {
        self.info("stats")
            .await
            .get("total_connections_received")
            .and_then(|v| v.parse().ok())
            .expect("total_connections_received in INFO stats")
    }

    /// `calls=` of `cmdstat_<command>` (0 when the command was never called), and its
    /// `failed_calls=`/`rejected_calls=` sum.
    async fn calls(&self, command: &str) -> (u64, u64) {
        let stats = self.info("commandstats").await;
        let Some(line) = stats.get(&format!("cmdstat_{command}")) else {
            return (0, 0);
        };
        let field = |name: &str| {
            line.split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            field("calls"),
            field("failed_calls") + field("rejected_calls"),
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_through_the_balancer() {
    let installed = ["redis-server", "redis-benchmark", "redis-cli"]
        .iter()
        .all(|tool| std::path::Path::new(&format!("/usr/bin/{tool}")).exists());
    if !installed {
        println!("skipping: redis-server not installed (apt-get install redis-server redis-tools)");
        return;
    }
    bounded(async {
        let one = RedisServer::start().await;
        let two = RedisServer::start().await;
        // No active health checks: their connects would count as connections at the servers.
        let mut lb = Balancer::start(&tcp_config(&[one.addr(), two.addr()], "", "")).await;
        let before = (
            one.connections_received().await,
            two.connections_received().await,
        );
        let output = within(
            Duration::from_secs(20),
            "redis-benchmark",
            tokio::process::Command::new("redis-benchmark")
                .args(["-h", "127.0.0.1", "-p", &lb.addr.port().to_string()])
                .args(["-n", "20000", "-c", "20", "-t", "set,get", "-q"])
                .output(),
        )
        .await
        .expect("run redis-benchmark");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "redis-benchmark failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let rps: Vec<&str> = stdout
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|line| line.contains("requests per second"))
            .collect();
        for line in &rps {
            println!("through fulcrum: {line}");
        }
        for command in ["SET:", "GET:"] {
            assert!(
                rps.iter().any(|line| line.starts_with(command)),
                "no {command} result\nstdout: {stdout}\nstderr: {stderr}"
            );
        }
        assert!(
            !stderr.contains("Error") && !stdout.contains("Error"),
            "redis-benchmark reported errors\nstdout: {stdout}\nstderr: {stderr}"
        );

        let after = (
            one.connections_received().await,
            two.connections_received().await,
        );
        // Every request reached a server and succeeded there, and both servers took part.
        let mut totals = [0u64; 2];
        for (server, name) in [(&one, "one"), (&two, "two")] {
            let (set, set_failed) = server.calls("set").await;
            let (get, get_failed) = server.calls("get").await;
            println!("redis {name}: {set} SET, {get} GET");
            assert_eq!(set_failed + get_failed, 0, "failed calls on {name}");
            assert!(set > 0 && get > 0, "redis {name} got no traffic");
            totals[0] += set;
            totals[1] += get;
        }
        assert_eq!(
            totals,
            [20_000, 20_000],
            "SET and GET calls over both servers"
        );
        // Each `redis-cli info` is a connection of its own: subtract the one that read `after`.
        let received = (after.0 - before.0 - 1, after.1 - before.1 - 1);
        println!(
            "connections through fulcrum: one {}, two {}",
            received.0, received.1
        );
        assert!(
            received.0 >= 1 && received.1 >= 1,
            "connections: {received:?}"
        );
        assert!(after.0 > 1 && after.1 > 1);
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Connection limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_connections_queues_new_connections_then_closes_them_at_the_timeout() {
    bounded(async {
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = Balancer::start(&tcp_config(
            &[a.addr],
            "",
            "max_connections = 1\nqueue_timeout = \"400ms\"",
        ))
        .await;
        let (mut first, name) = named_connect(&lb).await;
        assert_eq!(name, "a");

        // The second connection waits in the queue: no backend connection, no bytes.
        let mut second = lb.connect().await;
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(150), second.read(&mut byte)).await;
        assert!(early.is_err(), "the queued connection got {early:?}");
        assert_eq!(a.accepted(), 1, "the backend saw only the first connection");

        // The first one ends: the queued one gets the backend.
        assert_eq!(exchange(&mut first, b"one").await, b"one");
        assert_eq!(read_line(&mut second).await, "a");
        assert_eq!(a.accepted(), 2);

        // A third waits behind the second and is closed at the queue timeout.
        let mut third = lb.connect().await;
        let waited = Instant::now();
        let result = within(
            Duration::from_secs(3),
            "the queued connection to be closed",
            third.read(&mut byte),
        )
        .await;
        assert!(
            matches!(result, Ok(0)) || result.is_err(),
            "expected the connection closed, got {result:?}"
        );
        assert!(
            waited.elapsed() >= Duration::from_millis(300),
            "closed after {:?}, before the queue timeout",
            waited.elapsed()
        );
        assert_eq!(a.accepted(), 2, "the timed-out connection never reached it");
        assert_eq!(exchange(&mut second, b"two").await, b"two");
        lb.stop().await;
    })
    .await;
}
