//! Fulcrum's HTTP/1 server against hyper's: the same request bytes go to both, and the requests
//! each hands on must be the same ones, in the same order, for as long as both go on (where
//! fulcrum refuses framing hyper accepts, the stream ends there for fulcrum). A request that
//! started at another place in one of them would be a request smuggled past the other.

use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{End, replay};
use crate::testing::proptest_config;

/// A request as generated: head fields chosen to confuse framing, and a body written the way
/// `body` says, which need not be what the fields declare.
#[derive(Debug, Clone)]
struct Generated {
    method: &'static str,
    version: &'static str,
    newline: &'static str,
    fields: Vec<&'static str>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    None,
    /// Raw bytes (a Content-Length body, or bytes that look like another request).
    Raw(Vec<u8>),
    /// Chunks of these sizes, each line ending as given, then trailers.
    Chunked(Vec<(usize, &'static str)>, Vec<&'static str>),
}

/// Fields that decide or confuse framing, valid and not.
const FIELDS: &[&str] = &[
    "Host: a",
    "Content-Length: 0",
    "Content-Length: 3",
    "Content-Length: 5",
    "Content-Length: 05",
    "Content-Length: 3, 3",
    "Content-Length: 3, 4",
    "Content-Length: +3",
    "Content-Length:3",
    "Content-Length:\t3 ",
    "Content-Length : 3",
    "Content-Length: 99999999999999999999",
    "content-LENGTH: 3",
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: Chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding: identity",
    "Transfer-Encoding: chunked ",
    "Transfer-Encoding:chunked",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding: xchunked",
    " Transfer-Encoding: chunked",
    "Connection: close",
    "Expect: 100-continue",
    "Upgrade: websocket",
    "X-A: b",
];

fn generated(index: usize) -> impl Strategy<Value = Generated> {
    let body = prop_oneof![
        2 => Just(Body::None),
        2 => prop_oneof![
            prop::collection::vec(b'a'..=b'e', 0..8),
            Just(format!("GET /smuggled{index} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes()),
            Just(b"0\r\n\r\n".to_vec()),
        ]
        .prop_map(Body::Raw),
        3 => (
            prop::collection::vec(
                (0usize..20, prop::sample::select(vec!["\r\n", "\n", ";x=y\r\n", " \r\n", "\r\r\n"])),
                0..3,
            ),
            prop::collection::vec(prop::sample::select(vec!["X-T: 1", "Content-Length: 2"]), 0..2),
        )
            .prop_map(|(chunks, trailers)| Body::Chunked(chunks, trailers)),
    ];
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "HEAD"]),
        prop::sample::select(vec!["HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        prop::collection::vec(prop::sample::select(FIELDS), 0..4),
        body,
    )
        .prop_map(|(method, version, newline, fields, body)| Generated {
            method,
            version,
            newline,
            fields,
            body,
        })
}

impl Generated {
    fn render(&self, index: usize, out: &mut Vec<u8>) {
        let nl = self.newline;
        out.extend_from_slice(format!("{} /r{index} {}{nl}", self.method, self.version).as_bytes());
        for field in &self.fields {
            out.extend_from_slice(format!("{field}{nl}").as_bytes());
        }
        out.extend_from_slice(nl.as_bytes());
        match &self.body {
            Body::None => {}
            Body::Raw(bytes) => out.extend_from_slice(bytes),
            Body::Chunked(chunks, trailers) => {
                for (size, line_end) in chunks {
                    out.extend_from_slice(format!("{size:x}{line_end}").as_bytes());
                    out.extend(std::iter::repeat_n(b'z', *size));
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for trailer in trailers {
                    out.extend_from_slice(format!("{trailer}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

/// A pipeline of requests, rendered, with now and then one byte changed.
fn pipeline() -> impl Strategy<Value = Vec<u8>> {
    let requests = (0usize..4).prop_flat_map(|n| (0..n).map(generated).collect::<Vec<_>>());
    let damage = prop::option::weighted(
        0.3,
        (
            any::<prop::sample::Index>(),
            prop::sample::select(b" \t\r\n:0a,;".to_vec()),
        ),
    );
    (requests, damage).prop_map(|(requests, damage)| {
        let mut out = Vec::new();
        for (index, request) in requests.iter().enumerate() {
            request.render(index, &mut out);
        }
        if let (Some((at, byte)), false) = (damage, out.is_empty()) {
            let at = at.index(out.len());
            out[at] = byte;
        }
        out
    })
}

/// The request targets hyper's HTTP/1 server dispatches for `input`, in order.
fn hyper_view(input: &[u8]) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(input.len() + 64 * 1024);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        client_write
            .write_all(input)
            .await
            .expect("the whole input fits");
        client_write.shutdown().await.expect("end of input");
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            // Whatever hyper answers is not compared; reading it keeps hyper writing.
            let _ = client_read.read_to_end(&mut sink).await;
        });
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let record = Arc::clone(&record);
                async move {
                    let target = request.uri().to_string();
                    record.lock().expect("not poisoned").push(target);
                    // A body hyper cannot read to its end just ends the connection.
                    let _ = request.into_body().collect().await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        bytes::Bytes,
                    >::new(
                    )))
                }
            });
        // Half-close: the input's end must not stop hyper before the requests it buffered.
        let connection = hyper::server::conn::http1::Builder::new()
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        // A malformed stream is hyper's to refuse; only what it dispatched matters here.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), connection).await;
        drain.abort();
        seen.lock().expect("not poisoned").clone()
    })
}

proptest! {
    #![proptest_config(proptest_config(256))]

    /// Fulcrum's server and hyper's agree on where each request starts for as long as both go
    /// on: every request one of them served before either stopped is the same request in the
    /// other, and a stream fulcrum reads whole no matter how it was split.
    #[test]
    fn fulcrum_and_hyper_agree_on_request_boundaries(input in pipeline(), step in 1usize..16) {
        let ours = replay(&input, &[]);
        let cuts: Vec<usize> = (step..input.len()).step_by(step).collect();
        prop_assert_eq!(&replay(&input, &cuts), &ours, "split every {} bytes", step);
        let theirs = hyper_view(&input);
        let common = ours.targets.len().min(theirs.len());
        prop_assert_eq!(
            &ours.targets[..common],
            &theirs[..common],
            "{:?}",
            String::from_utf8_lossy(&input)
        );
    }
}

/// The harness itself: hyper's view of a clean pipeline is every request, and of a smuggling
/// attempt the request it took from the body; fulcrum refuses that attempt.
#[test]
fn the_harness_sees_what_hyper_dispatches() {
    let clean = b"GET /r0 HTTP/1.1\r\nHost: a\r\n\r\nPOST /r1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /r2 HTTP/1.0\r\n\r\n";
    assert_eq!(hyper_view(clean), ["/r0", "/r1", "/r2"]);
    assert_eq!(replay(clean, &[]).targets, ["/r0", "/r1", "/r2"]);
    let smuggled = b"POST /r0 HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n";
    assert_eq!(hyper_view(smuggled), ["/r0"]);
    let refused = replay(smuggled, &[]);
    assert!(refused.targets.is_empty());
    assert_eq!(refused.end, End::Refused(http::StatusCode::BAD_REQUEST));
}
