//! HTTP/2: prior-knowledge clients proxied to HTTP/1.1 backends, and HTTP/2 backends.

use super::*;

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

/// An HTTP/2 backend (cleartext, prior knowledge) that answers every request with `h2` and a
/// `Date` of 1994 ([`common::backend::OLD_DATE`]); each request's head goes to the returned channel.
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
                    response.headers_mut().insert(
                        "date",
                        http::HeaderValue::from_static(common::backend::OLD_DATE),
                    );
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
            assert_ne!(date, common::backend::OLD_DATE);
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

/// gRPC servers refuse a request without `te: trailers`; TE is hop-by-hop, so the proxy says
/// it again to an HTTP/2 backend when the client asked for trailers, and only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_is_kept_on_the_way_to_http2_backends() {
    bounded(async {
        let (address, mut seen) = h2_backend().await;
        let mut lb = TestBalancer::builder()
            .backend(address)
            .pool("http2", "true")
            .start()
            .await;
        let mut client = TestClient::connect_h2(lb.addr()).await;
        for (te, expected) in [(Some("trailers"), Some("trailers")), (None, None)] {
            let mut request = Request::post("http://grpc.example/pkg.Service/Call")
                .version(Version::HTTP_2)
                .header("content-type", "application/grpc");
            if let Some(te) = te {
                request = request.header("te", te);
            }
            let request = request.body(common::full("")).expect("valid request");
            let response = client.fetch(request).await.expect("through the proxy");
            assert_eq!(response.status, StatusCode::OK);
            let head = seen.recv().await.expect("the backend got the request");
            let te_seen = head.headers.get("te").map(|v| v.to_str().expect("ASCII"));
            assert_eq!(te_seen, expected);
        }
        let mut client = lb.client().await;
        let request = Request::get("/")
            .header("host", "grpc.example")
            .header("connection", "TE")
            .header("te", "gzip, trailers;q=1")
            .body(common::empty())
            .expect("valid request");
        assert_eq!(
            client.fetch(request).await.expect("h1").status,
            StatusCode::OK
        );
        let head = seen.recv().await.expect("the backend got the request");
        assert_eq!(head.headers["te"], "trailers");
        lb.stop().await;
    })
    .await;
}

/// `request_timeout` runs from the request sent whole on HTTP/2 backends too: an upload
/// trickled over three times the timeout reaches a backend that answers only once it has it
/// all, and gets its `200`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_an_http2_backend_trickled_past_request_timeout_arrives_whole() {
    use http_body_util::BodyExt;
    bounded(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service =
                    hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async {
                        let body = request.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(http::Response::new(common::full(
                            body.len().to_string(),
                        )))
                    });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
                );
            }
        });
        let mut lb = TestBalancer::builder()
            .backend(address)
            .pool("http2", "true")
            .pool("request_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let (body_tx, body) = common::channel_body();
        let request = Request::post("/upload")
            .header("host", common::client::TEST_HOST)
            .body(body)
            .expect("valid request");
        let exchange = tokio::spawn(async move { client.fetch(request).await });
        for _ in 0..10 {
            body_tx
                .send(bytes::Bytes::from_static(&[b'z'; 1024]))
                .await
                .expect("the body is being sent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(body_tx);
        let response = within(Duration::from_secs(5), "the upload's answer", exchange)
            .await
            .expect("client task")
            .expect("a response");
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.text(), "10240");
        lb.stop().await;
    })
    .await;
}
