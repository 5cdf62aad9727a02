//! ARI (RFC 9773 renewal info) through the [`Front`]: a window in the past renews at once, long
//! before `renew_before`, and the new order names the certificate it replaces; a window in the
//! future holds back a renewal `renew_before` would have made.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::common::TempDir;
use crate::common::backend::TestBackend;
use crate::common::pebble::Pebble;
use crate::front::{Front, certificate_id};
use crate::{
    Fulcrum, ISSUE_LIMIT, acme_config, fetch, free_address, serial, status_certificates, trusting,
    wait_for_trusted,
};

const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

fn unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .expect("after 1970")
}

/// Polls `/status` until the certificate's `next_renewal_unix` lies in `[start, end]`; the
/// value. Panics with `logs` after 10 s.
async fn next_renewal_in(
    admin: std::net::SocketAddr,
    (start, end): (SystemTime, SystemTime),
    logs: impl Fn() -> String,
) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let certificates = status_certificates(admin).await;
        let next = certificates
            .first()
            .and_then(|certificate| certificate["next_renewal_unix"].as_i64());
        if let Some(next) = next.filter(|next| (unix(start)..=unix(end)).contains(next)) {
            return next;
        }
        assert!(
            Instant::now() < deadline,
            "next_renewal_unix not in the window {}..={}: {certificates:?}\n{}",
            unix(start),
            unix(end),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Five-year certificates (renewal due in over three years by `renew_before`'s default). The
/// front gives the first certificate a window that ended an hour ago and any later one a window
/// a year away. fulcrum asks right after issuance, renews at once, and the renewal's newOrder
/// carries `replaces` = the first certificate's RFC 9773 §4.1 identifier (checked against the
/// test's own computation). The renewed certificate is asked about in turn and its renewal
/// waits for its window, which `/status` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_in_the_past_renews_at_once_naming_the_certificate_replaced() {
    let https = free_address();
    let Some(pebble) = Pebble::start(1, https.port(), None).await else {
        return;
    };
    let front = Front::start(&pebble).await;
    let now = SystemTime::now();
    let later = (now + DAY * 365, now + DAY * 366);
    front.windows(vec![(now - HOUR * 2, now - HOUR), later]);
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-ari-past");
    let config = acme_config(
        &front.directory,
        &front.directory_ca,
        "ari.example.com",
        None,
        https,
        admin,
        backend.addr(),
    );
    let started = Instant::now();
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    let root = pebble.root_pem().await;
    let logs = || format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log());
    let first = wait_for_trusted(https, &root, "ari.example.com", logs).await;
    let client = trusting(&root);
    let deadline = Instant::now() + ISSUE_LIMIT;
    let renewed = loop {
        let (leaf, status) = fetch(https, Arc::clone(&client), "ari.example.com")
            .await
            .unwrap_or_else(|err| panic!("a trusted handshake throughout: {err}\n{}", logs()));
        assert!(status.contains(" 200 "), "{status}");
        let first_asked = front.asked().first().cloned();
        if front.new_orders().len() >= 2
            && first_asked.is_some_and(|id| id != certificate_id(&leaf))
        {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within {ISSUE_LIMIT:?}: {:?}\n{}",
            front.new_orders(),
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let renewed_after = started.elapsed();
    let replaced = front.asked()[0].clone();
    if serial(&first) != serial(&renewed) {
        assert_eq!(
            certificate_id(&first),
            replaced,
            "the renewal info asked for is the first certificate's"
        );
    }
    let orders = front.new_orders();
    assert_eq!(orders[0].replaces, None, "the first order replaces nothing");
    assert_eq!(
        orders[1].replaces.as_deref(),
        Some(replaced.as_str()),
        "the renewal names the certificate it replaces"
    );
    // Same issuer key, another serial: the identifier is the old certificate's, not the new one's.
    let renewed_id = certificate_id(&renewed);
    assert_eq!(
        renewed_id.split_once('.').map(|(aki, _)| aki),
        replaced.split_once('.').map(|(aki, _)| aki)
    );
    assert_ne!(renewed_id, replaced);
    // The renewed certificate is asked about at once; its window is a year away.
    let next = next_renewal_in(admin, later, logs).await;
    assert!(
        front.asked().contains(&renewed_id),
        "{:?} does not hold {renewed_id}",
        front.asked()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        front.new_orders().len(),
        2,
        "no further order while the window is ahead"
    );
    let log = fulcrum.log();
    assert!(log.contains("ACME certificate renewed"), "{log}");
    assert!(
        log.contains("the CA's renewal window (ARI) moves the renewal"),
        "{log}"
    );
    let (not_before, not_after) = x509_parser::parse_x509_certificate(renewed.as_ref())
        .map(|(_, cert)| {
            let validity = cert.validity();
            (
                validity.not_before.timestamp(),
                validity.not_after.timestamp(),
            )
        })
        .expect("a certificate");
    println!(
        "ARI window in the past: renewed {renewed_after:.1?} after start (renew_before's default: \
         {} days after issuance); next renewal in {} days",
        (not_after - not_before) * 2 / 3 / (24 * 60 * 60),
        (next - unix(SystemTime::now())) / (24 * 60 * 60)
    );
}

/// Certificates valid 40 s with `renew_before = "35s"`: without ARI, renewed about 5 s after
/// issuance. The front's window opens 30 s after the test starts. fulcrum asks right after
/// issuance, `/status` shows the renewal inside the window, and for 12 s after issuance (well
/// past `renew_before`'s time) the same certificate is served and no order is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_in_the_future_holds_back_the_renew_before_renewal() {
    let https = free_address();
    let Some(pebble) = Pebble::start(1, https.port(), Some(Duration::from_secs(40))).await else {
        return;
    };
    let front = Front::start(&pebble).await;
    let now = SystemTime::now();
    let window = (now + Duration::from_secs(30), now + Duration::from_secs(38));
    front.windows(vec![window]);
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-ari-future");
    let config = acme_config(
        &front.directory,
        &front.directory_ca,
        "hold.example.com",
        Some("35s"),
        https,
        admin,
        backend.addr(),
    );
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    let root = pebble.root_pem().await;
    let logs = || format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log());
    let first = wait_for_trusted(https, &root, "hold.example.com", logs).await;
    let issued = Instant::now();
    let not_after = x509_parser::parse_x509_certificate(first.as_ref())
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .expect("a certificate");
    let renew_before_due = not_after - 35;
    let next = next_renewal_in(admin, window, logs).await;
    assert!(
        front.asked().contains(&certificate_id(&first)),
        "{:?}",
        front.asked()
    );
    let client = trusting(&root);
    while issued.elapsed() < Duration::from_secs(12) {
        let (leaf, _) = fetch(https, Arc::clone(&client), "hold.example.com")
            .await
            .unwrap_or_else(|err| panic!("a trusted handshake throughout: {err}\n{}", logs()));
        assert_eq!(
            serial(&leaf),
            serial(&first),
            "renewed before the CA's window\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        unix(SystemTime::now()) > renew_before_due + 3,
        "the observation must outlast renew_before's time ({renew_before_due})"
    );
    assert_eq!(front.new_orders().len(), 1, "{:?}", front.new_orders());
    println!(
        "ARI window in the future: renew_before would have renewed at {renew_before_due}, the \
         window starts at {}; next renewal {next}; no order in the {} s watched past \
         renew_before's time",
        unix(window.0),
        unix(SystemTime::now()) - renew_before_due
    );
}
