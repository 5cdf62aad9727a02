//! End-to-end tests of the HTTP proxy: real backends, a real fulcrum server, real clients.

#[path = "../common/mod.rs"]
mod common;

mod balancing;
mod connections;
mod hashing;
mod http2;
mod http2_abuse;
mod messages;
mod parking;
mod routing;
mod semantics;
mod streaming;

use std::time::{Duration, Instant};

use common::backend::{Behaviour, TestBackend};
use common::balancer::TestBalancer;
use common::client::{TestClient, get};
use common::tcp::{raw_connect, raw_exchange, raw_status};
use common::{bounded, within};
use http::{Request, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a raw exchange waits for the proxy to answer and close.
const RAW_LIMIT: Duration = Duration::from_secs(3);

/// Asserts each of `fields` is sent as exactly one line with exactly that value.
fn assert_single_fields(headers: &http::HeaderMap, fields: &[(&str, &str)]) {
    for (name, value) in fields {
        let values: Vec<_> = headers.get_all(*name).iter().collect();
        assert_eq!(values, [value], "{name}");
    }
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
