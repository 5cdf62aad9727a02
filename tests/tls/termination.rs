//! TLS termination: SNI certificate choice, ALPN, minimum version, handshake timeout, curl over
//! HTTP/2, and parked TLS connections.

use super::*;

use common::PAST_PARKING;
use common::pki::{TLS12_ONLY, TLS13_ONLY, accept_any_config};
use http::Version;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_default_certificate() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("sni");
        let main = ca.leaf(&["example.test", "www.example.test"], 10);
        let api = ca.leaf(&["api.example.test"], 11);
        let wild = ca.leaf(&["*.wild.test"], 12);
        main.write(&dir, "main");
        api.write(&dir, "api");
        wild.write(&dir, "wild");
        let text = config_text(
            Some(
                "certificates = [{ cert = \"main.pem\", key = \"main.key\" }, \
                 { cert = \"api.pem\", key = \"api.key\" }, \
                 { cert = \"wild.pem\", key = \"wild.key\" }]",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let verified = client_config(&ca, &["http/1.1"], BOTH);

        // Names a certificate covers: verified against the test CA, and the exact leaf.
        for (name, expected, what) in [
            ("api.example.test", &api, "api"),
            ("example.test", &main, "main"),
            ("www.example.test", &main, "main (second SAN)"),
            ("x.wild.test", &wild, "wildcard"),
            ("other.wild.test", &wild, "wildcard"),
            (
                "API.Example.TEST",
                &api,
                "api (SNI compared case-insensitively)",
            ),
        ] {
            let got = presented(lb.addr(), Arc::clone(&verified), name).await;
            assert!(
                got == expected.der,
                "SNI {name:?} should get the {what} certificate, got {}",
                subject(&got)
            );
        }

        // A verified connection carries requests (for a host its certificate was chosen for:
        // another certificate's host gets 421, see `certificates.rs`).
        let stream = tls_connect(lb.addr(), Arc::clone(&verified), "api.example.test")
            .await
            .expect("handshake");
        let (mut sender, _conn) = http1_over(stream).await;
        let mut request = get("/sni");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("api.example.test"),
        );
        let response = sender
            .send_request(request)
            .await
            .expect("request over TLS");
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");

        // Names nothing covers get the first (default) certificate.
        let any = accept_any_config();
        for name in ["unknown.test", "a.b.wild.test", "wild.test", "127.0.0.1"] {
            let got = presented(lb.addr(), Arc::clone(&any), name).await;
            assert!(
                got == main.der,
                "SNI {name:?} should get the default certificate, got {}",
                subject(&got)
            );
        }
        // ...which a verifying client then rejects for the name it asked for.
        let err = tls_connect(lb.addr(), Arc::clone(&verified), "unknown.test")
            .await
            .expect_err("the default certificate does not cover unknown.test");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "unexpected error: {err}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http1_and_both_reach_the_http1_backend() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("alpn");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 min_version = \"1.2\"\nalpn = [\"h2\", \"http/1.1\"]\nhandshake_timeout = \"10s\"",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;

        // h2 offered (first): h2 negotiated, HTTP/2 request.
        let stream = tls_connect(
            lb.addr(),
            client_config(&ca, &["h2", "http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering h2");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake over TLS");
        let _conn = tokio::spawn(connection);
        let request = Request::get("https://example.test/over-h2")
            .body(empty())
            .expect("request");
        let response = sender.send_request(request).await.expect("HTTP/2 request");
        assert_eq!(response.version(), Version::HTTP_2);
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/over-h2");
        assert_eq!(seen.version, Version::HTTP_11, "backend hop is HTTP/1.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["host"], "example.test");

        // Only http/1.1 offered: http/1.1 negotiated.
        let stream = tls_connect(
            lb.addr(),
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering http/1.1");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender
            .send_request(get("/over-h1"))
            .await
            .expect("HTTP/1.1 request");
        assert_eq!(response.version(), Version::HTTP_11);
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/over-h1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");

        // No ALPN at all: HTTP/1.1 still works.
        let stream = tls_connect(lb.addr(), client_config(&ca, &[], BOTH), "example.test")
            .await
            .expect("handshake without ALPN");
        assert_eq!(stream.get_ref().1.alpn_protocol(), None);
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/no-alpn")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_list_without_h2_refuses_h2_only_clients() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("alpn-h1");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 alpn = [\"http/1.1\"]",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let stream = tls_connect(
            lb.addr(),
            client_config(&ca, &["h2", "http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        // RFC 7301 §3.2: no protocol in common is a no_application_protocol alert.
        let result =
            tls_connect(lb.addr(), client_config(&ca, &["h2"], BOTH), "example.test").await;
        assert!(result.is_err(), "an h2-only client must not be accepted");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_tls12_clients() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("version");
        single_site(&ca, &dir);
        let settings = |version: &str| {
            format!(
                "certificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n\
                 min_version = \"{version}\""
            )
        };
        let mut strict = TestBalancer::from_config(
            &dir.config_file(),
            &config_text(Some(&settings("1.3")), &[backend.addr()], "round_robin"),
            "web",
        )
        .await;
        let mut lenient = TestBalancer::from_config(
            &dir.config_file(),
            &config_text(Some(&settings("1.2")), &[backend.addr()], "round_robin"),
            "web",
        )
        .await;

        let result = tls_connect(
            strict.addr(),
            client_config(&ca, &["http/1.1"], TLS12_ONLY),
            "example.test",
        )
        .await;
        assert!(
            result.is_err(),
            "a TLS 1.2-only client must fail against min_version 1.3"
        );

        let stream = tls_connect(
            strict.addr(),
            client_config(&ca, &["http/1.1"], TLS13_ONLY),
            "example.test",
        )
        .await
        .expect("a TLS 1.3 client is accepted");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/v13")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);

        // Control: the same 1.2-only client works where 1.2 is allowed.
        let stream = tls_connect(
            lenient.addr(),
            client_config(&ca, &["http/1.1"], TLS12_ONLY),
            "example.test",
        )
        .await
        .expect("a TLS 1.2 client is accepted with min_version 1.2");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/v12")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        strict.stop().await;
        lenient.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("timeout");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 handshake_timeout = \"300ms\"",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let mut stream = TcpStream::connect(lb.addr()).await.expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = within(
            Duration::from_millis(1500),
            "the server to close a silent connection",
            stream.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected a close, got {n} bytes: {:?}", &buf[..n]),
        }
        assert!(
            elapsed >= Duration::from_millis(250),
            "closed after {elapsed:?}, before the 300ms timeout"
        );

        // A client dripping a ClientHello one byte at a time does not extend the deadline.
        let mut stream = TcpStream::connect(lb.addr()).await.expect("connect");
        let started = Instant::now();
        let closed = within(
            Duration::from_millis(1500),
            "the server to close a dripping handshake",
            async {
                // A TLS record header announcing a large handshake message, then filler.
                let drip = [
                    0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ];
                for byte in drip.iter().copied().chain(std::iter::repeat(0u8)) {
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut probe = [0u8; 64];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe))
                            .await
                    {
                        assert_eq!(n, 0, "no bytes expected before the handshake completes");
                        return;
                    }
                }
            },
        );
        closed.await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "dripping client closed after {:?}",
            started.elapsed()
        );

        // A client that completes the handshake in time is unaffected.
        let stream = tls_connect(
            lb.addr(),
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake");
        let (mut sender, _conn) = http1_over(stream).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = sender
            .send_request(get("/late"))
            .await
            .expect("request after 500ms");
        assert_eq!(response.status(), StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_over_tls() {
    let Some(curl) = common::tools::require_tool("curl") else {
        return;
    };
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("curl");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let output = tokio::process::Command::new(&curl)
            .args([
                "--http2",
                "-sk",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(format!("https://127.0.0.1:{}/curl", lb.addr().port()))
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "curl failed: {:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout, "app\n200 2", "curl output");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/curl");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tls_connections_resume_after_parking_and_http2_ones_stay_up() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("tls-park");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        let http1 = tls_connect(
            lb.addr(),
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering http/1.1");
        let (mut http1, _conn) = http1_over(http1).await;
        let http2 = tls_connect(lb.addr(), client_config(&ca, &["h2"], BOTH), "example.test")
            .await
            .expect("handshake offering h2");
        let (mut http2, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(http2))
                .await
                .expect("HTTP/2 handshake over TLS");
        let _conn2 = tokio::spawn(connection);
        for round in 0..3 {
            let response = http1
                .send_request(get(&format!("/h1-{round}")))
                .await
                .unwrap_or_else(|err| panic!("HTTP/1.1 request {round}: {err}"));
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers().get("connection"), None);
            let body = TestResponse::collect(response).await.expect("body");
            assert_eq!(body.text(), "app");
            let request = Request::get(format!("https://example.test/h2-{round}"))
                .body(empty())
                .expect("request");
            let response = http2
                .send_request(request)
                .await
                .unwrap_or_else(|err| panic!("HTTP/2 request {round}: {err}"));
            assert_eq!(response.status(), StatusCode::OK);
            // Past the parking time: the HTTP/1.1 connection is parked, rustls and all.
            tokio::time::sleep(PAST_PARKING).await;
        }
        assert_eq!(backend.request_count(), 6);
        lb.stop().await;
    })
    .await;
}
