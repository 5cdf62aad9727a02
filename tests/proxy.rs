//! End-to-end tests of the HTTP proxy: real backends, a real fulcrum server, real clients.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Behaviour, PAST_PARKING, TestBackend, TestBalancer, TestClient, bounded, channel_body,
    closed_port, get, raw_connect, raw_exchange, raw_status, within,
};
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a raw exchange waits for the proxy to answer and close.
const RAW_LIMIT: Duration = Duration::from_secs(3);

/// Tallies `x-served-by` over `names`.
fn tally<'a>(names: impl IntoIterator<Item = &'a str>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for name in names {
        *counts.entry(name.to_owned()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_weights_are_exact_and_smoothly_interleaved() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .weighted(a.addr(), 1)
            .weighted(b.addr(), 1)
            .weighted(c.addr(), 2)
            .start()
            .await;
        let mut client = lb.client().await;
        let mut sequence = Vec::with_capacity(400);
        for i in 0..400 {
            let response = client.get("/").await.expect("request through the proxy");
            assert_eq!(response.status, StatusCode::OK, "request {i}");
            let name = response.served_by().expect("x-served-by").to_owned();
            assert_eq!(response.text(), name, "body names the same backend");
            sequence.push(name);
        }
        let counts = tally(sequence.iter().map(String::as_str));
        assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
        assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
        assert_eq!(counts.get("c"), Some(&200), "{counts:?}");
        assert_eq!(
            (a.request_count(), b.request_count(), c.request_count()),
            (100, 100, 200),
            "counts at the backends"
        );

        let mut run = 0;
        for name in &sequence {
            run = if name == "c" { run + 1 } else { 0 };
            assert!(run <= 2, "c served {run} in a row: {sequence:?}");
        }
        for (start, window) in sequence.windows(4).enumerate() {
            for name in ["a", "b", "c"] {
                assert!(
                    window.iter().any(|n| n == name),
                    "window at {start} lacks {name}: {window:?}"
                );
            }
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_prefers_fast_backends() {
    bounded(async {
        let slow =
            TestBackend::with_behaviour("slow", Behaviour::Delay(Duration::from_millis(300))).await;
        let fast1 = TestBackend::spawn("fast1").await;
        let fast2 = TestBackend::spawn("fast2").await;
        let mut lb = TestBalancer::builder()
            .backend(slow.addr())
            .backend(fast1.addr())
            .backend(fast2.addr())
            .algorithm("least_connections")
            .start()
            .await;
        let deadline = Instant::now() + Duration::from_millis(1500);
        let mut clients = Vec::new();
        for _ in 0..40 {
            let address = lb.addr();
            clients.push(tokio::spawn(async move {
                let mut client = TestClient::connect(address).await;
                let mut errors = 0usize;
                while Instant::now() < deadline {
                    match client.get("/").await {
                        Ok(response) if response.status == StatusCode::OK => {}
                        _ => errors += 1,
                    }
                }
                errors
            }));
        }
        let mut errors = 0;
        for client in clients {
            errors += client.await.expect("client task");
        }
        assert_eq!(errors, 0, "requests failed");
        let (s, f1, f2) = (
            slow.request_count(),
            fast1.request_count(),
            fast2.request_count(),
        );
        assert!(
            f1 > 3 * s && f2 > 3 * s,
            "slow={s} fast1={f1} fast2={f2}: fast backends should get > 3x the slow one"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_backend_is_skipped_without_client_errors() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let mut closed = TestBackend::spawn("closed").await;
        closed.stop().await;
        let c = TestBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(closed.addr())
            .backend(c.addr())
            .start()
            .await;
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let address = lb.addr();
            tasks.push(tokio::spawn(async move {
                let mut client = TestClient::connect(address).await;
                let mut statuses = Vec::new();
                for _ in 0..60 {
                    let response = client.get("/").await.expect("request through the proxy");
                    statuses.push(response.status);
                }
                statuses
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.extend(task.await.expect("client task"));
        }
        assert_eq!(statuses.len(), 300);
        let failed: Vec<_> = statuses.iter().filter(|s| **s != StatusCode::OK).collect();
        assert!(
            failed.is_empty(),
            "{} requests failed: {failed:?}",
            failed.len()
        );
        assert_eq!(closed.request_count(), 0);
        assert_eq!(a.request_count() + c.request_count(), 300);
        lb.stop().await;
    })
    .await;
}

/// Spec: when no backend can be reached the client gets 503 with a short plain-text body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_is_503() {
    bounded(async {
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(closed_port().await)
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "body: {:?}",
            response.text()
        );
        assert!(
            response.body.len() < 200,
            "short body: {:?}",
            response.text()
        );
        let content_type = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(content_type.starts_with("text/plain"), "{content_type:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_backend_is_504_after_request_timeout() {
    bounded(async {
        let hang = TestBackend::with_behaviour("hang", Behaviour::Hang).await;
        let mut lb = TestBalancer::builder()
            .backend(hang.addr())
            .pool("request_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let started = Instant::now();
        let response = client.get("/").await.expect("a response from the proxy");
        let elapsed = started.elapsed();
        assert_eq!(
            response.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{:?}",
            response.text()
        );
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "answered after {elapsed:?}"
        );
        assert_eq!(hang.request_count(), 1, "the request did reach the backend");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resetting_backend_is_502() {
    bounded(async {
        let reset = TestBackend::with_behaviour("reset", Behaviour::Reset).await;
        let mut lb = TestBalancer::builder().backend(reset.addr()).start().await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(
            response.status,
            StatusCode::BAD_GATEWAY,
            "{:?}",
            response.text()
        );
        assert!(reset.request_count() >= 1, "the backend was connected to");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_500_is_passed_through() {
    bounded(async {
        let failing = TestBackend::with_behaviour(
            "failing",
            Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .await;
        let mut lb = TestBalancer::builder()
            .backend(failing.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.text(), "failing", "the backend's own body");
        assert_eq!(failing.request_count(), 1, "a 500 is not retried");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let request = Request::get("/headers")
            .header("host", "shop.example")
            .header("connection", "x-custom, keep-alive")
            .header("x-custom", "1")
            .header("keep-alive", "5")
            .header("te", "trailers")
            .header("proxy-connection", "x")
            .header("x-forwarded-for", "198.51.100.1")
            .header("x-forwarded-for", "198.51.100.2")
            .header("x-forwarded-proto", "gopher")
            .header("x-forwarded-host", "spoofed.example")
            .header("via", "1.0 edge")
            .header("x-end-to-end", "kept")
            .body(common::empty())
            .expect("valid request");
        let response = client
            .fetch(request)
            .await
            .expect("request through the proxy");
        assert_eq!(response.status, StatusCode::OK);

        let seen = backend.last_request().expect("the backend got the request");
        for name in [
            "connection",
            "x-custom",
            "keep-alive",
            "te",
            "proxy-connection",
        ] {
            assert!(
                !seen.headers.contains_key(name),
                "{name} reached the backend: {:?}",
                seen.headers
            );
        }
        assert_eq!(seen.headers["host"], "shop.example");
        assert_eq!(seen.headers["x-end-to-end"], "kept");
        // The client's chain is extended, its other forwarding fields replaced: one line each.
        assert_single_fields(
            &seen.headers,
            &[
                ("x-forwarded-for", "198.51.100.1, 198.51.100.2, 127.0.0.1"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-host", "shop.example"),
                ("via", "1.0 edge, 1.1 fulcrum"),
            ],
        );
        lb.stop().await;
    })
    .await;
}

/// Asserts each of `fields` is sent as exactly one line with exactly that value.
fn assert_single_fields(headers: &http::HeaderMap, fields: &[(&str, &str)]) {
    for (name, value) in fields {
        let values: Vec<_> = headers.get_all(*name).iter().collect();
        assert_eq!(values, [value], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_are_removed_and_via_added() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client
            .get("/hop-headers")
            .await
            .expect("request through the proxy");
        assert_eq!(response.status, StatusCode::OK);
        assert!(
            !response.headers.contains_key("keep-alive"),
            "{:?}",
            response.headers
        );
        assert!(
            !response.headers.contains_key("x-backend-hop"),
            "{:?}",
            response.headers
        );
        assert_eq!(response.headers["x-backend-kept"], "1");
        // The proxy's own Date replaces the backend's (as nginx's does).
        let date = response.headers.get("date").expect("Date on the response");
        assert_ne!(date, common::OLD_DATE);
        assert_eq!(response.headers.get_all("date").iter().count(), 1);
        let via = response.headers.get("via").expect("Via on the response");
        assert!(via.to_str().is_ok_and(|v| v.contains("fulcrum")), "{via:?}");
        lb.stop().await;
    })
    .await;
}

/// Sends `raw` on its own connection and asserts a 400 that never reached the backend.
async fn assert_rejected_400(raw: &str) {
    let backend = TestBackend::spawn("a").await;
    let mut lb = TestBalancer::builder()
        .backend(backend.addr())
        .start()
        .await;
    let answer = raw_exchange(lb.addr(), raw.as_bytes(), RAW_LIMIT).await;
    assert_eq!(
        raw_status(&answer),
        Some(400),
        "request {raw:?}\ngot {answer:?}"
    );
    assert_eq!(
        backend.request_count(),
        0,
        "request {raw:?} reached the backend: {:?}",
        backend.requests()
    );
    lb.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_is_rejected() {
    bounded(async {
        assert_rejected_400(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_with_content_length_is_rejected() {
    bounded(async {
        assert_rejected_400(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_are_rejected() {
    bounded(async {
        assert_rejected_400(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        )
        .await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_request_after_a_good_one_is_rejected() {
    bounded(async {
        // A clean request, then an ambiguous one on the same connection: only the first may
        // reach the backend.
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder().backend(backend.addr()).start().await;
        let raw = "GET /first HTTP/1.1\r\nHost: x\r\n\r\n\
                   POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let answer = raw_exchange(lb.addr(), raw.as_bytes(), RAW_LIMIT).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        assert!(answer.contains("HTTP/1.1 400"), "{answer:?}");
        let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/first"]);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_is_431() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let answer = raw_exchange(lb.addr(), raw.as_bytes(), RAW_LIMIT).await;
        assert_eq!(raw_status(&answer), Some(431), "{answer:?}");
        assert_eq!(backend.request_count(), 0);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_streams_to_the_backend() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let (body_tx, body) = channel_body();
        let request = Request::post("/upload")
            .header("host", common::TEST_HOST)
            .body(body)
            .expect("valid request");
        let exchange = tokio::spawn(async move { client.fetch(request).await });

        body_tx
            .send(Bytes::from_static(b"first"))
            .await
            .expect("the client body is being sent");
        let chunk = backend.next_upload_chunk(Duration::from_secs(5)).await;
        assert_eq!(
            chunk, "first",
            "the backend saw the first chunk before the rest was sent"
        );
        body_tx
            .send(Bytes::from_static(b"-rest"))
            .await
            .expect("the client body is being sent");
        drop(body_tx);
        let chunk = backend.next_upload_chunk(Duration::from_secs(5)).await;
        assert_eq!(chunk, "-rest");

        let response = within(Duration::from_secs(5), "the upload response", exchange)
            .await
            .expect("client task")
            .expect("upload through the proxy");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "10");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_streams_to_the_client() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.send(get("/gated")).await.expect("response head");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut received = Vec::new();
        while received.len() < b"first".len() {
            let frame = within(Duration::from_secs(5), "the first chunk", body.frame())
                .await
                .expect("the body has a first frame")
                .expect("the body streams without error");
            if let Ok(data) = frame.into_data() {
                received.extend_from_slice(&data);
            }
        }
        assert_eq!(
            received, b"first",
            "the first chunk arrived before the gate opened"
        );
        backend.open_gate();
        let rest = within(
            Duration::from_secs(5),
            "the rest of the body",
            body.collect(),
        )
        .await
        .expect("the body completes")
        .to_bytes();
        assert_eq!(rest, "rest");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trips_a_large_body() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let request = Request::post("/echo")
            .header("host", common::TEST_HOST)
            .body(common::full(payload.clone()))
            .expect("valid request");
        let response = client.fetch(request).await.expect("echo through the proxy");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.body.len(), payload.len());
        assert!(response.body == payload, "echoed body differs");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_retried_on_other_backends() {
    bounded(async {
        let live = TestBackend::spawn("live").await;
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(closed_port().await)
            .backend(live.addr())
            .pool("retries", "2")
            .start()
            .await;
        let mut client = lb.client().await;
        for i in 0..30 {
            let response = client.get("/").await.expect("request through the proxy");
            assert_eq!(
                response.status,
                StatusCode::OK,
                "request {i}: {:?}",
                response.text()
            );
            assert_eq!(response.served_by(), Some("live"));
        }
        assert_eq!(live.request_count(), 30);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_closed_backend_gives_502() {
    bounded(async {
        let live = TestBackend::spawn("live").await;
        let mut lb = TestBalancer::builder()
            .backend(closed_port().await)
            .backend(live.addr())
            .pool("retries", "0")
            .start()
            .await;
        let mut client = lb.client().await;
        let mut statuses = Vec::new();
        for _ in 0..10 {
            let response = client.get("/").await.expect("a response from the proxy");
            statuses.push(response.status.as_u16());
        }
        let bad = statuses.iter().filter(|s| **s == 502).count();
        let ok = statuses.iter().filter(|s| **s == 200).count();
        assert_eq!((bad, ok), (5, 5), "{statuses:?}");
        assert!(
            statuses.windows(2).all(|pair| pair[0] != pair[1]),
            "round-robin alternates: {statuses:?}"
        );
        assert_eq!(live.request_count(), 5);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_is_proxied_to_http1() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        let request = Request::get("http://h2.example/over-h2?x=1")
            .version(Version::HTTP_2)
            .body(common::empty())
            .expect("valid request");
        let response = client
            .fetch(request)
            .await
            .expect("h2 request through the proxy");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "a");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.version, Version::HTTP_11);
        assert_eq!(seen.path, "/over-h2");
        assert_eq!(seen.headers["host"], "h2.example");
        assert_eq!(seen.headers["x-forwarded-host"], "h2.example");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_connection_is_closed() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"300ms\"")
            .listener("header_read_timeout", "\"5s\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = within(
            Duration::from_millis(1500),
            "the proxy to close an idle connection",
            stream.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected EOF, got {:?}", String::from_utf8_lossy(&buf[..n])),
        }
        assert!(
            elapsed >= Duration::from_millis(250),
            "closed too early: {elapsed:?}"
        );
        lb.stop().await;
    })
    .await;
}

/// Reads until the proxy closes the connection; returns what it sent before.
async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_request_head_is_cut_off_by_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"600ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        // A first, whole request, so the slow head is a later one on a keep-alive connection.
        stream
            .write_all(b"HEAD /first HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            let read = within(Duration::from_secs(3), "a response", stream.read(&mut byte)).await;
            assert_eq!(read.expect("read"), 1, "closed before the first response");
            head.push(byte[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        let started = Instant::now();
        stream
            .write_all(b"GET /slowloris HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        // One header byte every 100 ms: the connection is never idle, the head never ends.
        let (mut reader, mut writer) = stream.into_split();
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writer.write_all(b"X-Slow: y\r\n").await.is_err() {
                    return;
                }
            }
        });
        let mut buf = [0u8; 256];
        let read = within(
            Duration::from_secs(3),
            "the proxy to close the connection",
            reader.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "expected the connection closed, got {read:?}"
        );
        assert!(
            elapsed >= Duration::from_millis(550),
            "closed too early: {elapsed:?}"
        );
        trickle.abort();
        assert_eq!(
            backend.request_count(),
            1,
            "the partial request reached the backend"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_new_connection_is_closed_after_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"400ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let started = Instant::now();
        let sent = within(
            Duration::from_secs(3),
            "the proxy to close a silent connection",
            read_until_closed(&mut stream),
        )
        .await;
        let elapsed = started.elapsed();
        assert!(sent.is_empty(), "{:?}", String::from_utf8_lossy(&sent));
        assert!(
            elapsed >= Duration::from_millis(350),
            "closed too early: {elapsed:?}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_wait_is_bounded_by_idle_timeout_not_header_read_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"10s\"")
            .listener("header_read_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let first = client.get("/one").await.expect("first request");
        assert_eq!(first.status, StatusCode::OK);
        // Three header-read timeouts pass while the keep-alive connection waits.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let second = client
            .get("/two")
            .await
            .expect("second request on the same connection");
        assert_eq!(second.status, StatusCode::OK);
        assert_eq!(backend.request_count(), 2);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_is_reused_upstream() {
    bounded(async {
        // Sequential requests on one client connection should reuse one upstream connection:
        // the backend sees requests but the proxy does not open a connection per request.
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = lb.client().await;
        for _ in 0..20 {
            let response = client.get("/chunks/3/1").await.expect("request");
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.text(), "chunk-0;chunk-1;chunk-2;");
        }
        assert_eq!(backend.request_count(), 20);
        assert_eq!(
            backend.connection_count(),
            1,
            "one upstream connection, reused"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_upstream_connections_is_reused_then_closed_once_idle() {
    bounded(async {
        const BURST: usize = 8;
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .pool("idle_timeout", "\"2s\"")
            .start()
            .await;
        let mut clients = Vec::new();
        for _ in 0..BURST {
            clients.push(lb.client().await);
        }
        for round in 0..2 {
            // Each takes 300 ms at the backend, so all of them overlap.
            let answers = futures_util::future::join_all(
                clients.iter_mut().map(|client| client.get("/slow/300")),
            )
            .await;
            for answer in answers {
                assert_eq!(answer.expect("burst request").status, StatusCode::OK);
            }
            assert_eq!(
                backend.connection_count(),
                BURST,
                "round {round}: one upstream connection per concurrent request, kept for the next burst"
            );
        }
        // Steady traffic reuses the connection that went idle last; the rest stay untouched
        // and are closed once idle for 2 s.
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_millis(3500) {
            let answer = clients[0].get("/").await.expect("steady request");
            assert_eq!(answer.status, StatusCode::OK);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(backend.connection_count(), BURST, "no connection opened");
        assert_eq!(
            backend.open_connections(),
            1,
            "only the connection in use is left open"
        );
        lb.stop().await;
    })
    .await;
}

/// A backend on 127.0.0.1:0 that answers every request head on every connection with `reply`.
async fn scripted_backend(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = socket.write_all(reply).await;
                let _ = socket.read(&mut chunk).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_or_broken_backend_responses_are_502() {
    bounded(async {
        for reply in [
            // Response splitting: which framing is the next response's start?
            &b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
            b"NOT-HTTP garbage\r\n\r\n",
        ] {
            let backend = scripted_backend(reply).await;
            let mut lb = TestBalancer::builder().backend(backend).start().await;
            let mut client = lb.client().await;
            let response = client.get("/").await.expect("a response from the proxy");
            assert_eq!(response.status, StatusCode::BAD_GATEWAY, "{reply:?}");
            lb.stop().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_backend_responses_with_extensions_and_trailers_are_decoded() {
    bounded(async {
        let backend = scripted_backend(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nx-sum: 7\r\n\r\n",
        )
        .await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response from the proxy");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "abcdefg");
        lb.stop().await;
    })
    .await;
}

/// Sends `GET path` on a raw keep-alive connection and reads its small response: a 200.
async fn raw_get(stream: &mut tokio::net::TcpStream, path: &str) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut buf = [0u8; 4096];
    let read = stream.read(&mut buf).await.expect("response");
    let response = String::from_utf8_lossy(&buf[..read]);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

// Idle HTTP/1 connections are parked (hyper's server stopped, its buffers freed) after about
// a second without traffic, and resumed on the client's next bytes: nothing of that may show.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_keep_alive_connection_serves_pipelined_requests() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        let mut client = TestClient::connect(lb.addr()).await;
        for round in 0..2 {
            let response = client.get(&format!("/round-{round}")).await.expect("request");
            assert_eq!(response.status, StatusCode::OK);
            tokio::time::sleep(PAST_PARKING).await;
        }
        // Two requests in one write wake a parked connection: the bytes read to wake it
        // go back in front of hyper, which answers both.
        raw_get(&mut stream, "/first").await;
        tokio::time::sleep(PAST_PARKING).await;
        stream
            .write_all(
                b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            )
            .await
            .expect("pipelined requests");
        let received = within(RAW_LIMIT, "both responses", read_until_closed(&mut stream)).await;
        let received = String::from_utf8_lossy(&received);
        assert_eq!(received.matches("HTTP/1.1 200 OK").count(), 2, "{received}");
        let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths[paths.len() - 2..], ["/one", "/two"], "{paths:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_keeps_its_connection_past_the_parking_time() {
    bounded(async {
        let backend = TestBackend::with_behaviour("slow", Behaviour::Delay(PAST_PARKING)).await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .pool("request_timeout", "\"10s\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let response = client.get("/slow").await.expect("slow request");
        assert_eq!(response.status, StatusCode::OK);
        // An open exchange is never parked: parking it would have turned keep-alive off.
        assert_eq!(response.headers.get("connection"), None);
        let again = client
            .get("/again")
            .await
            .expect("a second request on the same connection");
        assert_eq!(again.status, StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_still_closed_at_its_idle_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"2500ms\"")
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        raw_get(&mut stream, "/").await;
        let answered = Instant::now();
        let rest = within(
            Duration::from_secs(6),
            "the idle close",
            read_until_closed(&mut stream),
        )
        .await;
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
        // Parked one to two seconds after the response, then closed when the rest of the
        // idle timeout has passed: between 2.5 and 3.5 s after the last byte.
        let elapsed = answered.elapsed();
        assert!(elapsed >= Duration::from_millis(2400), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(3900), "{elapsed:?}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_empty_line_between_requests_neither_closes_nor_parks_a_busy_server() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut stream = raw_connect(lb.addr()).await;
        raw_get(&mut stream, "/first").await;
        let mut buf = [0u8; 4096];
        // An empty line before the next request is to be ignored (RFC 9112 §2.2); old
        // browsers sent one after a POST body. hyper holds it while a new server would start
        // busy on it: parking must wait for a request to end, never turn keep-alive off.
        for _ in 0..2 {
            tokio::time::sleep(PAST_PARKING).await;
            stream.write_all(b"\r\n").await.expect("empty line");
        }
        tokio::time::sleep(PAST_PARKING).await;
        stream
            .write_all(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("second request");
        let read = within(RAW_LIMIT, "the second response", stream.read(&mut buf))
            .await
            .expect("second response");
        let second = String::from_utf8_lossy(&buf[..read]).to_ascii_lowercase();
        assert!(second.starts_with("http/1.1 200"), "{second}");
        assert!(!second.contains("connection: close"), "{second}");
        stream
            .write_all(b"GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("third request on the same connection");
        let rest = within(
            RAW_LIMIT,
            "the third response",
            read_until_closed(&mut stream),
        )
        .await;
        assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
        lb.stop().await;
    })
    .await;
}

/// An HTTP/2 backend (cleartext, prior knowledge) that answers every request with `h2` and a
/// `Date` of 1994 ([`common::OLD_DATE`]); each request's head goes to the returned channel.
async fn h2_backend() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<http::request::Parts>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (heads, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let heads = heads.clone();
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let _ = heads.send(request.into_parts().0);
                async {
                    let mut response = http::Response::new(common::full("h2"));
                    response
                        .headers_mut()
                        .insert("date", http::HeaderValue::from_static(common::OLD_DATE));
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (address, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_backends_get_each_forwarding_field_once_and_clients_the_proxys_date() {
    bounded(async {
        let (address, mut seen) = h2_backend().await;
        let mut lb = TestBalancer::builder()
            .backend(address)
            .pool("http2", "true")
            .start()
            .await;
        let mut client = lb.client().await;
        for _ in 0..2 {
            let request = Request::get("/over-h2")
                .header("host", "shop.example")
                .header("x-forwarded-for", "198.51.100.1")
                .header("x-forwarded-proto", "gopher")
                .header("via", "1.0 edge")
                .body(common::empty())
                .expect("valid request");
            let response = client
                .fetch(request)
                .await
                .expect("request through the proxy");
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(response.text(), "h2");
            let date = response.headers.get("date").expect("Date on the response");
            assert_ne!(date, common::OLD_DATE);
            let head = seen.recv().await.expect("the backend got the request");
            assert_eq!(head.version, Version::HTTP_2);
            assert_single_fields(
                &head.headers,
                &[
                    ("x-forwarded-for", "198.51.100.1, 127.0.0.1"),
                    ("x-forwarded-proto", "http"),
                    ("x-forwarded-host", "shop.example"),
                    ("via", "1.0 edge, 1.1 fulcrum"),
                ],
            );
        }
        lb.stop().await;
    })
    .await;
}

/// `Content-Length` reaches the client on both a HEAD answer (the backend's field, describing a
/// body not sent) and a GET answer (written from the body's length), once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_reaches_head_and_get_clients() {
    bounded(async {
        let backend = TestBackend::spawn("abc").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let raw = raw_exchange(
            lb.addr(),
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            RAW_LIMIT,
        )
        .await;
        let answers: Vec<&str> = raw.split("HTTP/1.1 ").skip(1).collect();
        assert_eq!(answers.len(), 2, "{raw}");
        for answer in &answers {
            let lengths = answer.matches("content-length: 3\r\n").count();
            assert_eq!(lengths, 1, "{answer}");
        }
        assert!(answers[0].ends_with("\r\n\r\n"), "HEAD: no body: {raw}");
        assert!(answers[1].ends_with("\r\n\r\nabc"), "GET: the body: {raw}");
        lb.stop().await;
    })
    .await;
}
