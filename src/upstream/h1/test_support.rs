//! The tests' scripted backend and one exchange with it, shared by every file of the client.

use std::time::Duration;

use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Body, Connection, Error, HeadWait, SendError, Stream};
use crate::http::headers::test_forwarding as forwarding;
use crate::io::socket::Socket;
use crate::upstream::request_body::{BoxedRequest, RequestBody};

/// A scripted backend on 127.0.0.1:0: for each reply, reads one request head and writes
/// the reply; then closes the connection when `close` is set, else holds it open. Sends
/// back every request head it read.
pub(super) async fn backend(
    replies: Vec<&'static [u8]>,
    close: bool,
) -> (std::net::SocketAddr, oneshot::Receiver<Vec<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let (heads_tx, heads) = oneshot::channel();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut seen = Vec::new();
        let mut pending = Vec::new();
        for reply in replies {
            while memchr::memmem::find(&pending, b"\r\n\r\n").is_none() {
                let mut chunk = [0u8; 4096];
                let n = socket.read(&mut chunk).await.expect("read request");
                assert!(n > 0, "client closed before sending a request");
                pending.extend_from_slice(&chunk[..n]);
            }
            let end = memchr::memmem::find(&pending, b"\r\n\r\n").expect("head end") + 4;
            seen.push(pending.drain(..end).collect());
            socket.write_all(reply).await.expect("write reply");
        }
        let _ = heads_tx.send(seen);
        if !close {
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        }
    });
    (addr, heads)
}

/// A request head as sent for a client request with `lines` (`host: app.test`).
pub(super) fn sent(lines: &str) -> Vec<u8> {
    format!(
        "{lines}x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: http\r\n\
         x-forwarded-host: app.test\r\nvia: 1.1 fulcrum\r\n\r\n"
    )
    .into_bytes()
}

pub(super) async fn connect(addr: std::net::SocketAddr) -> Box<Connection> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    Connection::new(Stream::Tcp(Socket::new(stream)))
}

pub(super) fn request(method: Method, target: &str) -> BoxedRequest {
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "app.test")
        .body(RequestBody::Empty)
        .expect("valid request");
    Box::new(request)
}

pub(super) async fn send(
    conn: Box<Connection>,
    request: BoxedRequest,
) -> Result<Response<Body>, Error> {
    let wait = HeadWait {
        deadline: Instant::now() + Duration::from_secs(5),
        after_body: Duration::from_secs(5),
    };
    match conn.send(request, &forwarding(), wait).await {
        Ok(response) => Ok(response),
        Err(SendError::NotSent(_, err) | SendError::Failed(err, _)) => Err(err),
    }
}

/// The body's data and trailers, or its error.
pub(super) async fn read(body: &mut Body) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((data, trailers))
}
