//! HTTP/2 abuse from one client connection: streams cancelled after dispatch (CVE-2023-44487's
//! costly variant), a plain rapid reset, a CONTINUATION flood and a window that never opens.
//! Each ends the attacker's connection; the first three with GOAWAY (ENHANCE_YOUR_CALM).

use super::*;

use common::h2frames::{self, ENHANCE_YOUR_CALM};

/// Reads what the server sends on `stream` until it closes or `limit` passes.
async fn read_all(stream: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    received
}

/// Opens `count` streams on one connection, each reset by the client once the backend has
/// its request; returns how the connection ended (`None`: still open 2 s after the last).
async fn cancel_after_dispatch(
    lb: &TestBalancer,
    backend: &TestBackend,
    count: usize,
) -> Option<h2::Error> {
    let tcp = raw_connect(lb.addr()).await;
    let (mut sender, connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ended = tokio::spawn(connection);
    let before = backend.request_count();
    for i in 0..count {
        let request = http::Request::get(format!("http://fulcrum.test/slow/5000?{i}"))
            .body(())
            .expect("request");
        let Ok(Ok(ready)) = tokio::time::timeout(Duration::from_secs(5), sender.ready()).await
        else {
            break;
        };
        sender = ready;
        let Ok((response, mut stream)) = sender.send_request(request, true) else {
            break;
        };
        // Reset only once the request reached the backend: dispatched, then abandoned.
        common::wait_until(Duration::from_secs(5), "the backend to see it", || {
            backend.request_count() > before + i
        })
        .await;
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
    }
    match tokio::time::timeout(Duration::from_secs(2), &mut ended).await {
        Ok(result) => result.expect("connection task").err(),
        Err(_) => {
            ended.abort();
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cancelled_after_dispatch_end_the_connection_with_enhance_your_calm() {
    bounded(async {
        // The default budget: 200 cancelled streams per connection.
        let backend = TestBackend::spawn("slow").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let err = cancel_after_dispatch(&lb, &backend, 201).await;
        let err = err.expect("the server ended the connection");
        assert!(err.is_go_away(), "{err:?}");
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
        assert_eq!(backend.request_count(), 201, "one past the budget of 200");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancelled_stream_budget_is_configurable() {
    bounded(async {
        let backend = TestBackend::spawn("slow").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("http2_max_cancelled_streams", "5")
            .start()
            .await;
        let err = cancel_after_dispatch(&lb, &backend, 6).await;
        let err = err.expect("the server ended the connection");
        assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err:?}");
        assert_eq!(backend.request_count(), 6);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_client_keeps_its_connection_past_the_budget() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("http2_max_cancelled_streams", "2")
            .start()
            .await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        for i in 0..20 {
            let response = client.get("/").await.expect("request");
            assert_eq!(response.status, StatusCode::OK, "request {i}");
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapid_reset_flood_gets_goaway() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let mut attack = h2frames::preface();
        for id in (1..10_000u32).step_by(2) {
            attack.extend(h2frames::get(id));
            attack.extend(h2frames::cancel(id));
        }
        // The server may close before reading it all.
        let _ = stream.write_all(&attack).await;
        let received = read_all(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(h2frames::goaway_code(&received), Some(ENHANCE_YOUR_CALM));
        assert!(
            backend.request_count() < 1000,
            "{} of 5000 reset streams reached the backend",
            backend.request_count()
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_gets_goaway() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let mut attack = h2frames::preface();
        // HEADERS without END_HEADERS, then CONTINUATION frames that never end the block.
        attack.extend(h2frames::frame(0x1, 0x1, 1, &h2frames::get_block()));
        for _ in 0..100_000 {
            attack.extend(h2frames::frame(0x9, 0, 1, &[]));
        }
        let _ = stream.write_all(&attack).await;
        let received = read_all(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(h2frames::goaway_code(&received), Some(ENHANCE_YOUR_CALM));
        assert_eq!(backend.request_count(), 0);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_never_opens_is_closed_at_idle_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"1s\"")
            .start()
            .await;
        let tcp = raw_connect(lb.addr()).await;
        let (mut sender, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
            .expect("h2 handshake");
        let ended = tokio::spawn(connection);
        let request = http::Request::get("http://fulcrum.test/chunks/100000/0")
            .body(())
            .expect("request");
        let (response, _) = sender.send_request(request, true).expect("send");
        let response = within(Duration::from_secs(5), "the response head", response)
            .await
            .expect("a response head");
        assert_eq!(response.status(), StatusCode::OK);
        // Nothing moves while the window stays shut: the idle timeout ends the connection,
        // and the backend's stream with it.
        let started = Instant::now();
        within(Duration::from_secs(5), "the connection to end", ended)
            .await
            .ok();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        lb.stop().await;
    })
    .await;
}
