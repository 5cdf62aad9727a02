//! Renewal: a short window renews under load without a failed handshake; a CA outage during
//! renewal keeps the old certificate and retries.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::TempDir;
use crate::common::backend::TestBackend;
use crate::common::pebble::Pebble;
use crate::{Fulcrum, admin_get, fetch, free_address, serial, trusting, wait_for_trusted};

/// fulcrum's config for one ACME listener at `https` on `pebble`, renewing `renew_before`
/// ahead, with an admin listener at `admin`.
fn config(
    pebble: &Pebble,
    https: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    renew_before: &str,
    backend: std::net::SocketAddr,
) -> String {
    crate::acme_config(
        &pebble.directory,
        &pebble.directory_ca,
        "renew.example.com",
        Some(renew_before),
        https,
        admin,
        backend,
    )
}

/// Certificates valid 40 s with `renew_before` far longer: renewed a tenth into their life,
/// every few seconds. Two clients make a fresh verified handshake and request in a loop the
/// whole time: none fails, and they see at least three certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_renewal_window_renews_under_load_without_a_failed_handshake() {
    let https = free_address();
    let Some(pebble) = Pebble::start(1, https.port(), Some(Duration::from_secs(40))).await else {
        return;
    };
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-renew");
    let fulcrum = Fulcrum::start(
        &dir,
        &config(&pebble, https, admin, "30d", backend.addr()),
        https,
    )
    .await;
    let root = pebble.root_pem().await;
    let first = wait_for_trusted(https, &root, "renew.example.com", || {
        format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log())
    })
    .await;
    let failures = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::Mutex::new(HashSet::from([serial(&first)])));
    let requests = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let (failures, seen, requests) = (
            Arc::clone(&failures),
            Arc::clone(&seen),
            Arc::clone(&requests),
        );
        let config = trusting(&root);
        clients.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < deadline
                && seen.lock().map(|s| s.len()).unwrap_or(0) < 3
            {
                match fetch(https, Arc::clone(&config), "renew.example.com").await {
                    Ok((leaf, status)) if status.contains(" 200 ") => {
                        requests.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut seen) = seen.lock() {
                            seen.insert(serial(&leaf));
                        }
                    }
                    Ok((_, status)) => panic!("a request during renewal got {status:?}"),
                    Err(err) => {
                        eprintln!("handshake failed: {err}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for client in clients {
        client.await.expect("client loop");
    }
    let seen = seen.lock().map(|s| s.len()).unwrap_or(0);
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "failed handshakes during renewal\n{}",
        fulcrum.log()
    );
    assert!(
        seen >= 3,
        "only {seen} certificates within 60 s\n{}",
        fulcrum.log()
    );
    assert!(requests.load(Ordering::Relaxed) >= 10);
    println!(
        "renewal under load: {} verified handshakes + requests, {seen} certificates, 0 failed",
        requests.load(Ordering::Relaxed)
    );
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains("fulcrum_acme_orders_total{outcome=\"renewed\"}"),
        "{metrics}"
    );
    assert!(fulcrum.log().contains("ACME certificate renewed"));
}

/// Certificates valid 60 s, renewed 50 s before expiry (10 s after issuance). Pebble is
/// stopped right after the first issuance: the renewal fails and is retried with back-off
/// (two failures counted), `/status` shows the CA's error, and every handshake meanwhile gets
/// the old certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_during_renewal_keeps_the_old_certificate_and_retries() {
    let https = free_address();
    let Some(mut pebble) = Pebble::start(1, https.port(), Some(Duration::from_secs(60))).await
    else {
        return;
    };
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-outage");
    let fulcrum = Fulcrum::start(
        &dir,
        &config(&pebble, https, admin, "50s", backend.addr()),
        https,
    )
    .await;
    let root = pebble.root_pem().await;
    let first = wait_for_trusted(https, &root, "renew.example.com", || {
        format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log())
    })
    .await;
    pebble.stop();
    let config = trusting(&root);
    // First retry 10 s after the failure at ~10 s; bounded well past the second failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
    loop {
        let (leaf, status) = fetch(https, Arc::clone(&config), "renew.example.com")
            .await
            .unwrap_or_else(|err| {
                panic!(
                    "the old certificate must still be served: {err}\n{}",
                    fulcrum.log()
                )
            });
        assert_eq!(serial(&leaf), serial(&first), "a certificate from nowhere");
        assert!(status.contains(" 200 "), "{status}");
        let metrics = admin_get(admin, "/metrics").await;
        if metrics.contains("fulcrum_acme_orders_total{outcome=\"failed\"} 2") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second failed attempt within 50 s\n{metrics}\n{}",
            fulcrum.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let certificates = crate::status_certificates(admin).await;
    assert!(
        certificates[0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{certificates:?}"
    );
    assert_eq!(certificates[0]["source"], "acme");
    let log = fulcrum.log();
    assert!(
        log.contains("ACME order failed; the current certificate stays and the order is retried"),
        "{log}"
    );
}
