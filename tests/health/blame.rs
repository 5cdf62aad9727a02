//! Who is blamed for what: a client that abandons, resets or garbles its upload, or takes its
//! time sending it, never counts against a backend.

use super::*;
use bytes::Bytes;
use common::backend::TestBackend;
use common::balancer::admin_get;
use common::channel_body;
use common::client::TEST_HOST;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Passive ejection on the first failure, of every backend: any blame shows at once.
const EJECT_AT_ONCE: &str = "{ consecutive_failures = 1, ejection_time = \"30s\", \
     max_ejection_time = \"30s\", max_ejected_percent = 100 }";

/// Asserts every backend of the balancer behind `admin` is healthy with no `last_error`, and
/// that `/metrics` counts no 5xx for `pool`.
async fn assert_nobody_blamed(admin: SocketAddr, pool: &str) {
    let status = admin_get(admin, "/status").await;
    let document: serde_json::Value = serde_json::from_str(&status.text()).expect("JSON status");
    let backends = document["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .find(|p| p["name"] == pool)
        .expect("the pool")["backends"]
        .as_array()
        .expect("backends")
        .clone();
    for backend in &backends {
        assert_eq!(backend["state"], "healthy", "{backend}");
        assert!(backend["last_error"].is_null(), "{backend}");
    }
    let metrics = admin_get(admin, "/metrics").await.text();
    let pool_label = format!("pool=\"{pool}\"");
    for line in metrics.lines().filter(|line| {
        line.starts_with("fulcrum_requests_total{")
            && line.contains(&pool_label)
            && line.contains("code_class=\"5xx\"")
    }) {
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a sample value");
        assert_eq!(value, 0.0, "{line}");
    }
}

/// Opens an upload of 1 MB to `/upload`, sends 4 KiB of it, waits `pause` and goes away.
async fn abandon_upload(address: SocketAddr, pause: Duration) {
    let mut stream = common::tcp::raw_connect(address).await;
    let head =
        format!("POST /upload HTTP/1.1\r\nHost: {TEST_HOST}\r\nContent-Length: 1000000\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream
        .write_all(&[b'x'; 4096])
        .await
        .expect("write some body");
    tokio::time::sleep(pause).await;
}

/// Opens 1,000 HTTP/2 streams, each with part of an upload, and resets every one of them; when
/// fulcrum sends GOAWAY for too many resets (as it should), on a new connection.
async fn reset_streams(address: SocketAddr) {
    async fn connect(address: SocketAddr) -> (h2::client::SendRequest<Bytes>, JoinHandle<()>) {
        let stream = common::tcp::raw_connect(address).await;
        let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        (client, driver)
    }
    let tasks: Vec<_> = (0..10)
        .map(|task| {
            tokio::spawn(async move {
                let (mut client, mut driver) = connect(address).await;
                let mut reset = 0;
                while reset < 100 {
                    client = match client.ready().await {
                        Ok(client) => client,
                        Err(_) => {
                            driver.abort();
                            (client, driver) = connect(address).await;
                            continue;
                        }
                    };
                    let request = Request::post(format!("http://{TEST_HOST}/upload"))
                        .body(())
                        .expect("request");
                    let Ok((_response, mut body)) = client.send_request(request, false) else {
                        continue;
                    };
                    if body
                        .send_data(Bytes::from_static(&[b'y'; 1024]), false)
                        .is_err()
                    {
                        continue;
                    }
                    if (task + reset) % 2 == 0 {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    body.send_reset(h2::Reason::CANCEL);
                    reset += 1;
                }
                driver.abort();
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("stream task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_and_reset_streams_blame_no_backend() {
    bounded(async {
        let backends = [
            TestBackend::spawn("a").await,
            TestBackend::spawn("b").await,
            TestBackend::spawn("c").await,
        ];
        let mut builder = TestBalancer::builder()
            .pool_name("abandoned")
            .pool("passive", EJECT_AT_ONCE);
        for backend in &backends {
            builder = builder.backend(backend.addr());
        }
        let (mut lb, admin) = builder.start_with_admin().await;
        let address = lb.addr();
        let uploads: Vec<_> = (0..8u64)
            .map(|worker| {
                tokio::spawn(async move {
                    for i in 0..25u64 {
                        // Some go before the backend has the head, most while the body streams.
                        abandon_upload(address, Duration::from_millis((worker + i) % 4 * 5)).await;
                    }
                })
            })
            .collect();
        for upload in uploads {
            upload.await.expect("upload worker");
        }
        reset_streams(address).await;
        let seen: usize = backends.iter().map(TestBackend::request_count).sum();
        assert!(seen > 100, "the uploads reached the backends: {seen}");
        // Let the proxy finish noticing the last ones.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_nobody_blamed(admin, "abandoned").await;
        let mut client = lb.client().await;
        for i in 0..3 {
            let response = client
                .get(&format!("/after/{i}"))
                .await
                .expect("a response");
            assert_eq!(response.status, StatusCode::OK);
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_trickled_past_request_timeout_arrives_whole() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .pool("request_timeout", "\"300ms\"")
            .start()
            .await;
        let mut client = lb.client().await;
        let (body_tx, body) = channel_body();
        let request = Request::post("/upload")
            .header("host", TEST_HOST)
            .body(body)
            .expect("valid request");
        let exchange = tokio::spawn(async move { client.fetch(request).await });
        let started = Instant::now();
        for _ in 0..10 {
            body_tx
                .send(Bytes::from_static(&[b'z'; 1024]))
                .await
                .expect("the body is being sent");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(body_tx);
        let response = within(Duration::from_secs(5), "the upload's answer", exchange)
            .await
            .expect("client task")
            .expect("a response");
        assert!(started.elapsed() >= Duration::from_millis(900));
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_eq!(response.text(), "10240");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_gets_400_and_blames_no_backend() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .pool_name("malformed")
            .backend(backend.addr())
            .pool("passive", EJECT_AT_ONCE)
            .start_with_admin()
            .await;
        for bad_size in ["zz", "fffffffffffffffffffff"] {
            let mut stream = common::tcp::raw_connect(lb.addr()).await;
            let request = format!(
                "POST /upload HTTP/1.1\r\nHost: {TEST_HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 5\r\nhello\r\n{bad_size}\r\n"
            );
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            within(
                Duration::from_secs(5),
                "the answer",
                stream.read_to_end(&mut answer),
            )
            .await
            .expect("read");
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        }
        assert_nobody_blamed(admin, "malformed").await;
        lb.stop().await;
    })
    .await;
}

/// Sends `head` and 4 KiB of body on a raw connection, stops sending, and returns what fulcrum
/// answers (read to the end of the connection) and how long that took.
async fn stall_after(address: SocketAddr, head: &str) -> (String, Duration) {
    let mut stream = common::tcp::raw_connect(address).await;
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&[b'x'; 4096]).await.expect("write body");
    let started = Instant::now();
    let mut answer = Vec::new();
    within(
        Duration::from_secs(10),
        "the answer to a stalled upload",
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("read");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_gets_408_after_idle_timeout_and_blames_no_backend() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut lb, admin) = TestBalancer::builder()
            .pool_name("stalled")
            .backend(backend.addr())
            .listener("idle_timeout", "\"1s\"")
            .pool("passive", EJECT_AT_ONCE)
            .start_with_admin()
            .await;
        let heads = [
            format!("POST /upload HTTP/1.1\r\nHost: {TEST_HOST}\r\nContent-Length: 100000\r\n\r\n"),
            format!(
                "POST /upload HTTP/1.1\r\nHost: {TEST_HOST}\r\nTransfer-Encoding: chunked\r\n\r\n\
                 1000\r\n"
            ),
        ];
        for head in &heads {
            let (answer, waited) = stall_after(lb.addr(), head).await;
            assert!(
                answer.starts_with("HTTP/1.1 408 "),
                "a stalled upload gets 408 before the connection closes: {answer:?}"
            );
            assert!(waited >= Duration::from_millis(900), "{waited:?}");
        }
        assert!(
            backend.request_count() >= 1,
            "the uploads reached the backend"
        );
        assert_nobody_blamed(admin, "stalled").await;
        let metrics = admin_get(admin, "/metrics").await.text();
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("fulcrum_requests_total{")
                    && line.contains("code_class=\"client_stalled\"")
                    && line.ends_with(" 2")),
            "both stalls counted as the client's: {metrics}"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_the_backend_stops_reading_gets_504_not_408() {
    bounded(async {
        // A backend that takes the connection and never reads from it.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let backend_address = silent.local_addr().expect("address");
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let mut lb = TestBalancer::builder()
            .backend(backend_address)
            .listener("idle_timeout", "\"1s\"")
            .start()
            .await;
        let mut stream = common::tcp::raw_connect(lb.addr()).await;
        let size = 256 * 1024 * 1024;
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: {TEST_HOST}\r\nContent-Length: {size}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write head");
        let (mut reader, mut writer) = stream.into_split();
        // Keeps sending as fast as the chain takes it: fulcrum, not the client, waits.
        let sender = tokio::spawn(async move {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..(size / chunk.len()) {
                if writer.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        });
        let mut answer = Vec::new();
        within(
            Duration::from_secs(10),
            "the answer",
            reader.read_to_end(&mut answer),
        )
        .await
        .expect("read");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 504 "), "{answer:?}");
        sender.abort();
        holder.abort();
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_upload_gets_408_on_its_stream() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let mut lb = TestBalancer::builder()
            .backend(backend.addr())
            .listener("idle_timeout", "\"1s\"")
            .start()
            .await;
        let stream = common::tcp::raw_connect(lb.addr()).await;
        let (client, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut client = client.ready().await.expect("ready");
        let request = Request::post(format!("http://{TEST_HOST}/upload"))
            .body(())
            .expect("request");
        let (response, mut body) = client.send_request(request, false).expect("stream");
        body.send_data(Bytes::from_static(&[b'y'; 1024]), false)
            .expect("some body");
        let started = Instant::now();
        let response = within(Duration::from_secs(10), "the stream's answer", response)
            .await
            .expect("a response");
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() >= Duration::from_millis(900));
        driver.abort();
        lb.stop().await;
    })
    .await;
}
