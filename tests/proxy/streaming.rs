//! Bodies stream through the proxy in both directions, chunk by chunk, without buffering.

use super::*;

use bytes::Bytes;
use common::channel_body;
use http_body_util::BodyExt;

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
            .header("host", common::client::TEST_HOST)
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
            .header("host", common::client::TEST_HOST)
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
