//! The server run over recorded bytes, without sockets: what it makes of a request stream.
//! The fuzz target and the framing tests drive it to check that the verdict on a stream does
//! not depend on how its bytes were split across reads, and that requests start where another
//! parser (hyper's) says they do.

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Ended, Server};
use crate::proxy::activity::Activity;

/// What the server made of a request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Replayed {
    /// The target of every request handed to the handler, in order.
    pub(crate) targets: Vec<String>,
    /// How the stream ended.
    pub(crate) end: End,
}

/// How a replayed stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Every request was served and the stream ended between two of them.
    Clean,
    /// A head was refused with this status.
    Refused(StatusCode),
    /// The last request's body could not be read (broken framing, or the stream ended inside it).
    BodyFailed,
    /// The stream ended inside a head, or the connection closed after a response.
    Closed,
}

/// Largest request head the replay accepts.
const MAX_HEAD: usize = 64 * 1024;

/// Serves `input`, read in pieces that end at `cuts` (offsets; any order; out-of-range ones
/// ignored). The handler reads every body to its end and answers `200`, so each request
/// ends where the server's decoder says its body does.
pub(crate) fn replay(input: &[u8], cuts: &[usize]) -> Replayed {
    replay_with_limit(input, cuts, MAX_HEAD)
}

/// [`replay`] with a head limit of `max_head` bytes.
pub(crate) fn replay_with_limit(input: &[u8], cuts: &[usize], max_head: usize) -> Replayed {
    let mut cuts: Vec<usize> = cuts
        .iter()
        .copied()
        .filter(|&cut| cut > 0 && cut < input.len())
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut io = Recorded { input, cuts, at: 0 };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime without IO or timers always builds");
    runtime.block_on(async {
        let activity = Activity::default();
        let stop = AtomicBool::new(false);
        let mut targets = Vec::new();
        let body_failed = Cell::new(false);
        let refused = Cell::new(None);
        let mut server = Server::new(&mut io, Bytes::new(), max_head, &activity, true);
        let ended = server
            .serve(
                &stop,
                |request| {
                    targets.push(request.uri().to_string());
                    let body_failed = &body_failed;
                    async move {
                        let status = if request.into_body().collect().await.is_ok() {
                            StatusCode::OK
                        } else {
                            body_failed.set(true);
                            StatusCode::BAD_REQUEST
                        };
                        Ok::<_, Infallible>(status_only(status))
                    }
                },
                |err| {
                    refused.set(Some(err.status()));
                    status_only(err.status())
                },
            )
            .await;
        let unread = server.into_unread();
        let end = match (refused.get(), body_failed.get(), ended) {
            (Some(status), _, _) => End::Refused(status),
            (None, true, _) => End::BodyFailed,
            (None, false, Ok(Ended::Close)) if unread.is_empty() && io.at == input.len() => {
                End::Clean
            }
            _ => End::Closed,
        };
        Replayed { targets, end }
    })
}

/// A response of `status` with no body.
fn status_only(status: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = status;
    response
}

/// The recorded bytes as a connection: each read returns the bytes up to the next cut, then
/// the end of the stream; whatever is written is dropped.
struct Recorded<'a> {
    input: &'a [u8],
    cuts: Vec<usize>,
    at: usize,
}

impl AsyncRead for Recorded<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let at = self.at;
        let end = self
            .cuts
            .iter()
            .copied()
            .find(|&cut| cut > at)
            .unwrap_or(self.input.len());
        let n = (end - at).min(buf.remaining());
        buf.put_slice(&self.input[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Recorded<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

    /// Head limit used by the table.
    const LIMIT: usize = 1024;

    /// A clean GET.
    const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    /// Serves `input` whole, in pieces of several sizes and split in two at every point, and
    /// checks every run ends with `requests` requests served and as `end` says.
    fn run(name: &str, input: &[u8], requests: usize, end: End) {
        let check = |how: &str, cuts: &[usize]| {
            let replayed = replay_with_limit(input, cuts, LIMIT);
            assert_eq!(
                (replayed.targets.len(), replayed.end),
                (requests, end),
                "{name} ({how}): served {:?}",
                replayed.targets
            );
        };
        check("whole", &[]);
        for piece in [1, 2, 3, 7, 64] {
            let cuts: Vec<usize> = (piece..input.len()).step_by(piece).collect();
            check(&format!("pieces of {piece}"), &cuts);
        }
        for at in 1..input.len() {
            check(&format!("split at {at}"), &[at]);
        }
    }

    #[test]
    fn framing_is_judged_the_same_however_the_stream_is_split() {
        let smuggled = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let refused = |status: u16| End::Refused(StatusCode::from_u16(status).expect("a status"));
        let cases: Vec<(&str, String, usize, End)> = vec![
            ("clean GET", GET.into(), 1, End::Clean),
            (
                "LF-only line endings",
                "GET / HTTP/1.1\nHost: a\n\n".into(),
                1,
                End::Clean,
            ),
            (
                "HTTP/1.0 GET",
                "GET / HTTP/1.0\r\n\r\n".into(),
                1,
                End::Clean,
            ),
            (
                "POST with Content-Length, then GET",
                format!("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello{GET}"),
                2,
                End::Clean,
            ),
            (
                "Content-Length: 0",
                format!("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n{GET}"),
                2,
                End::Clean,
            ),
            (
                "OWS around Content-Length value",
                format!("POST / HTTP/1.1\r\nContent-Length: \t2 \r\n\r\nhi{GET}"),
                2,
                End::Clean,
            ),
            (
                "chunked with extensions and trailers",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5;name=val\r\nhello\r\nA ; x=\"y\"\r\n0123456789\r\n\
                     0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "chunked without trailers, upper-case hex size",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1F\r\n{}\r\n0\r\n\r\n{GET}",
                    "x".repeat(31)
                ),
                2,
                End::Clean,
            ),
            (
                "pipelined, second is CL+TE",
                format!("{GET}{smuggled}{GET}"),
                1,
                refused(400),
            ),
            (
                "first is CL+TE",
                format!("{smuggled}{GET}"),
                0,
                refused(400),
            ),
            (
                "a malformed line the client's close cuts short",
                "GET / HTTP/1.1\r\n\r:".into(),
                0,
                refused(400),
            ),
            (
                "TE before CL",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "CL: 0 with TE",
                "POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "TE gzip, chunked",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "TE gzip then TE chunked fields",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "TE chunked, gzip",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".into(),
                0,
                refused(501),
            ),
            (
                "TE chunked then TE gzip fields",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
                    .into(),
                0,
                refused(501),
            ),
            (
                "TE in HTTP/1.0",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "duplicate equal CLs",
                format!(
                    "POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "duplicate differing CLs",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
                0,
                refused(400),
            ),
            (
                "CL list",
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc".into(),
                0,
                refused(400),
            ),
            (
                "CL signed",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc".into(),
                0,
                refused(400),
            ),
            (
                "CL empty",
                "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "CL overflowing u64",
                "POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "mixed-case CL+TE names and value",
                "POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\nTRANSFER-encoding: CHUNKED\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "mixed-case TE alone",
                format!("POST / HTTP/1.1\r\ntRaNsFeR-eNcOdInG: ChUnKeD\r\n\r\n0\r\n\r\n{GET}"),
                2,
                End::Clean,
            ),
            (
                "field names that merely contain the words",
                format!(
                    "POST / HTTP/1.1\r\nX-Content-Length: 9\r\nX-Transfer-Encoding: gzip\r\n\r\n{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "smuggling text inside a CL body",
                format!(
                    "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{smuggled}{GET}",
                    smuggled.len()
                ),
                2,
                End::Clean,
            ),
            (
                "smuggling text inside chunk data and trailer",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n\
                     0\r\nContent-Length: 7\r\n\r\n{GET}",
                    smuggled.len()
                ),
                2,
                End::Clean,
            ),
            (
                "leading empty lines",
                format!(
                    "\r\n\r\n\n{GET}\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n{GET}"
                ),
                3,
                End::Clean,
            ),
            (
                "an HTTP/2 preface is not HTTP/1",
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".into(),
                0,
                refused(505),
            ),
            (
                "garbage request line",
                "HELLO\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "unknown version",
                "GET / HTTP/1.2\r\n\r\n".into(),
                0,
                refused(505),
            ),
            (
                "double space in request line",
                "GET  / HTTP/1.1\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "field without colon",
                "GET / HTTP/1.1\r\nHost\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "whitespace before colon",
                "POST / HTTP/1.1\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .into(),
                0,
                refused(400),
            ),
            (
                "obs-fold",
                "GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n".into(),
                0,
                refused(400),
            ),
            (
                "bare CR before request line",
                format!("\r{GET}"),
                0,
                refused(400),
            ),
            (
                "LF-only chunk-size line",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".into(),
                1,
                End::BodyFailed,
            ),
            (
                "chunk data not followed by CRLF",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n".into(),
                1,
                End::BodyFailed,
            ),
            (
                "chunk size overflowing u64",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n".into(),
                1,
                End::BodyFailed,
            ),
            (
                "the stream ends inside a body",
                "POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc".into(),
                1,
                End::BodyFailed,
            ),
            (
                "the stream ends inside a head",
                format!("{GET}GET / HTTP/1.1\r\nHo"),
                1,
                End::Closed,
            ),
            (
                "Connection: close ends the exchanges",
                format!("GET / HTTP/1.1\r\nConnection: close\r\n\r\n{GET}"),
                1,
                End::Closed,
            ),
            (
                "upgrade request not switched, then a plain request",
                format!(
                    "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{GET}"
                ),
                2,
                End::Clean,
            ),
            (
                "an upgrade request does not switch the check off",
                format!("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n{smuggled}"),
                1,
                refused(400),
            ),
            (
                "head of exactly the limit",
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(LIMIT - 23)),
                1,
                End::Clean,
            ),
            (
                "oversized head",
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(LIMIT - 22)),
                0,
                refused(431),
            ),
            (
                "oversized head hiding CL+TE",
                format!(
                    "POST / HTTP/1.1\r\nX: {}\r\n{}",
                    "a".repeat(LIMIT),
                    &smuggled[16..]
                ),
                0,
                refused(431),
            ),
            (
                "oversized second head",
                format!(
                    "{GET}GET / HTTP/1.1\r\nX: {}\r\n\r\n{smuggled}",
                    "a".repeat(LIMIT)
                ),
                1,
                refused(431),
            ),
        ];
        for (name, input, requests, end) in &cases {
            run(name, input.as_bytes(), *requests, *end);
        }
    }

    #[test]
    fn requests_are_served_in_order_with_their_targets() {
        let input = b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c?q HTTP/1.1\r\n\r\n";
        let replayed = replay(input, &[]);
        assert_eq!(replayed.targets, ["/a", "/b", "/c?q"]);
        assert_eq!(replayed.end, End::Clean);
    }
}
