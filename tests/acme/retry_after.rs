//! A CA's `Retry-After` on an error answer: the next attempt comes when the CA asked, not on
//! the generic back-off (an hour for a rate limit, 10 s for anything else).

use std::time::Duration;

use crate::common::TempDir;
use crate::common::backend::TestBackend;
use crate::common::pebble::Pebble;
use crate::front::Front;
use crate::{Fulcrum, acme_config, admin_get, free_address, status_certificates, wait_for_trusted};

/// The front refuses the first newOrder with `429`, `Retry-After: 3` and a `rateLimited`
/// problem. The next newOrder arrives at least 3 s later and well within 10 s, the certificate
/// is issued, and the failure's log line names the wait the CA asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_with_retry_after_is_retried_when_the_ca_asked() {
    let https = free_address();
    let Some(pebble) = Pebble::start(1, https.port(), None).await else {
        return;
    };
    let front = Front::start(&pebble).await;
    front.refuse_new_orders(1, 3);
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-retry-after");
    let config = acme_config(
        &front.directory,
        &front.directory_ca,
        "wait.example.com",
        None,
        https,
        admin,
        backend.addr(),
    );
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    let root = pebble.root_pem().await;
    wait_for_trusted(https, &root, "wait.example.com", || {
        format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log())
    })
    .await;
    let orders = front.new_orders();
    assert_eq!(orders.len(), 2, "{orders:?}\n{}", fulcrum.log());
    assert!(orders[0].refused && !orders[1].refused, "{orders:?}");
    let gap = orders[1].at.duration_since(orders[0].at);
    assert!(
        gap >= Duration::from_secs(3),
        "retried {gap:?} after a Retry-After of 3 s\n{}",
        fulcrum.log()
    );
    assert!(
        gap < Duration::from_secs(10),
        "retried only {gap:?} after a Retry-After of 3 s\n{}",
        fulcrum.log()
    );
    let log = fulcrum.log();
    let failure = log
        .lines()
        .find(|line| line.contains("ACME order failed"))
        .unwrap_or_else(|| panic!("no failure logged\n{log}"));
    assert!(failure.contains("retry_after_secs=3"), "{failure}");
    assert!(failure.contains("rate_limited=true"), "{failure}");
    assert!(failure.contains("retry in 3 s"), "{failure}");
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains("fulcrum_acme_orders_total{outcome=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fulcrum_acme_orders_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
    let certificates = status_certificates(admin).await;
    assert_eq!(certificates[0]["source"], "acme", "{certificates:?}");
    println!("429 with Retry-After: 3 -> the next newOrder {gap:.2?} later, then issued");
}
