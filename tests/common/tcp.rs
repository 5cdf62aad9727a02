//! Raw TCP: bounded connects, byte-level exchanges for requests hyper's client would refuse to
//! send, clients left in a listener's backlog, and ports nothing listens on.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::client::TEST_HOST;
use super::within;

/// The next connection `listener` accepts (a failed accept is skipped), or `None` once `stop`
/// is cancelled: the accept loop of the tests' own servers.
pub async fn accept_until(listener: &TcpListener, stop: &CancellationToken) -> Option<TcpStream> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    return Some(stream);
                }
            }
        }
    }
}

/// Opens a raw TCP connection to `address`, failing the test if the connect takes over 5 s;
/// TCP_NODELAY is set so each write goes out as the test wrote it.
pub async fn raw_connect(address: SocketAddr) -> TcpStream {
    let stream = within(
        Duration::from_secs(5),
        "a TCP connect",
        TcpStream::connect(address),
    )
    .await
    .unwrap_or_else(|err| panic!("connect to {address}: {err}"));
    stream.set_nodelay(true).expect("set TCP_NODELAY");
    stream
}

/// Writes `bytes` on a fresh TCP connection and returns everything read back until the peer
/// closes the connection or `limit` passes (whichever comes first), as lossy text.
pub async fn raw_exchange(address: SocketAddr, bytes: &[u8], limit: Duration) -> String {
    let mut stream = raw_connect(address).await;
    stream.write_all(bytes).await.expect("write raw request");
    let mut received = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// A client left in a listener's accept backlog: it connects (the kernel accepts), sends
/// `GET path` with `Connection: close`, and this asserts nothing answers for 300 ms. Read
/// its answer later with [`backlogged_response`].
pub async fn backlogged_request(address: SocketAddr, path: &str) -> TcpStream {
    let mut stream = raw_connect(address).await;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {TEST_HOST}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write a request");
    let mut buffer = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "the backlogged client was served: {early:?}"
    );
    stream
}

/// The whole response to a [`backlogged_request`] once the listener takes it (bounded), as
/// lossy text.
pub async fn backlogged_response(mut stream: TcpStream) -> String {
    let mut response = Vec::new();
    within(
        Duration::from_secs(5),
        "the backlogged client's response",
        stream.read_to_end(&mut response),
    )
    .await
    .expect("read the response");
    String::from_utf8_lossy(&response).into_owned()
}

/// The status code of the first status line in a raw response, if any.
pub fn raw_status(response: &str) -> Option<u16> {
    let line = response.lines().next()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// An address on which nothing listens: bound to `127.0.0.1:0`, then released.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a throwaway listener");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}
