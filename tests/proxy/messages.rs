//! What crosses the proxy and how: hop-by-hop and forwarding headers, `Content-Length`, and
//! framing the proxy must refuse (smuggling, oversized heads, broken backend responses).

use super::*;

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
        assert_ne!(date, common::backend::OLD_DATE);
        assert_eq!(response.headers.get_all("date").iter().count(), 1);
        let via = response.headers.get("via").expect("Via on the response");
        assert!(via.to_str().is_ok_and(|v| v.contains("fulcrum")), "{via:?}");
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
