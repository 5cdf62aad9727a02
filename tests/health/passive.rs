//! Passive ejection: a hanging backend ejected for `ejection_time`, doubling on repeats, within
//! `max_ejected_percent`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_is_ejected_for_ejection_time() {
    bounded(async {
        let good = ControlledBackend::spawn("good").await;
        let hang = ControlledBackend::with_mode("hang", Mode::Hang).await;
        let mut lb = TestBalancer::builder()
            .backend(good.addr())
            .backend(hang.addr())
            .pool("request_timeout", "\"200ms\"")
            .pool(
                "passive",
                "{ consecutive_failures = 3, ejection_time = \"1s\", max_ejection_time = \"4s\", \
                 max_ejected_percent = 50 }",
            )
            .start()
            .await;
        let mut client = lb.client().await;
        let mut timeouts = 0;
        within(Duration::from_secs(6), "four requests at the hanging backend", async {
            while hang.hit_count() < 4 {
                let response = client.get("/work").await.expect("a response");
                match response.status {
                    StatusCode::OK => assert_eq!(response.served_by(), Some("good")),
                    StatusCode::GATEWAY_TIMEOUT => timeouts += 1,
                    other => panic!("unexpected {other}: {}", response.text()),
                }
            }
        })
        .await;
        lb.stop().await;

        let hits: Vec<Instant> = hang.hits().iter().map(|hit| hit.at).collect();
        assert_eq!(timeouts, 4, "each hung request timed out");
        let (third, fourth) = (hits[2], hits[3]);
        // Ejected when the third request timed out (200 ms after it arrived), for 1 s.
        let outage = fourth - third;
        assert!(
            outage >= Duration::from_millis(1150) && outage <= Duration::from_millis(1200) + SLACK * 2,
            "gap after the third failure: {}ms (expected 200ms timeout + 1000ms ejection); hits at {:?}",
            ms(outage),
            hits.iter().map(|h| ms(*h - hits[0])).collect::<Vec<_>>()
        );
        for pair in hits[..3].windows(2) {
            assert!(pair[1] - pair[0] < Duration::from_millis(600), "not ejected before the third failure");
        }
        let good_during = good
            .hits()
            .iter()
            .filter(|hit| hit.at > third && hit.at < fourth)
            .count();
        assert!(good_during > 20, "good served while hang was out: {good_during}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_ejections_double_the_ejection_time() {
    bounded(async {
        let good = ControlledBackend::spawn("good").await;
        let bad = ControlledBackend::with_mode("bad", Mode::Status(500)).await;
        let mut lb = TestBalancer::builder()
            .backend(good.addr())
            .backend(bad.addr())
            .pool(
                "passive",
                "{ consecutive_failures = 3, ejection_time = \"300ms\", \
                 max_ejection_time = \"2s\", max_ejected_percent = 50, \
                 failure_statuses = \"500-504\" }",
            )
            .start()
            .await;
        let quiet = Duration::from_millis(150);
        let mut client = lb.client().await;
        within(
            Duration::from_secs(8),
            "three ejections of the bad backend",
            async {
                loop {
                    let times: Vec<Instant> = bad.hits().iter().map(|hit| hit.at).collect();
                    let bursts_done = gaps_between_bursts(&times, quiet).len();
                    if bursts_done >= 3 {
                        break;
                    }
                    let response = client.get("/work").await.expect("a response");
                    match response.served_by() {
                        Some("good") => assert_eq!(response.status, StatusCode::OK),
                        Some("bad") => {
                            assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR)
                        }
                        other => panic!("unexpected answer {} from {other:?}", response.status),
                    }
                }
            },
        )
        .await;
        lb.stop().await;

        let times: Vec<Instant> = bad.hits().iter().map(|hit| hit.at).collect();
        let gaps = gaps_between_bursts(&times, quiet);
        let gaps_ms: Vec<u128> = gaps.iter().map(|gap| ms(*gap)).collect();
        let expected = [300u128, 600, 1200];
        for (gap, want) in gaps_ms.iter().zip(expected) {
            assert!(
                *gap + 20 >= want && *gap <= want + 250,
                "ejection gaps {gaps_ms:?} ms, expected about {expected:?}"
            );
        }
        let ratio = gaps[1].as_secs_f64() / gaps[0].as_secs_f64();
        assert!(
            (1.6..=2.5).contains(&ratio),
            "second/first = {ratio:.2} ({gaps_ms:?})"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_keeps_one_of_two_failing_backends_in() {
    bounded(async {
        let x = ControlledBackend::with_mode("x", Mode::Status(500)).await;
        let y = ControlledBackend::with_mode("y", Mode::Status(500)).await;
        let mut lb = TestBalancer::builder()
            .backend(x.addr())
            .backend(y.addr())
            .pool(
                "passive",
                "{ consecutive_failures = 3, ejection_time = \"10s\", max_ejection_time = \"10s\", \
                 max_ejected_percent = 50, failure_statuses = 500 }",
            )
            .start()
            .await;
        let mut client = lb.client().await;
        for i in 0..20 {
            let response = client.get(&format!("/a/{i}")).await.expect("a response");
            assert_eq!(
                response.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "request {i}"
            );
        }
        let before = (x.hit_count(), y.hit_count());
        for i in 0..20 {
            let response = client.get(&format!("/b/{i}")).await.expect("a response");
            assert_eq!(
                response.status,
                StatusCode::INTERNAL_SERVER_ERROR,
                "request {i}: {}",
                response.text()
            );
        }
        let added = (x.hit_count() - before.0, y.hit_count() - before.1);
        assert!(
            added == (20, 0) || added == (0, 20),
            "exactly one of the two failing backends is ejected, the other keeps serving: \
             first 20 split {before:?}, next 20 split {added:?}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejected_percent_100_lets_every_failing_backend_go() {
    bounded(async {
        let x = ControlledBackend::with_mode("x", Mode::Status(500)).await;
        let y = ControlledBackend::with_mode("y", Mode::Status(500)).await;
        let mut lb = TestBalancer::builder()
            .backend(x.addr())
            .backend(y.addr())
            .pool(
                "passive",
                "{ consecutive_failures = 3, ejection_time = \"10s\", max_ejection_time = \"10s\", \
                 max_ejected_percent = 100, failure_statuses = 500 }",
            )
            .start()
            .await;
        let mut client = lb.client().await;
        let mut statuses = Vec::new();
        for i in 0..12 {
            let response = client.get(&format!("/a/{i}")).await.expect("a response");
            statuses.push(response.status.as_u16());
        }
        let served = x.hit_count() + y.hit_count();
        assert_eq!(
            (x.hit_count(), y.hit_count()),
            (3, 3),
            "statuses {statuses:?}"
        );
        assert!(statuses[..served].iter().all(|s| *s == 500), "{statuses:?}");
        assert!(statuses[served..].iter().all(|s| *s == 503), "{statuses:?}");
        let response = client.get("/last").await.expect("a response");
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers.contains_key(http::header::RETRY_AFTER));
        lb.stop().await;
    })
    .await;
}
