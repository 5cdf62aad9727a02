//! First issuance through each challenge, and a restart that serves the cache with the CA gone.

use std::time::Duration;

use crate::common::backend::TestBackend;
use crate::common::pebble::Pebble;
use crate::common::{TempDir, pki};
use crate::{Fulcrum, admin_get, fetch, free_address, issuer, mode, serial, wait_for_trusted};

/// TLS-ALPN-01: before issuance a handshake gets the self-signed stand-in; then Pebble
/// validates through fulcrum's own TLS listener and a client trusting only Pebble's root gets
/// the issued certificate and a proxied `200`. `/status` shows it; the cache is 0700. A
/// restart with Pebble stopped serves the cached certificate from the first handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues_a_trusted_certificate_and_a_restart_serves_the_cache() {
    let https = free_address();
    let Some(mut pebble) = Pebble::start(1, https.port(), None).await else {
        return;
    };
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-alpn");
    let cache = dir.join("cache");
    let config = format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[listeners]]\nname = \"https\"\nlisten = \"{https}\"\npool = \"app\"\n[listeners.tls.acme]\ndomains = [\"alpn.example.com\", \"www.alpn.example.com\"]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\ndirectory_ca = {:?}\ncache = \"cache\"\n\n[pools.app]\nbackends = [\"{}\"]\n",
        pebble.directory,
        pebble.directory_ca.display().to_string(),
        backend.addr()
    );
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    // The stand-in is served at once (no waiting on the CA); a client that checks refuses it.
    let stand_in = pki::presented(https, pki::accept_any_config(), "alpn.example.com").await;
    let root = pebble.root_pem().await;
    // (Unless Pebble was faster than this handshake, which it is not on any machine seen.)
    if issuer(&stand_in).contains("self-signed") {
        assert!(
            fetch(https, crate::trusting(&root), "alpn.example.com")
                .await
                .is_err(),
            "the self-signed stand-in must not verify"
        );
    }
    let leaf = wait_for_trusted(https, &root, "alpn.example.com", || {
        format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log())
    })
    .await;
    assert!(issuer(&leaf).contains("Pebble"), "{}", issuer(&leaf));
    // The second name is on the same certificate.
    let (www, status) = fetch(https, crate::trusting(&root), "www.alpn.example.com")
        .await
        .expect("a trusted handshake for the second domain");
    assert_eq!(serial(&www), serial(&leaf));
    assert!(status.contains(" 200 "), "{status}");
    let certificates = crate::status_certificates(admin).await;
    assert_eq!(certificates.len(), 1, "{certificates:?}");
    let shown = &certificates[0];
    assert_eq!(shown["source"], "acme", "{shown}");
    assert_eq!(shown["listener"], "https", "{shown}");
    assert_eq!(shown["names"][0], "alpn.example.com", "{shown}");
    assert!(
        shown["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("Pebble")),
        "{shown}"
    );
    assert!(
        shown["next_renewal_unix"].as_i64() < shown["not_after_unix"].as_i64(),
        "{shown}"
    );
    if let Some(dom) = crate::dashboard_dom(admin).await {
        assert!(
            dom.contains("data-certificate=\"alpn.example.com\"") && dom.contains(">acme</span>"),
            "the dashboard lists the certificate:\n{dom}"
        );
    }
    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains("fulcrum_acme_orders_total{outcome=\"issued\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "fulcrum_certificate_expiry_seconds{listener=\"https\",name=\"alpn.example.com\"}"
        ),
        "{metrics}"
    );
    assert_eq!(mode(&cache), 0o700);
    // A handshake offering acme-tls/1 with no challenge pending gets no certificate at all
    // (RFC 8737 §3: the validation certificate only, and only while it is armed).
    let mut validation = (*pki::accept_any_config()).clone();
    validation.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    assert!(
        pki::tls_connect(https, std::sync::Arc::new(validation), "alpn.example.com")
            .await
            .is_err(),
        "an acme-tls/1 handshake without a pending challenge must fail"
    );
    let log = fulcrum.log();
    assert!(
        log.contains("serving a self-signed certificate until the CA issues one"),
        "{log}"
    );
    assert!(log.contains("ACME certificate issued"), "{log}");
    drop(fulcrum);

    // The CA is gone; the cache alone serves the first handshake after a restart.
    pebble.stop();
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    let (cached, status) = fetch(https, crate::trusting(&root), "alpn.example.com")
        .await
        .unwrap_or_else(|err| panic!("the cached certificate at once: {err}\n{}", fulcrum.log()));
    assert_eq!(serial(&cached), serial(&leaf));
    assert!(status.contains(" 200 "), "{status}");
    let log = fulcrum.log();
    assert!(log.contains("serving the cached ACME certificate"), "{log}");
    assert!(!log.contains("self-signed"), "{log}");
}

/// HTTP-01: Pebble asks a plain listener (its `challenge_port`) for the token before any
/// routing; the TLS listener then serves the issued certificate to a client trusting Pebble.
/// Other paths on the plain listener still reach the pool. The same TLS listener also has a
/// file certificate: SNI picks among both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_a_trusted_certificate() {
    let https = free_address();
    let http = free_address();
    let Some(pebble) = Pebble::start(http.port(), 1, None).await else {
        return;
    };
    let backend = TestBackend::spawn("app").await;
    let dir = TempDir::new("acme-http01");
    let ca = pki::Ca::new();
    ca.leaf(&["static.example.com"], 7).write(&dir, "static");
    let config = format!(
        "[[listeners]]\nname = \"http\"\nlisten = \"{http}\"\npool = \"app\"\n\n[[listeners]]\nname = \"https\"\nlisten = \"{https}\"\npool = \"app\"\n[listeners.tls]\ncertificates = [{{ cert = \"static.pem\", key = \"static.key\" }}]\n[listeners.tls.acme]\ndomains = [\"web.example.com\"]\ndirectory = \"{}\"\ndirectory_ca = {:?}\ncache = \"cache\"\nchallenge = \"http-01\"\nchallenge_port = {}\n\n[pools.app]\nbackends = [\"{}\"]\n",
        pebble.directory,
        pebble.directory_ca.display().to_string(),
        http.port(),
        backend.addr()
    );
    let fulcrum = Fulcrum::start(&dir, &config, https).await;
    let root = pebble.root_pem().await;
    let leaf = wait_for_trusted(https, &root, "web.example.com", || {
        format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log())
    })
    .await;
    assert!(issuer(&leaf).contains("Pebble"), "{}", issuer(&leaf));
    let file = pki::presented(
        https,
        pki::client_config(&ca, &[], pki::BOTH),
        "static.example.com",
    )
    .await;
    assert!(
        issuer(&file).contains("fulcrum test CA"),
        "{}",
        issuer(&file)
    );
    // The challenge path was answered by fulcrum, not the backend: the backend saw no request
    // for it.
    assert!(
        backend
            .requests()
            .iter()
            .all(|request| !request.path.contains("acme-challenge")),
        "a challenge request reached the backend"
    );
    let mut client = crate::common::client::TestClient::connect(http).await;
    let response = tokio::time::timeout(Duration::from_secs(10), client.get("/other"))
        .await
        .expect("in time")
        .expect("a response");
    assert_eq!(response.status, http::StatusCode::OK);
}
