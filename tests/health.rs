//! End-to-end tests of health checking: active checks, passive ejection, fail-open, replays of
//! idempotent requests and slow start, observed from outside (which backend gets which
//! request, what the client sees) with real sockets on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::balancer::TestBalancer;
use common::client::{TestClient, get};
use common::controlled::{ControlledBackend, Mode};
use common::{bounded, full, wait_until, within};
use http::{Request, StatusCode};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Active HTTP checks of `/health`, fast enough for tests: down after 2 failures, up after 2
/// passes, 100 ms apart, no jitter.
const FAST_CHECK: &str = "{ kind = \"http\", path = \"/health\", interval = \"100ms\", \
     timeout = \"100ms\", jitter = \"0s\", healthy_threshold = 2, unhealthy_threshold = 2 }";

/// The check interval of [`FAST_CHECK`].
const INTERVAL: Duration = Duration::from_millis(100);

/// Passive ejection off, so only active checks decide.
const NO_PASSIVE: &str = "{ consecutive_failures = 0 }";

/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_millis(300);

/// One request of a load run.
#[derive(Debug, Clone)]
struct Sample {
    /// When it was sent.
    at: Instant,
    /// Status and `x-served-by`, or the client-side error.
    outcome: Result<(u16, Option<String>), String>,
}

impl Sample {
    fn served_by(&self) -> Option<&str> {
        match &self.outcome {
            Ok((200, Some(name))) => Some(name),
            _ => None,
        }
    }
}

/// Runs `clients` keep-alive connections, each sending `GET /load` back to back, until `stop`
/// fires; returns every request's outcome, sorted by send time.
fn spawn_load(
    address: SocketAddr,
    clients: usize,
    stop: CancellationToken,
) -> JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut client = TestClient::connect(address).await;
                    let mut samples = Vec::new();
                    while !stop.is_cancelled() {
                        let at = Instant::now();
                        let outcome = match within(
                            Duration::from_secs(5),
                            "a response under load",
                            client.get("/load"),
                        )
                        .await
                        {
                            Ok(response) => Ok((
                                response.status.as_u16(),
                                response.served_by().map(str::to_owned),
                            )),
                            Err(err) => {
                                client = TestClient::connect(address).await;
                                Err(err.to_string())
                            }
                        };
                        samples.push(Sample { at, outcome });
                    }
                    samples
                })
            })
            .collect();
        let mut samples = Vec::new();
        for task in tasks {
            samples.extend(task.await.expect("a load client panicked"));
        }
        samples.sort_by_key(|sample| sample.at);
        samples
    })
}

/// Requests sent in `[from, to)` that `name` served, and all requests sent then.
fn share(samples: &[Sample], name: &str, from: Instant, to: Instant) -> (usize, usize) {
    let window: Vec<_> = samples
        .iter()
        .filter(|sample| sample.at >= from && sample.at < to)
        .collect();
    let mine = window
        .iter()
        .filter(|sample| sample.served_by() == Some(name))
        .count();
    (mine, window.len())
}

/// The failures among `samples`, for assertion messages.
fn failures(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|sample| !matches!(sample.outcome, Ok((200, Some(_)))))
        .collect()
}

/// Splits sorted arrival times into bursts separated by more than `quiet`; returns the gaps
/// between consecutive bursts (end of one to start of the next).
fn gaps_between_bursts(times: &[Instant], quiet: Duration) -> Vec<Duration> {
    times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|gap| *gap > quiet)
        .collect()
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

/// Waits (bounded) until the balancer answers 200, i.e. some backend passed its first check.
async fn wait_serving(lb: &TestBalancer) {
    let mut client = lb.client().await;
    within(Duration::from_secs(3), "the pool to come up", async {
        while client.get("/warmup").await.map(|r| r.status).ok() != Some(StatusCode::OK) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Active checks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_costs_no_client_errors_and_ramps_back_after_restart() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut c = ControlledBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(c.addr())
            .pool("slow_start", "\"1s\"")
            .pool("health_check", FAST_CHECK)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;

        // The first probes bring everyone up; wait for that before loading.
        wait_until(
            Duration::from_secs(3),
            "first probes of every backend",
            || a.probe_count() > 0 && b.probe_count() > 0 && c.probe_count() > 0,
        )
        .await;
        wait_serving(&lb).await;

        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 4, stop.clone());
        wait_until(
            Duration::from_secs(3),
            "every backend to serve load",
            || a.hit_count() > 10 && b.hit_count() > 10 && c.hit_count() > 10,
        )
        .await;
        // Let the load run steadily for a moment (it is the workload, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(300)).await;

        let killed_at = Instant::now();
        c.stop().await;
        // Restart once the checks must have marked it down: interval × unhealthy_threshold plus
        // slack. Had it not been marked down by then, the load would reach it at once after the
        // restart instead of only after `healthy_threshold` passing checks.
        tokio::time::sleep_until((killed_at + INTERVAL * 2 + SLACK).into()).await;
        let restarted_at = Instant::now();
        c.restart().await;
        wait_until(
            Duration::from_secs(3),
            "the restarted backend to receive traffic",
            || !c.hits_since(restarted_at).is_empty(),
        )
        .await;
        let back_at = c.hits_since(restarted_at)[0];
        tokio::time::sleep_until((back_at + Duration::from_millis(2000)).into()).await;
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;

        assert!(
            samples.len() > 500,
            "too little load: {} requests",
            samples.len()
        );
        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            samples.len(),
            failed.first()
        );

        let probes = c.probes_since(restarted_at);
        assert!(
            probes.len() >= 2 && back_at > probes[1],
            "after the restart at +{}ms the backend got traffic at +{}ms, before its second \
             passing check (checks at {:?} ms): it was not marked down within {}ms of the kill, \
             or came back too early",
            ms(restarted_at - killed_at),
            ms(back_at - killed_at),
            probes
                .iter()
                .map(|p| ms(*p - killed_at))
                .collect::<Vec<_>>(),
            ms(restarted_at - killed_at),
        );
        assert!(
            back_at - probes[1] < SLACK,
            "back {}ms after its second passing check",
            ms(back_at - probes[1])
        );

        // Slow start: clearly under its fair third at first, its fair third once ramped.
        let (early, early_total) =
            share(&samples, "c", back_at, back_at + Duration::from_millis(300));
        let (late, late_total) = share(
            &samples,
            "c",
            back_at + Duration::from_millis(1100),
            back_at + Duration::from_millis(2000),
        );
        assert!(
            early_total >= 30 && late_total >= 30,
            "too few samples: {early_total}, {late_total}"
        );
        let early_share = early as f64 / early_total as f64;
        let late_share = late as f64 / late_total as f64;
        assert!(
            early_share < 0.2,
            "first 300ms after coming back: {early}/{early_total} = {early_share:.3} (fair 0.333)"
        );
        assert!(
            (0.25..=0.42).contains(&late_share),
            "after the ramp: {late}/{late_total} = {late_share:.3} (fair 0.333)"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_endpoint_takes_a_backend_out_and_passing_brings_it_back() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .pool("health_check", FAST_CHECK)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;
        wait_serving(&lb).await;
        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 2, stop.clone());
        wait_until(
            Duration::from_secs(3),
            "both backends to serve load",
            || a.hit_count() > 10 && b.hit_count() > 10,
        )
        .await;

        let failing_at = Instant::now();
        b.set_health(503);
        let out_by = failing_at + INTERVAL * 2 + SLACK;
        tokio::time::sleep_until((out_by + Duration::from_millis(500)).into()).await;
        let late_hits = b.hits_since(out_by);
        let last_hit = b.hits().last().map(|hit| hit.at).expect("b had traffic");
        assert!(
            late_hits.is_empty(),
            "b still got {} requests more than {}ms after its checks began failing (last at +{}ms)",
            late_hits.len(),
            ms(out_by - failing_at),
            ms(last_hit - failing_at)
        );
        let a_during = a.hits_since(out_by).len();
        assert!(a_during > 20, "a took the load meanwhile: {a_during}");

        let passing_at = Instant::now();
        b.set_health(200);
        wait_until(Duration::from_secs(3), "b to get traffic again", || {
            !b.hits_since(passing_at).is_empty()
        })
        .await;
        let back_at = b.hits_since(passing_at)[0];
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;

        let probes = b.probes_since(passing_at);
        assert!(
            probes.len() >= 2 && back_at > probes[1],
            "b got traffic at +{}ms, before its second passing check (checks at {:?} ms)",
            ms(back_at - passing_at),
            probes
                .iter()
                .map(|p| ms(*p - passing_at))
                .collect::<Vec<_>>()
        );
        let failed = failures(&samples);
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_backend_gets_no_traffic_until_its_first_check_passes() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let fresh = ControlledBackend::spawn("fresh").await;
        fresh.hold_health(true);
        // A long interval and a high healthy_threshold: coming up within one interval shows
        // that the first pass alone brings a new backend up.
        let check = "{ path = \"/health\", interval = \"3s\", timeout = \"3s\", jitter = \"0s\", \
                     healthy_threshold = 3, unhealthy_threshold = 2 }";
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(fresh.addr())
            .pool("health_check", check)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;
        wait_until(
            Duration::from_secs(3),
            "the first probe of the new backend",
            || fresh.probe_count() == 1,
        )
        .await;
        let mut client = lb.client().await;
        within(Duration::from_secs(3), "a to come up", async {
            while client.get("/warmup").await.map(|r| r.status).ok() != Some(StatusCode::OK) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        for i in 0..20 {
            let response = client
                .get(&format!("/before/{i}"))
                .await
                .expect("a response");
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.served_by(), Some("a"), "request {i}");
        }
        assert_eq!(
            fresh.hit_count(),
            0,
            "traffic before the first check answered"
        );

        let released_at = Instant::now();
        fresh.hold_health(false);
        within(Duration::from_secs(2), "the new backend to serve", async {
            loop {
                let response = client.get("/after").await.expect("a response");
                assert_eq!(response.status, StatusCode::OK);
                if response.served_by() == Some("fresh") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(released_at.elapsed() < Duration::from_secs(2));
        assert_eq!(
            fresh.probe_count(),
            1,
            "up after its first passing check alone"
        );
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Fail-open
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Passive ejection
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Replays after a backend fails mid-request
// ---------------------------------------------------------------------------------------------

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

/// Issue #3: the checks of a backend removed by a reload stop (no more probes arrive at it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_removed_backend_stop() {
    bounded(async {
        let kept = ControlledBackend::spawn("kept").await;
        let removed = ControlledBackend::spawn("removed").await;
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-health-removed-{}-{}",
            std::process::id(),
            removed.addr().port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("fulcrum.toml");
        let config_for = |backends: &str| {
            format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                 [pools.app]\nbackends = [{backends}]\n\n\
                 [pools.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"\n\
                 timeout = \"50ms\"\njitter = \"0s\"\n"
            )
        };
        let both = config_for(&format!("\"{}\", \"{}\"", kept.addr(), removed.addr()));
        std::fs::write(&path, &both).expect("write config");
        let config = fulcrum::Config::parse(&path.display().to_string(), &both).expect("valid");
        let server = fulcrum::Server::bind(config)
            .await
            .expect("bind")
            .with_config_file(&path, both.clone());
        let reload = server.reload_handle();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));

        wait_until(Duration::from_secs(5), "probes reach both backends", || {
            kept.probe_count() >= 3 && removed.probe_count() >= 3
        })
        .await;
        let only_kept = config_for(&format!("\"{}\"", kept.addr()));
        std::fs::write(&path, &only_kept).expect("rewrite config");
        let outcome = reload.reload().await.expect("server running");
        assert!(
            matches!(outcome, fulcrum::reload::ReloadOutcome::Applied(_)),
            "{outcome:?}"
        );
        // A probe already in flight may still land; after that, none.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let settled = std::time::Instant::now();
        let kept_before = kept.probe_count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            removed.probes_since(settled).is_empty(),
            "the removed backend was still probed"
        );
        assert!(
            kept.probe_count() >= kept_before + 5,
            "the kept backend's checks stopped too"
        );

        let _ = stop_tx.send(());
        running.await.expect("server task");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}
