//! Certificate files: config errors that name the entry, and rotation (in place and through a
//! Kubernetes-style symlinked secret) served to new handshakes only.

use super::*;

use common::pki::peer_leaf;
use fulcrum::Config;

/// How long to wait for a rotated certificate to be served.
const ROTATION_LIMIT: Duration = Duration::from_secs(3);

/// Parses a config whose listener has `certificates = [entries]`; returns the error text and
/// the keys of its problems.
fn parse_error(dir: &TempDir, entries: &str) -> (String, Vec<String>) {
    let text = config_text(
        Some(&format!("certificates = [{entries}]")),
        &["127.0.0.1:9".parse().expect("address")],
        "round_robin",
    );
    match Config::parse(&dir.config_file(), &text) {
        Ok(_) => panic!("config must be rejected:\n{text}"),
        Err(err) => (
            err.to_string(),
            err.problems().iter().map(|p| p.key.clone()).collect(),
        ),
    }
}

#[test]
fn config_errors_name_the_certificate_entry() {
    let ca = Ca::new();
    let dir = TempDir::new("errors");
    let good = ca.leaf(&["example.test"], 1);
    let other = ca.leaf(&["other.test"], 2);
    good.write(&dir, "good");
    dir.write("other.key", &other.key_pem);
    dir.write("only-key.pem", &good.key_pem);
    dir.write("garbage.pem", "this is not PEM at all\n");
    std::fs::create_dir_all(dir.join("certs")).expect("mkdir certs");
    dir.write("certs/nested.pem", &good.cert_pem);
    dir.write("certs/nested.key", &good.key_pem);

    // Control: the good pair, also from a subdirectory, parses.
    let text = config_text(
        Some(
            "certificates = [{ cert = \"good.pem\", key = \"good.key\" }, \
             { cert = \"certs/nested.pem\", key = \"certs/nested.key\" }]",
        ),
        &["127.0.0.1:9".parse().expect("address")],
        "round_robin",
    );
    Config::parse(&dir.config_file(), &text).unwrap_or_else(|err| panic!("valid config: {err}"));

    // A key from another certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"other.key\" }");
    assert!(
        keys.contains(&"listeners[0].tls.certificates[0].key".to_owned()),
        "{keys:?}\n{text}"
    );
    assert!(
        text.contains("listeners[0].tls.certificates[0].key"),
        "{text}"
    );
    assert!(text.contains("does not match"), "{text}");

    // A missing certificate file (second entry: the index is right).
    let (text, keys) = parse_error(
        &dir,
        "{ cert = \"good.pem\", key = \"good.key\" }, { cert = \"missing.pem\", key = \"good.key\" }",
    );
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[1].cert"],
        "{text}"
    );
    assert!(text.contains("cannot read"), "{text}");
    assert!(text.contains("missing.pem"), "{text}");

    // A missing key file.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"missing.key\" }");
    assert_eq!(keys, vec!["listeners[0].tls.certificates[0].key"], "{text}");
    assert!(text.contains("cannot read"), "{text}");

    // A PEM with a key but no certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"only-key.pem\", key = \"good.key\" }");
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[0].cert"],
        "{text}"
    );
    assert!(text.contains("contains no PEM certificate"), "{text}");

    // A file that is not PEM at all, as the certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"garbage.pem\", key = \"good.key\" }");
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[0].cert"],
        "{text}"
    );
    assert!(text.contains("contains no PEM certificate"), "{text}");

    // A key file holding only a certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"good.pem\" }");
    assert_eq!(keys, vec!["listeners[0].tls.certificates[0].key"], "{text}");
    assert!(text.contains("contains no PEM private key"), "{text}");

    // An empty list.
    let (text, keys) = parse_error(&dir, "");
    assert_eq!(keys, vec!["listeners[0].tls.certificates"], "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_served_to_new_handshakes_only() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("rotate");
        let old = ca.leaf(&["example.test"], 100);
        old.write(&dir, "site");
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let config = client_config(&ca, &["http/1.1"], BOTH);

        let stream = tls_connect(lb.addr(), Arc::clone(&config), "example.test")
            .await
            .expect("handshake before rotation");
        assert!(
            peer_leaf(&stream) == old.der,
            "the initial certificate is served"
        );
        let (mut early, _early_conn) = http1_over(stream).await;
        let response = early.send_request(get("/before")).await.expect("request");
        TestResponse::collect(response).await.expect("body");

        // Let the watcher settle before touching the files.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = ca.leaf(&["example.test"], 200);
        dir.replace("site.key", &new.key_pem);
        dir.replace("site.pem", &new.cert_pem);

        let started = Instant::now();
        loop {
            let got = presented(lb.addr(), Arc::clone(&config), "example.test").await;
            if got == new.der {
                break;
            }
            assert!(
                got == old.der,
                "neither the old nor the new certificate: {}",
                subject(&got)
            );
            assert!(
                started.elapsed() < ROTATION_LIMIT,
                "the rotated certificate was not served within {ROTATION_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The connection opened before the rotation still carries requests.
        early
            .ready()
            .await
            .expect("the early connection is still open");
        let response = early
            .send_request(get("/after"))
            .await
            .expect("request on the pre-rotation connection");
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");

        // A broken rotation (mismatched key) keeps the current certificate.
        let broken = ca.leaf(&["example.test"], 300);
        dir.replace("site.pem", &broken.cert_pem);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let got = presented(lb.addr(), Arc::clone(&config), "example.test").await;
        assert!(
            got == new.der,
            "a cert without its key must not replace the served one, got {}",
            subject(&got)
        );
        lb.stop().await;
    })
    .await;
}

/// Points `<dir>/..data` at `<dir>/<version>` atomically (the Kubernetes secret-volume layout).
#[cfg(unix)]
fn publish(dir: &TempDir, version: &str, leaf: &Leaf) {
    std::fs::create_dir_all(dir.join(version)).expect("mkdir version");
    dir.write(&format!("{version}/site.pem"), &leaf.cert_pem);
    dir.write(&format!("{version}/site.key"), &leaf.key_pem);
    let temp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(version, &temp).expect("symlink ..data_tmp");
    std::fs::rename(&temp, dir.join("..data")).expect("rename over ..data");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_certificates_rotate_like_a_kubernetes_secret() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("k8s");
        let v1 = ca.leaf(&["example.test"], 1);
        publish(&dir, "..v1", &v1);
        std::os::unix::fs::symlink("..data/site.pem", dir.join("site.pem")).expect("symlink");
        std::os::unix::fs::symlink("..data/site.key", dir.join("site.key")).expect("symlink");
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let config = client_config(&ca, &["http/1.1"], BOTH);
        assert!(presented(lb.addr(), Arc::clone(&config), "example.test").await == v1.der);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut previous = v1;
        for (serial, version, old) in [(2, "..v2", "..v1"), (3, "..v3", "..v2")] {
            let next = ca.leaf(&["example.test"], serial);
            publish(&dir, version, &next);
            let _ = std::fs::remove_dir_all(dir.join(old));
            let started = Instant::now();
            loop {
                let got = presented(lb.addr(), Arc::clone(&config), "example.test").await;
                if got == next.der {
                    break;
                }
                assert!(
                    got == previous.der,
                    "unexpected certificate {}",
                    subject(&got)
                );
                assert!(
                    started.elapsed() < ROTATION_LIMIT,
                    "rotation to {version} not served within {ROTATION_LIMIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            previous = next;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        lb.stop().await;
    })
    .await;
}

/// `GET /` for `host` on an HTTP/1.1 connection made with SNI `server_name`.
async fn status_for(
    address: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
    host: &str,
) -> StatusCode {
    let stream = tls_connect(address, config, server_name)
        .await
        .expect("handshake");
    let (mut sender, _connection) = http1_over(stream).await;
    let request = Request::get("/")
        .header(http::header::HOST, host)
        .body(empty())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    TestResponse::collect(response).await.expect("body").status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_host_another_certificate_serves_gets_421() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("misdirected");
        ca.leaf(&["a.example.test"], 1).write(&dir, "a");
        ca.leaf(&["b.example.test"], 2).write(&dir, "b");
        ca.leaf(&["*.shared.test"], 3).write(&dir, "shared");
        let text = config_text(
            Some(
                "certificates = [{ cert = \"a.pem\", key = \"a.key\" }, \
                 { cert = \"b.pem\", key = \"b.key\" }, \
                 { cert = \"shared.pem\", key = \"shared.key\" }]",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let config = client_config(&ca, &["http/1.1"], BOTH);
        let address = lb.addr();
        let status = |sni: &'static str, host: &'static str| {
            status_for(address, Arc::clone(&config), sni, host)
        };
        assert_eq!(
            status("a.example.test", "a.example.test").await,
            StatusCode::OK
        );
        assert_eq!(
            status("a.example.test", "A.example.test:443").await,
            StatusCode::OK
        );
        assert_eq!(
            status("a.example.test", "b.example.test").await,
            StatusCode::MISDIRECTED_REQUEST,
            "b has a certificate of its own"
        );
        assert_eq!(
            status("x.shared.test", "y.shared.test").await,
            StatusCode::OK,
            "one wildcard certificate serves both"
        );
        assert_eq!(backend.request_count(), 3, "the 421 reached no backend");
        lb.stop().await;
    })
    .await;
}
