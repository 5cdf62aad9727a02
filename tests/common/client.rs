//! [`TestClient`]: one HTTP/1.1 or HTTP/2 client connection, and [`TestResponse`], a response
//! read to the end.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

use super::tcp::raw_connect;
use super::{TestBody, empty};

/// A response read to the end.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `x-served-by` header, if the response came from a [`TestBackend`].
    pub fn served_by(&self) -> Option<&str> {
        self.headers
            .get("x-served-by")
            .and_then(|value| value.to_str().ok())
    }

    /// Reads `response` to the end.
    pub async fn collect(response: Response<Incoming>) -> Result<TestResponse, hyper::Error> {
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<TestBody>),
    Http2(hyper::client::conn::http2::SendRequest<TestBody>),
}

/// One client connection; requests on it are sent one after another (keep-alive).
pub struct TestClient {
    sender: Sender,
    connection: JoinHandle<()>,
}

/// The `Host` the client helpers send unless told otherwise.
pub const TEST_HOST: &str = "fulcrum.test";

impl TestClient {
    /// Opens an HTTP/1.1 connection to `address`.
    pub async fn connect(address: SocketAddr) -> TestClient {
        let stream = raw_connect(address).await;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 client handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        TestClient {
            sender: Sender::Http1(sender),
            connection,
        }
    }

    /// Opens an HTTP/2 connection to `address` with prior knowledge (no upgrade).
    pub async fn connect_h2(address: SocketAddr) -> TestClient {
        let stream = raw_connect(address).await;
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 client handshake");
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        TestClient {
            sender: Sender::Http2(sender),
            connection,
        }
    }

    /// Sends `request` and returns the response head with its still-streaming body.
    pub async fn send(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
        }
    }

    /// Sends `request` and reads the whole response.
    pub async fn fetch(
        &mut self,
        request: Request<TestBody>,
    ) -> Result<TestResponse, hyper::Error> {
        let response = self.send(request).await?;
        TestResponse::collect(response).await
    }

    /// `GET path` with `Host: fulcrum.test`, read to the end.
    pub async fn get(&mut self, path: &str) -> Result<TestResponse, hyper::Error> {
        self.fetch(get(path)).await
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A `GET path` request with `Host: fulcrum.test` and an empty body.
pub fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, TEST_HOST)
        .body(empty())
        .expect("a valid GET request")
}
