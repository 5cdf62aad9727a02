//! Which backend a request goes to, and what the client gets when backends fail: weights,
//! least connections, closed, hanging and resetting backends, retries.

use super::*;

use common::tally;
use common::tcp::closed_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_are_exact_and_smoothly_interleaved() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .weighted(a.addr(), 1)
            .weighted(b.addr(), 1)
            .weighted(c.addr(), 2)
            .start()
            .await;
        let mut client = lb.client().await;
        let mut sequence = Vec::with_capacity(400);
        for i in 0..400 {
            let response = client.get("/").await.expect("request through the proxy");
            assert_eq!(response.status, StatusCode::OK, "request {i}");
            let name = response.served_by().expect("x-served-by").to_owned();
            assert_eq!(response.text(), name, "body names the same backend");
            sequence.push(name);
        }
        let counts = tally(sequence.iter().map(String::as_str));
        assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
        assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
        assert_eq!(counts.get("c"), Some(&200), "{counts:?}");
        assert_eq!(
            (a.request_count(), b.request_count(), c.request_count()),
            (100, 100, 200),
            "counts at the backends"
        );

        let mut run = 0;
        for name in &sequence {
            run = if name == "c" { run + 1 } else { 0 };
            assert!(run <= 2, "c served {run} in a row: {sequence:?}");
        }
        for (start, window) in sequence.windows(4).enumerate() {
            for name in ["a", "b", "c"] {
                assert!(
                    window.iter().any(|n| n == name),
                    "window at {start} lacks {name}: {window:?}"
                );
            }
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_prefers_fast_backends() {
    bounded(async {
        let slow =
            TestBackend::with_behaviour("slow", Behaviour::Delay(Duration::from_millis(300))).await;
        let fast1 = TestBackend::spawn("fast1").await;
        let fast2 = TestBackend::spawn("fast2").await;
        let mut lb = TestBalancer::builder()
            .backend(slow.addr())
            .backend(fast1.addr())
            .backend(fast2.addr())
            .algorithm("least_connections")
            .start()
            .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut clients = Vec::new();
        for _ in 0..40 {
            let address = lb.addr();
            clients.push(tokio::spawn(async move {
                let mut client = TestClient::connect(address).await;
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    match client.get("/").await {
                        Ok(response) if response.status == StatusCode::OK => {}
                        _ => errors += 1,
                    }
                }
                errors
            }));
        }
        let mut errors = 0;
        for client in clients {
            errors += client.await.expect("client task");
        }
        assert_eq!(errors, 0, "requests failed");
        let (s, f1, f2) = (
            slow.request_count(),
            fast1.request_count(),
            fast2.request_count(),
        );
        assert!(
            f1 > 3 * s && f2 > 3 * s,
            "slow={s} fast1={f1} fast2={f2}: fast backends should get > 3x the slow one"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_backend_is_skipped_without_client_errors() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let mut closed = TestBackend::spawn("closed").await;
        closed.stop().await;
        let c = TestBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(closed.addr())
            .backend(c.addr())
            .start()
            .await;
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let address = lb.addr();
            tasks.push(tokio::spawn(async move {
                let mut client = TestClient::connect(address).await;
                let mut statuses = Vec::new();
                for _ in 0..60 {
                    let response = client.get("/").await.expect("request through the proxy");
                    statuses.push(response.status);
                }
                statuses
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.extend(task.await.expect("client task"));
        }
        assert_eq!(statuses.len(), 300);
        let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
        assert!(
            failed.is_empty(),
            "{} requests failed: {failed:?}",
            failed.len()
        );
        assert_eq!(closed.request_count(), 0);
        assert_eq!(a.request_count() + c.request_count(), 300);
        lb.stop().await;
    })
    .await;
}

/// Spec: when no backend can be reached the client gets 503 with a short plain-text body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_503() {
    bounded(async {
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(closed_port().await)
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "body: {:?}",
            response.text()
        );
        assert!(
            response.body.len() < 200,
            "short body: {:?}",
            response.text()
        );
        let content_type = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(content_type.starts_with("text/plain"), "{content_type:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_is_504_after_request_timeout() {
    bounded(async {
        let hang = TestBackend::with_behaviour("hang", Behaviour::Hang).await;
        let mut lb = TestBalancer::builder()
            .backend(hang.addr())
            .pool("request_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let started = Instant::now();
        let response = client.get("/").await.expect("a response from the proxy");
        let elapsed = started.elapsed();
        assert_eq!(
            response.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{:?}",
            response.text()
        );
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "answered after {elapsed:?}"
        );
        assert_eq!(hang.request_count(), 1, "the request did reach the backend");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_backend_is_502() {
    bounded(async {
        let reset = TestBackend::with_behaviour("reset", Behaviour::Reset).await;
        let mut lb = TestBalancer::builder().backend(reset.addr()).start().await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(
            response.status,
            StatusCode::BAD_GATEWAY,
            "{:?}",
            response.text()
        );
        assert!(reset.request_count() >= 1, "the backend was connected to");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_500_is_passed_through() {
    bounded(async {
        let failing = TestBackend::with_behaviour(
            "failing",
            Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .await;
        let mut lb = TestBalancer::builder()
            .backend(failing.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.text(), "failing", "the backend's own body");
        assert_eq!(failing.request_count(), 1, "a 500 is not retried");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_retried_on_other_backends() {
    bounded(async {
        let live = TestBackend::spawn("live").await;
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(closed_port().await)
            .backend(live.addr())
            .pool("retries", "2")
            .start()
            .await;
        let mut client = lb.client().await;
        for i in 0..30 {
            let response = client.get("/").await.expect("request through the proxy");
            assert_eq!(
                response.status,
                StatusCode::OK,
                "request {i}: {:?}",
                response.text()
            );
            assert_eq!(response.served_by(), Some("live"));
        }
        assert_eq!(live.request_count(), 30);
        lb.stop().await;
    })
    .await;
}

/// Every backend tried (the one the budget allows) refused: 503 with `Retry-After`, as when
/// nothing is healthy; a 502 is for a backend that accepted and then failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_closed_backend_gives_503() {
    bounded(async {
        let live = TestBackend::spawn("live").await;
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(live.addr())
            .pool("retries", "0")
            .start()
            .await;
        let mut client = lb.client().await;
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let response = client.get("/").await.expect("a response from the proxy");
            if response.status == StatusCode::SERVICE_UNAVAILABLE {
                assert!(response.headers.contains_key(http::header::RETRY_AFTER));
            }
            statuses.push(response.status.as_u16());
        }
        let bad = statuses.iter().filter(|s| **s == 503).count();
        let ok = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!((bad, ok), (5, 5), "{statuses:?}");
        assert!(
            statuses.windows(2).all(|pair| pair[0] != pair[1]),
            "round-robin alternates: {statuses:?}"
        );
        assert_eq!(live.request_count(), 5);
        lb.stop().await;
    })
    .await;
}
