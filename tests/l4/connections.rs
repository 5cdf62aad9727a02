//! One proxied TCP connection: half-close in either direction, resets, a large transfer both
//! ways, the idle timeout, the drain on shutdown, and the connection metrics.

use super::*;

use common::balancer::admin_get;
use fulcrum::Server;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_fin_keeps_the_backend_to_client_direction_open() {
    bounded_for(TEST_LIMIT, async {
        // The backend answers only after it has seen the client's FIN.
        let backend = Backend::spawn("late", Mode::EchoAfterEof).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "")).await;
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
        let mut lb2 = start(&tcp_config(&[echo.addr], "", "")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("first", Mode::SpeakFirst).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
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
        let mut lb2 = start(&tcp_config(&[raw_addr], "", "")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "idle_timeout = \"300ms\"")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("echo", Mode::Echo).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "")).await;
        let mut stream = lb.connect().await;
        stream.write_all(b"before").await.expect("write");
        let mut buffer = [0u8; 6];
        stream.read_exact(&mut buffer).await.expect("echo");
        let task = lb.begin_shutdown();
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
        let late = TcpStream::connect(lb.addr()).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_counted_in_the_metrics() {
    bounded_for(TEST_LIMIT, async {
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
                metrics = admin_get(admin, "/metrics").await.text();
                if metric_sum(&metrics, "fulcrum_requests_total", &[listener]) >= 4.0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if !metrics.contains("fulcrum_") {
            common::tools::skip("metric checks: the recorder is not installed in this process");
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
