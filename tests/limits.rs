//! Connection limits end to end: a backend's `max_connections` with its pool's queue, and a
//! listener's `max_connections`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::backend::TestBackend;
use common::balancer::{TestBalancer, admin_get};
use common::client::{TestClient, TestResponse};
use common::tcp::{backlogged_request, backlogged_response};
use common::{bounded, wait_until, within};
use http::StatusCode;
use tokio::task::JoinHandle;

/// A `GET path` on a connection of its own, running on its own task.
fn spawn_get(address: SocketAddr, path: &'static str) -> JoinHandle<TestResponse> {
    tokio::spawn(async move {
        let mut client = TestClient::connect(address).await;
        within(Duration::from_secs(10), "a response", client.get(path))
            .await
            .unwrap_or_else(|err| panic!("GET {path}: {err}"))
    })
}

async fn finished(task: JoinHandle<TestResponse>) -> TestResponse {
    within(Duration::from_secs(10), "the request task", task)
        .await
        .expect("the request task panicked")
}

/// The value of the sample `name{labels…}` on `/metrics` (labels in any order), if present.
async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = admin_get(admin, "/metrics").await.text();
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, rest) = series.split_once('{').unwrap_or((series, "}"));
        let matches = series_name == name
            && labels
                .iter()
                .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// `/status` as JSON.
async fn status(admin: SocketAddr) -> serde_json::Value {
    let response = admin_get(admin, "/status").await;
    serde_json::from_slice(&response.body).expect("/status is JSON")
}

/// Polls `/status` until the pool's `queued` is `n`.
async fn until_queued(admin: SocketAddr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let document = status(admin).await;
        if document["pools"][0]["queued"] == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queued never became {n}:\n{document:#}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_max_connections_queues_requests_until_one_finishes() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .pool_name("queued")
            .backend(backend.addr())
            .pool("max_connections", "2")
            .start_with_admin()
            .await;
        // Three responses that stay open until the backend's gate lets each finish.
        let gated: Vec<_> = (0..3).map(|_| spawn_get(lb.addr(), "/gated")).collect();
        wait_until(
            Duration::from_secs(5),
            "two requests at the backend",
            || backend.request_count() == 2,
        )
        .await;
        until_queued(admin, 1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(backend.request_count(), 2, "the third request must wait");
        let document = status(admin).await;
        assert_eq!(document["pools"][0]["max_connections"], 2);
        assert_eq!(document["pools"][0]["backends"][0]["in_flight"], 2);
        assert_eq!(
            metric(admin, "fulcrum_queue_length", &[("pool", "queued")]).await,
            Some(1.0)
        );

        // One finishes: the queued request takes its place.
        backend.open_gate();
        wait_until(
            Duration::from_secs(5),
            "the queued request at the backend",
            || backend.request_count() == 3,
        )
        .await;
        backend.open_gate();
        backend.open_gate();
        for task in gated {
            let response = finished(task).await;
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.text(), "firstrest");
        }
        assert_eq!(
            metric(
                admin,
                "fulcrum_queued_total",
                &[("pool", "queued"), ("outcome", "served")]
            )
            .await,
            Some(1.0)
        );
        assert_eq!(status(admin).await["pools"][0]["queued"], 0);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_and_a_queue_timeout_answer_503_with_retry_after() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .pool_name("turned_away")
            .backend(backend.addr())
            .pool("max_connections", "1")
            .pool("max_queue", "1")
            .pool("queue_timeout", "\"400ms\"")
            .start_with_admin()
            .await;
        let holding = spawn_get(lb.addr(), "/gated");
        wait_until(
            Duration::from_secs(5),
            "the first request at the backend",
            || backend.request_count() == 1,
        )
        .await;
        let queued_at = Instant::now();
        let queued = spawn_get(lb.addr(), "/");
        until_queued(admin, 1).await;

        // The queue holds one: the next request is turned away at once.
        let mut client = lb.client().await;
        let full = client.get("/").await.expect("a response");
        assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            full.headers.get(http::header::RETRY_AFTER),
            Some(&http::HeaderValue::from_static("1"))
        );
        assert!(full.text().contains("busy"), "{}", full.text());
        assert!(!queued.is_finished(), "the queued request is still waiting");

        // The queued one gives up at the queue timeout.
        let timed_out = finished(queued).await;
        assert_eq!(timed_out.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            queued_at.elapsed() >= Duration::from_millis(400),
            "answered after {:?}",
            queued_at.elapsed()
        );
        assert_eq!(backend.request_count(), 1, "neither reached the backend");
        for (outcome, count) in [("full", 1.0), ("timeout", 1.0)] {
            assert_eq!(
                metric(
                    admin,
                    "fulcrum_queued_total",
                    &[("pool", "turned_away"), ("outcome", outcome)]
                )
                .await,
                Some(count),
                "outcome {outcome}"
            );
        }

        // The connection that got the 503 stays usable once there is room again.
        backend.open_gate();
        assert_eq!(finished(holding).await.status, StatusCode::OK);
        let response = client.get("/").await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_skip_a_backend_at_max_connections_for_one_with_room() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .pool("max_connections", "1")
            .start()
            .await;
        // Round-robin's first pick is `a`; its gated response keeps it at the cap.
        let holding = spawn_get(lb.addr(), "/gated");
        wait_until(Duration::from_secs(5), "the gated request at a", || {
            a.request_count() == 1
        })
        .await;
        let mut client = lb.client().await;
        for i in 0..4 {
            let response = client.get("/").await.expect("a response");
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.served_by(), Some("b"), "request {i}");
        }
        a.open_gate();
        assert_eq!(finished(holding).await.status, StatusCode::OK);
        // With room on both again, round-robin alternates as before.
        let mut served = Vec::new();
        for _ in 0..4 {
            let response = client.get("/").await.expect("a response");
            served.push(response.served_by().unwrap_or_default().to_owned());
        }
        served.sort();
        assert_eq!(served, ["a", "a", "b", "b"]);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_at_max_connections_accepts_the_next_client_when_one_closes() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .listener("max_connections", "1")
            .start_with_admin()
            .await;
        let mut first = lb.client().await;
        assert_eq!(
            first.get("/").await.expect("a response").status,
            StatusCode::OK
        );

        // The second client's connect succeeds (the kernel's backlog), but nothing serves it.
        let second = backlogged_request(lb.addr(), "/").await;
        assert_eq!(backend.request_count(), 1);
        let document = status(admin).await;
        assert_eq!(document["listeners"][0]["max_connections"], 1);
        assert_eq!(document["listeners"][0]["connections_active"], 1);
        assert_eq!(
            metric(
                admin,
                "fulcrum_listener_saturated_total",
                &[("listener", "web")]
            )
            .await,
            Some(1.0)
        );

        // The first client leaves: the second is accepted and answered.
        drop(first);
        let response = backlogged_response(second).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(backend.request_count(), 2);
        lb.stop().await;
    })
    .await;
}
