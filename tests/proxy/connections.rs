//! Client and upstream connections: idle and header-read timeouts, keep-alive, and upstream
//! connection reuse.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connection_is_closed() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"300ms\"")
            .listener("header_read_timeout", "\"5s\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = within(
            Duration::from_millis(1500),
            "the proxy to close an idle connection",
            stream.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
        }
        assert!(
            elapsed >= Duration::from_millis(250),
            "closed too early: {elapsed:?}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_head_is_cut_off_by_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"600ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        // A first, whole request, so the slow head is a later one on a keep-alive connection.
        stream
            .write_all(b"HEAD /first HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let read = within(Duration::from_secs(3), "a response", stream.read(&mut byte)).await;
            assert_eq!(read.expect("read"), 1, "closed before the first response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        let started = Instant::now();
        stream
            .write_all(b"GET /slowloris HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        // One header byte every 100 ms: the connection is never idle, the head never ends.
        let (mut reader, mut writer) = stream.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writer.write_all(b"X-Slow: y\r\n").await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 256];
        let read = within(
            Duration::from_secs(3),
            "the proxy to close the connection",
            reader.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected the connection closed, got {read:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(550),
            "closed too early: {elapsed:?}"
        );
        trickle.abort();
        assert_eq!(
            backend.request_count(),
            1,
            "the partial request reached the backend"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_new_connection_is_closed_after_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"400ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let started = Instant::now();
        let sent = within(
            Duration::from_secs(3),
            "the proxy to close a silent connection",
            read_until_closed(&mut stream),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
        assert!(
            elapsed >= Duration::from_millis(350),
            "closed too early: {elapsed:?}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_wait_is_bounded_by_idle_timeout_not_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let first = client.get("/one").await.expect("first request");
        assert_eq!(first.status, StatusCode::OK);
        // Three header-read timeouts pass while the keep-alive connection waits.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let second = client
            .get("/two")
            .await
            .expect("second request on the same connection");
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(backend.request_count(), 2);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_reused_upstream() {
    bounded(async {
        // Sequential requests on one client connection should reuse one upstream connection:
        // the backend sees requests but the proxy does not open a connection per request.
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        for _ in 0..20 {
            let response = client.get("/chunks/3/1").await.expect("request");
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.text(), "chunk-0;chunk-1;chunk-2;");
        }
        assert_eq!(backend.request_count(), 20);
        assert_eq!(
            backend.connection_count(),
            1,
            "one upstream connection, reused"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_upstream_connections_is_reused_then_closed_once_idle() {
    bounded(async {
        const BURST: usize = 8;
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .pool("idle_timeout", "\"2s\"")
            .start()
            .await;
        let mut clients = Vec::new();
        for _ in 0..BURST {
            clients.push(lb.client().await);
        }
        for round in 0..2 {
            // Each takes 300 ms at the backend, so all of them overlap.
            let answers = futures_util::future::join_all(
                clients.iter_mut().map(|client| client.get("/slow/300")),
            )
            .await;
            for answer in answers {
                assert_eq!(answer.expect("burst request").status, StatusCode::OK);
            }
            assert_eq!(
                backend.connection_count(),
                BURST,
                "round {round}: one upstream connection per concurrent request, kept for the next burst"
            );
        }
        // Steady traffic reuses the connection that went idle last; the rest stay untouched
        // and are closed once idle for 2 s.
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_millis(3500) {
            let answer = clients[0].get("/").await.expect("steady request");
            assert_eq!(answer.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(backend.connection_count(), BURST, "no connection opened");
        assert_eq!(
            backend.open_connections(),
            1,
            "only the connection in use is left open"
        );
        lb.stop().await;
    })
    .await;
}
