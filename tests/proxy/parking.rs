//! HTTP/1 connections between requests are parked (hyper's server stopped, its buffers freed)
//! within a second of their last response, and resumed on the client's next bytes: nothing of
//! that may show.

use super::*;

use common::PAST_PARKING;
use common::balancer::admin_get;
use common::tcp::{backlogged_request, backlogged_response};

/// Sends `GET path` on a raw keep-alive connection and reads its small response: a 200.
async fn raw_get(stream: &mut tokio::net::TcpStream, path: &str) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut buf = [0u8; 4096];
    let read = stream.read(&mut buf).await.expect("response");
    let response = String::from_utf8_lossy(&buf[..read]);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_serves_pipelined_requests() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let mut client = TestClient::connect(lb.addr()).await;
        for round in 0..2 {
            let response = client.get(&format!("/round-{round}")).await.expect("request");
            assert_eq!(response.status, StatusCode::OK);
            tokio::time::sleep(PAST_PARKING).await;
        }
        // Two requests in one write wake a parked connection: the bytes read to wake it
        // go back in front of hyper, which answers both.
        raw_get(&mut stream, "/first").await;
        tokio::time::sleep(PAST_PARKING).await;
        stream
            .write_all(
                b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("pipelined requests");
        let received = within(RAW_LIMIT, "both responses", read_until_closed(&mut stream)).await;
        let received = String::from_utf8_lossy(&received);
        assert_eq!(received.matches("HTTP/1.1 200 OK").count(), 2, "{received}");
        let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths[paths.len() - 2..], ["/one", "/two"], "{paths:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_parked_between_its_requests_serves_every_one() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        // A request every 20 ms for more than two watchdog ticks: the ticks find the
        // connection between two requests and park it, and the next request wakes it.
        let until = Instant::now() + PAST_PARKING;
        let mut sent = 0;
        while Instant::now() < until {
            raw_get(&mut stream, &format!("/busy-{sent}")).await;
            sent += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
        let expected: Vec<String> = (0..sent).map(|n| format!("/busy-{n}")).collect();
        assert_eq!(
            paths, expected,
            "every request reached the backend, in order"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_keeps_its_connection_past_the_parking_time() {
    bounded(async {
        let backend = TestBackend::with_behaviour("slow", Behaviour::Delay(PAST_PARKING)).await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .pool("request_timeout", "\"10s\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/slow").await.expect("slow request");
        assert_eq!(response.status, StatusCode::OK);
        // An open exchange is never parked: parking it would have turned keep-alive off.
        assert_eq!(response.headers.get("connection"), None);
        let again = client
            .get("/again")
            .await
            .expect("a second request on the same connection");
        assert_eq!(again.status, StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_still_closed_at_its_idle_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"2500ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        raw_get(&mut stream, "/").await;
        let answered = Instant::now();
        let rest = within(
            Duration::from_secs(6),
            "the idle close",
            read_until_closed(&mut stream),
        )
        .await;
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        // Parked within a second of the response, then closed when the rest of the idle
        // timeout has passed: between 2.5 and 3.5 s after the last byte.
        let elapsed = answered.elapsed();
        assert!(elapsed >= Duration::from_millis(2400), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(3900), "{elapsed:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_empty_line_between_requests_neither_closes_nor_parks_a_busy_server() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        raw_get(&mut stream, "/first").await;
        let mut buf = [0u8; 4096];
        // An empty line before the next request is to be ignored (RFC 9112 §2.2); old
        // browsers sent one after a POST body. hyper holds it while a new server would start
        // busy on it: parking must wait for a request to end, never turn keep-alive off.
        for _ in 0..2 {
            tokio::time::sleep(PAST_PARKING).await;
            stream.write_all(b"\r\n").await.expect("empty line");
        }
        tokio::time::sleep(PAST_PARKING).await;
        stream
            .write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("second request");
        let read = within(RAW_LIMIT, "the second response", stream.read(&mut buf))
            .await
            .expect("second response");
        let second = String::from_utf8_lossy(&buf[..read]).to_ascii_lowercase();
        assert!(second.starts_with("http/1.1 200"), "{second}");
        assert!(!second.contains("connection: close"), "{second}");
        stream
            .write_all(b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("third request on the same connection");
        let rest = within(
            RAW_LIMIT,
            "the third response",
            read_until_closed(&mut stream),
        )
        .await;
        assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
        lb.stop().await;
    })
    .await;
}

/// A drain closes connections that wait quietly (parked, or not yet spoken) at once: they are
/// woken through their listener, not through a wait of their own, and none is left to the
/// shutdown timeout or its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_closes_parked_and_silent_connections_at_once() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"60s\"")
            .listener("header_read_timeout", "\"60s\"")
            .start()
            .await;
        let mut parked = raw_connect(lb.addr()).await;
        raw_get(&mut parked, "/").await;
        let mut silent = raw_connect(lb.addr()).await;
        tokio::time::sleep(PAST_PARKING).await;
        let task = lb.begin_shutdown();
        let began = Instant::now();
        for (name, stream) in [("parked", &mut parked), ("silent", &mut silent)] {
            let rest = within(
                Duration::from_secs(1),
                "the drain's close",
                read_until_closed(stream),
            )
            .await;
            assert!(
                rest.is_empty(),
                "{name}: {}",
                String::from_utf8_lossy(&rest)
            );
        }
        within(Duration::from_secs(1), "the drain to end", task)
            .await
            .expect("the balancer task");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "{:?}",
            began.elapsed()
        );
    })
    .await;
}

/// A parked connection (held in the listener's parked set, with no task of its own) still
/// holds its room under the listener's `max_connections` until its client closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_keeps_its_room_under_the_listeners_max_connections() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .listener("max_connections", "1")
            .start_with_admin()
            .await;
        let mut first = lb.client().await;
        let response = first.get("/").await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        tokio::time::sleep(PAST_PARKING).await;

        let second = backlogged_request(lb.addr(), "/").await;
        assert_eq!(backend.request_count(), 1);
        let status = admin_get(admin, "/status").await;
        let status: serde_json::Value = serde_json::from_slice(&status.body).expect("JSON");
        assert_eq!(status["listeners"][0]["connections_active"], 1);
        // The parked connection wakes for its next request, still the one admitted.
        let again = first.get("/again").await.expect("a response");
        assert_eq!(again.status, StatusCode::OK);
        assert_eq!(backend.request_count(), 2);

        drop(first);
        let response = backlogged_response(second).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(backend.request_count(), 3);
        lb.stop().await;
    })
    .await;
}
