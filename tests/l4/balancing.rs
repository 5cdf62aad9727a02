//! Which backend a TCP connection goes to: round-robin and least-connections spreads, dead
//! and silent backends, TCP health checks, and a backend's `max_connections` queue.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_sequential_connections_exactly_evenly() {
    bounded_for(TEST_LIMIT, async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
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
    bounded_for(TEST_LIMIT, async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(&addrs(&backends), "", "")).await;
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
    bounded_for(TEST_LIMIT, async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
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
    bounded_for(TEST_LIMIT, async {
        for algorithm in ["round_robin", "least_connections"] {
            let a = Backend::spawn("a", Mode::NamedEcho).await;
            let b = Backend::spawn("b", Mode::NamedEcho).await;
            let dead = closed_port().await;
            let mut lb = start(&tcp_config(
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
                let addr = lb.addr();
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
    bounded_for(TEST_LIMIT, async {
        let (_listener, _fillers, hole) = blackhole().await;
        // Check the premise: a connect to it hangs.
        let probe =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(hole)).await;
        if probe.is_ok() {
            println!("skipping: could not make a connect hang on this host ({probe:?})");
            return;
        }
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
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
    bounded_for(TEST_LIMIT, async {
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let b_addr = closed_port().await;
        // No retries and no passive ejection: a connection sent to a closed port would fail, so
        // every success shows the checks kept it away.
        let mut lb = start(&tcp_config(
            &[a.addr, b_addr],
            "",
            "retries = 0\n\
             [pools.app.health_check]\ninterval = \"100ms\"\ntimeout = \"50ms\"\n\
             healthy_threshold = 1\nunhealthy_threshold = 1\n\
             [pools.app.passive]\nconsecutive_failures = 0",
        ))
        .await;
        let round = |lb: &TestBalancer| {
            let addr = lb.addr();
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
    bounded_for(TEST_LIMIT, async {
        let dead = [closed_port().await, closed_port().await];
        let mut lb = start(&tcp_config(&dead, "", "")).await;
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
        let mut lb = start(&tcp_config(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_connections_queues_new_connections_then_closes_them_at_the_timeout() {
    bounded_for(TEST_LIMIT, async {
        let a = Backend::spawn("a", Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
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
