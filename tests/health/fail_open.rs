//! When every backend fails its checks: 503 with `Retry-After`, or, with `fail_open`, every
//! backend; and `expect_status` deciding what passes.

use super::*;

/// Starts a pool of two backends with `check` and `fail_open`, and waits until each backend
/// has been probed three times.
async fn pool_with_check(
    check: &str,
    fail_open: bool,
    a: &ControlledBackend,
    b: &ControlledBackend,
) -> TestBalancer {
    let lb = TestBalancer::builder()
        .backend(a.addr())
        .backend(b.addr())
        .pool("fail_open", if fail_open { "true" } else { "false" })
        .pool("health_check", check)
        .pool("passive", NO_PASSIVE)
        .start()
        .await;
    wait_until(
        Duration::from_secs(3),
        "three probes of each backend",
        || a.probe_count() >= 3 && b.probe_count() >= 3,
    )
    .await;
    lb
}

/// Asserts the pool answers 503 with `Retry-After` and neither backend saw the requests.
async fn assert_unavailable(lb: &TestBalancer, a: &ControlledBackend, b: &ControlledBackend) {
    let mut client = lb.client().await;
    for i in 0..5 {
        let response = client.get(&format!("/r/{i}")).await.expect("a response");
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            response.text()
        );
        let retry_after = response
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        assert!(
            retry_after.is_some_and(|secs| secs >= 1),
            "Retry-After: {:?}",
            response.headers.get(http::header::RETRY_AFTER)
        );
        assert!(
            response.text().contains("no healthy backend"),
            "body: {:?}",
            response.text()
        );
    }
    assert_eq!(
        (a.hit_count(), b.hit_count()),
        (0, 0),
        "backends got traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_fail_open_failing_health_endpoints_mean_503_with_retry_after() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        a.set_health(503);
        b.set_health(503);
        let mut lb = pool_with_check(FAST_CHECK, false, &a, &b).await;
        assert_unavailable(&lb, &a, &b).await;
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_status_decides_whether_a_check_passes() {
    bounded(async {
        // The check path answers 404: failing when 200 is expected...
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let check = |expect: u16| {
            format!(
                "{{ path = \"/status/404\", expect_status = {expect}, interval = \"100ms\", \
                 timeout = \"100ms\", jitter = \"0s\", healthy_threshold = 2, \
                 unhealthy_threshold = 2 }}"
            )
        };
        let mut lb = pool_with_check(&check(200), false, &a, &b).await;
        assert_unavailable(&lb, &a, &b).await;
        lb.stop().await;

        // ...and passing when 404 is.
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut lb = pool_with_check(&check(404), false, &a, &b).await;
        let mut client = lb.client().await;
        for i in 0..4 {
            let response = client.get(&format!("/r/{i}")).await.expect("a response");
            assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        }
        assert_eq!((a.hit_count(), b.hit_count()), (2, 2));
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_uses_every_backend_until_one_is_healthy_again() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        a.set_health(503);
        b.set_health(503);
        let mut lb = pool_with_check(FAST_CHECK, true, &a, &b).await;
        let mut client = lb.client().await;
        for i in 0..10 {
            let response = client.get(&format!("/open/{i}")).await.expect("a response");
            assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        }
        assert_eq!(
            (a.hit_count(), b.hit_count()),
            (5, 5),
            "fail-open spreads the load"
        );

        // Once a is healthy, fail-open ends and only a gets traffic.
        a.set_health(200);
        within(Duration::from_secs(3), "a alone to serve", async {
            let mut in_a_row = 0;
            while in_a_row < 10 {
                let response = client.get("/recovering").await.expect("a response");
                assert_eq!(response.status, StatusCode::OK);
                in_a_row = if response.served_by() == Some("a") {
                    in_a_row + 1
                } else {
                    0
                };
            }
        })
        .await;
        let b_before = b.hit_count();
        for i in 0..10 {
            let response = client
                .get(&format!("/closed/{i}"))
                .await
                .expect("a response");
            assert_eq!(response.served_by(), Some("a"));
        }
        assert_eq!(b.hit_count(), b_before, "fail-open ended");
        lb.stop().await;
    })
    .await;
}

/// Every backend refusing its connections is the same answer as none being healthy, whether the
/// pool still tries all of them or passive ejection has already taken some out: 503 with
/// `Retry-After`, never a 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_closed_ports_answer_503_every_time() {
    bounded(async {
        let mut builder = TestBalancer::builder().pool("retries", "2");
        for _ in 0..3 {
            builder = builder.backend(common::tcp::closed_port().await);
        }
        let mut lb = builder.start().await;
        let mut client = lb.client().await;
        let mut statuses = Vec::new();
        for i in 0..20 {
            let response = client.get(&format!("/r/{i}")).await.expect("a response");
            statuses.push(response.status.as_u16());
            assert!(
                response.headers.contains_key(http::header::RETRY_AFTER),
                "request {i}: {:?}",
                response.headers
            );
        }
        assert!(statuses.iter().all(|s| *s == 503), "{statuses:?}");
        lb.stop().await;
    })
    .await;
}
