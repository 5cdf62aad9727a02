//! Replays after a backend fails mid-request: idempotent requests go to another backend,
//! requests with a body do not.

use super::*;

/// A backend that reads each request and resets, and a good one, behind a balancer with two
/// retries and no passive ejection.
async fn reset_pool() -> (ControlledBackend, ControlledBackend, TestBalancer) {
    let reset = ControlledBackend::with_mode("reset", Mode::ResetAfterRead).await;
    let good = ControlledBackend::spawn("good").await;
    let lb = TestBalancer::builder()
        .backend(reset.addr())
        .backend(good.addr())
        .pool("retries", "2")
        .pool("passive", NO_PASSIVE)
        .start()
        .await;
    (reset, good, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_get_is_replayed_on_another_backend_after_a_reset() {
    bounded(async {
        let (reset, good, mut lb) = reset_pool().await;
        let mut client = lb.client().await;
        for i in 0..6 {
            let response = client.get(&format!("/get/{i}")).await.expect("a response");
            assert_eq!(
                response.status,
                StatusCode::OK,
                "GET {i}: {}",
                response.text()
            );
            assert_eq!(response.served_by(), Some("good"));
        }
        let reset_paths: Vec<String> = reset.hits().into_iter().map(|hit| hit.path).collect();
        let good_paths: Vec<String> = good.hits().into_iter().map(|hit| hit.path).collect();
        assert!(
            !reset_paths.is_empty(),
            "no GET reached the resetting backend"
        );
        for path in &reset_paths {
            assert!(
                good_paths.contains(path),
                "{path} was not replayed: {good_paths:?}"
            );
        }
        assert_eq!(good_paths.len(), 6);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_body_is_not_replayed_after_a_reset() {
    bounded(async {
        let (reset, good, mut lb) = reset_pool().await;
        let mut client = lb.client().await;
        let mut statuses = Vec::new();
        for i in 0..6 {
            let request = Request::post(format!("/post/{i}"))
                .header(http::header::HOST, common::client::TEST_HOST)
                .body(full(format!("payload-{i}")))
                .expect("a valid POST");
            let response = within(Duration::from_secs(5), "a POST", client.fetch(request))
                .await
                .expect("a response");
            statuses.push((
                i,
                response.status.as_u16(),
                response.served_by().map(str::to_owned),
            ));
        }
        let reset_hits = reset.hits();
        let good_hits = good.hits();
        assert!(
            !reset_hits.is_empty(),
            "no POST reached the resetting backend"
        );
        for (i, status, served_by) in &statuses {
            let path = format!("/post/{i}");
            let at_reset = reset_hits.iter().any(|hit| hit.path == path);
            let at_good = good_hits.iter().filter(|hit| hit.path == path).count();
            if at_reset {
                assert_eq!(
                    *status, 502,
                    "POST {i} failed at the resetting backend: {statuses:?}"
                );
                assert_eq!(at_good, 0, "POST {i} was replayed on the good backend");
                let body = &reset_hits
                    .iter()
                    .find(|hit| hit.path == path)
                    .expect("hit")
                    .body;
                assert_eq!(body.as_ref(), format!("payload-{i}").as_bytes());
            } else {
                assert_eq!(
                    (*status, served_by.as_deref()),
                    (200, Some("good")),
                    "POST {i}"
                );
                assert_eq!(at_good, 1);
            }
        }
        // A GET afterwards still works (and would be replayed).
        let response = client.fetch(get("/after")).await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

/// `try_timeout` bounds each attempt: a GET stuck on a hanging backend moves on to another one
/// after it, a POST (with a body, so never replayed) gets its 504 then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_timeout_moves_gets_on_and_ends_posts_with_504() {
    try_timeout_case(false).await;
}

/// The same over HTTP/2 to the backends: each attempt is a stream, not a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_timeout_moves_gets_on_and_ends_posts_with_504_over_http2() {
    try_timeout_case(true).await;
}

async fn try_timeout_case(http2: bool) {
    bounded(async {
        let hang = ControlledBackend::with_mode("hang", Mode::Hang).await;
        let good = [
            ControlledBackend::spawn("good-1").await,
            ControlledBackend::spawn("good-2").await,
        ];
        let mut lb = TestBalancer::builder()
            .backend(hang.addr())
            .backend(good[0].addr())
            .backend(good[1].addr())
            .pool("retries", "2")
            .pool("try_timeout", "\"200ms\"")
            .pool("passive", NO_PASSIVE)
            .pool("http2", if http2 { "true" } else { "false" })
            .start()
            .await;
        let try_timeout = Duration::from_millis(200);
        let mut client = lb.client().await;
        for i in 0..6 {
            let hung = hang.hit_count();
            let started = Instant::now();
            let response = client.get(&format!("/get/{i}")).await.expect("a response");
            let took = started.elapsed();
            assert_eq!(
                response.status,
                StatusCode::OK,
                "GET {i}: {}",
                response.text()
            );
            assert_ne!(response.served_by(), Some("hang"));
            if hang.hit_count() > hung {
                assert!(
                    took >= try_timeout && took < try_timeout + SLACK,
                    "GET {i} took {took:?}"
                );
            } else {
                assert!(took < SLACK, "GET {i} took {took:?}");
            }
        }
        assert!(hang.hit_count() >= 1, "no GET reached the hanging backend");

        let mut timeouts = 0;
        for i in 0..3 {
            let hits = (hang.hit_count(), good[0].hit_count() + good[1].hit_count());
            let started = Instant::now();
            let request = Request::post(format!("/post/{i}"))
                .header("host", common::client::TEST_HOST)
                .body(full("payload"))
                .expect("valid request");
            let response = client.fetch(request).await.expect("a response");
            let took = started.elapsed();
            let after = (hang.hit_count(), good[0].hit_count() + good[1].hit_count());
            assert_eq!(
                (after.0 - hits.0) + (after.1 - hits.1),
                1,
                "POST {i} went to exactly one backend"
            );
            if response.status == StatusCode::GATEWAY_TIMEOUT {
                timeouts += 1;
                assert_eq!(after.0, hits.0 + 1, "the 504 came from the hanging backend");
                assert!(
                    took >= try_timeout && took < try_timeout + SLACK,
                    "POST {i} took {took:?}"
                );
            } else {
                assert_eq!(response.status, StatusCode::OK, "POST {i}");
            }
        }
        assert_eq!(timeouts, 1, "one POST in three went to the hanging backend");
        lb.stop().await;
    })
    .await;
}
