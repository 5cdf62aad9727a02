//! End-to-end tests of health checking: active checks, passive ejection, fail-open, replays of
//! idempotent requests and slow start, observed from outside (which backend gets which
//! request, what the client sees) with real sockets on 127.0.0.1.

#[path = "../common/mod.rs"]
mod common;

mod active;
mod blame;
mod fail_open;
mod passive;
mod replay;

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

/// Whole milliseconds, for compact assertion messages.
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
