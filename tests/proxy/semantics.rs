//! HTTP semantics at the proxy: `Host` (RFC 9112 §3.2), trailers (RFC 9110 §6.5), HTTP/2 to
//! HTTP/1.1 conversion (RFC 9113 §8.2.3) and interim responses (RFC 9110 §15.2).

use super::*;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

/// Whether `bytes` hold a whole request head.
fn whole_head(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n")
}

/// Whether `bytes` hold a whole chunked request: the last chunk and its trailer section.
fn whole_chunked(bytes: &[u8]) -> bool {
    let Some(last) = bytes.windows(5).position(|w| w == b"\r\n0\r\n") else {
        return false;
    };
    let trailers = &bytes[last + 5..];
    trailers.starts_with(b"\r\n") || whole_head(trailers)
}

/// A backend that reads each request's bytes until they are `whole`, sends them to the
/// returned channel and answers `reply`.
async fn recording_backend(
    whole: fn(&[u8]) -> bool,
    reply: &'static [u8],
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (sent, seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = sent.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut chunk = [0u8; 1024];
                while !whole(&request) {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = sent.send(request);
                let _ = socket.write_all(reply).await;
                let _ = socket.read(&mut chunk).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_invalid_host_is_400_and_never_forwarded() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        for request in [
            &b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example/evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a.example:80:81\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n",
            b"GET http://user@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n",
            // Connection may not take away the Host the check found.
            b"GET / HTTP/1.1\r\nConnection: host\r\n\r\n",
        ] {
            let response = raw_exchange(lb.addr(), request, RAW_LIMIT).await;
            assert_eq!(
                raw_status(&response),
                Some(400),
                "{:?}: {response}",
                String::from_utf8_lossy(request)
            );
        }
        assert_eq!(backend.request_count(), 0, "{:?}", backend.requests());
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_sees_the_targets_authority_and_a_host_connection_cannot_remove() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let absolute =
            b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n";
        let response = raw_exchange(lb.addr(), absolute, RAW_LIMIT).await;
        assert_eq!(raw_status(&response), Some(200), "{response}");
        let seen = backend.last_request().expect("forwarded");
        assert_eq!(seen.path, "/x");
        assert_single_fields(
            &seen.headers,
            &[("host", "a.example"), ("x-forwarded-host", "a.example")],
        );

        let listed = b"GET / HTTP/1.1\r\nHost: c.example\r\nConnection: host, close\r\n\r\n";
        let response = raw_exchange(lb.addr(), listed, RAW_LIMIT).await;
        assert_eq!(raw_status(&response), Some(200), "{response}");
        let seen = backend.last_request().expect("forwarded");
        assert_single_fields(&seen.headers, &[("host", "c.example")]);
        lb.stop().await;
    })
    .await;
}

/// Closed after (the recording backend answers once per connection).
const CHUNKED_WITH_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
    Trailer: x-sum\r\nConnection: close\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nx-sum: 7\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trailers_reach_http1_clients_that_accept_them() {
    bounded(async {
        let (backend, _seen) = recording_backend(whole_head, CHUNKED_WITH_TRAILERS).await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let request =
            b"GET / HTTP/1.1\r\nHost: a.example\r\nTE: trailers\r\nConnection: close\r\n\r\n";
        let response = raw_exchange(lb.addr(), request, RAW_LIMIT).await;
        assert_eq!(raw_status(&response), Some(200), "{response}");
        let lower = response.to_ascii_lowercase();
        assert!(lower.contains("\r\ntrailer: x-sum\r\n"), "{response}");
        assert!(lower.ends_with("\r\n0\r\nx-sum: 7\r\n\r\n"), "{response}");
        // A client that did not ask for trailers gets the body without them.
        let request = b"GET / HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n";
        let response = raw_exchange(lb.addr(), request, RAW_LIMIT).await;
        assert_eq!(raw_status(&response), Some(200), "{response}");
        assert!(response.ends_with("\r\nefg\r\n0\r\n\r\n"), "{response}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trailers_reach_http2_clients() {
    bounded(async {
        let (backend, _seen) = recording_backend(whole_head, CHUNKED_WITH_TRAILERS).await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        let request = Request::get("http://a.example/")
            .version(Version::HTTP_2)
            .body(common::empty())
            .expect("valid request");
        let response = client.send(request).await.expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        let collected = response.into_body().collect().await.expect("the body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["x-sum"], "7");
        assert_eq!(collected.to_bytes(), "abcdefg");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_trailers_lose_the_fields_a_trailer_may_not_carry() {
    bounded(async {
        let (backend, mut seen) = recording_backend(
            whole_chunked,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let mut stream = raw_connect(lb.addr()).await;
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                  3\r\nabc\r\n0\r\nx-checksum: 1\r\ncontent-length: 5\r\nhost: evil.example\r\n\
                  transfer-encoding: chunked\r\nconnection: close\r\nauthorization: x\r\n\
                  x-forwarded-for: 10.0.0.1\r\n\r\n",
            )
            .await
            .expect("write the request");
        let forwarded = within(RAW_LIMIT, "the request at the backend", seen.recv())
            .await
            .expect("the request");
        let forwarded = String::from_utf8_lossy(&forwarded).to_ascii_lowercase();
        let (head, body) = forwarded.split_once("\r\n\r\n").expect("a head");
        assert!(head.contains("\r\nhost: a.example\r\n"), "{head}");
        assert_eq!(body, "3\r\nabc\r\n0\r\nx-checksum: 1\r\n\r\n");
        let mut buf = [0u8; 1024];
        let n = within(RAW_LIMIT, "the response", stream.read(&mut buf))
            .await
            .expect("read the response");
        assert_eq!(raw_status(&String::from_utf8_lossy(&buf[..n])), Some(200));
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_http2_cookie_fields_reach_an_http1_backend_as_one_line() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .start()
            .await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        let request = Request::get("http://a.example/")
            .version(Version::HTTP_2)
            .header("cookie", "a=1")
            .header("cookie", "b=2; c=3")
            .body(common::empty())
            .expect("valid request");
        let response = client.fetch(request).await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        let seen = backend.last_request().expect("forwarded");
        assert_single_fields(&seen.headers, &[("cookie", "a=1; b=2; c=3")]);
        lb.stop().await;
    })
    .await;
}

/// hyper's server cannot send a 1xx other than 101 (it turns one into a 500), so interim
/// responses stop at the proxy; the final response must still arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_are_consumed_and_the_final_one_delivered() {
    bounded(async {
        let (backend, _seen) = recording_backend(
            whole_head,
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 102 Processing\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: yes\r\n\r\nok",
        )
        .await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let mut client = lb.client().await;
        let response = client.get("/").await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.headers["x-final"], "yes");
        assert!(!response.headers.contains_key("link"));
        assert_eq!(response.text(), "ok");
        lb.stop().await;
    })
    .await;
}

/// A backend's trailer section may name fields an HTTP/2 stream cannot carry (`connection`);
/// they are dropped, not allowed to reset the client's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_trailers_lose_the_fields_a_trailer_may_not_carry() {
    bounded(async {
        let (backend, _seen) = recording_backend(
            whole_head,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n\
              2\r\nok\r\n0\r\nx-sum: 7\r\nconnection: close\r\ncontent-length: 9\r\n\r\n",
        )
        .await;
        let mut lb = TestBalancer::builder().backend(backend).start().await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        let request = Request::get("http://a.example/")
            .version(Version::HTTP_2)
            .body(common::empty())
            .expect("valid request");
        let response = client.send(request).await.expect("a response");
        let collected = response
            .into_body()
            .collect()
            .await
            .expect("the whole body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers.len(), 1, "{trailers:?}");
        assert_eq!(trailers["x-sum"], "7");
        assert_eq!(collected.to_bytes(), "ok");
        lb.stop().await;
    })
    .await;
}
