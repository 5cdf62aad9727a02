//! Detection of ambiguous HTTP/1.x request framing on a client connection.
//!
//! hyper 1.x's HTTP/1 server accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding`: it drops `Content-Length`, reads the body as chunked and closes
//! the connection after the response. RFC 9112 §6.1 lets a server reject such a request,
//! and §6.3 (item 3) says it "might indicate an attempt to perform request smuggling ...
//! and ought to be handled as an error". Our spec requires a 400 and no forwarding, but
//! hyper gives the service no way to see the original framing headers.
//!
//! So [`ScannedIo`] wraps the client socket and feeds every byte hyper reads into a
//! [`HeadScanner`], which follows the request stream's message boundaries (RFC 9112 §6,
//! §7.1) and judges each request head. The first request index (0-based, per connection)
//! with ambiguous framing is recorded in a shared [`FramingCheck`], which the request
//! handler consults once per request via [`FramingCheck::next_request_is_bad`].
//!
//! Requests with `Upgrade` or method `CONNECT` do not stop the scan. If hyper switches
//! protocols it dispatches no further requests on the connection, so nothing the scanner
//! later concludes from the tunnelled bytes is ever consulted; if it does not (the
//! response was not 101 / 2xx), more HTTP/1 requests follow and must still be checked.
//! Stopping there would let a client switch the check off with a dummy `Upgrade` field.
//!
//! The scanner never blocks or rejects anything itself. Whenever it cannot follow the
//! stream (unparsable bytes, an oversized head, HTTP/2) it stops looking for good and
//! leaves the connection to hyper, which rejects garbage on its own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::activity::Activity;
use crate::http::wire::{content_length, hex_digit};

/// `FramingCheck::first_bad` value meaning "no request was flagged".
const NO_BAD_REQUEST: u32 = u32::MAX;

/// Incremental scanner of the HTTP/1.x request byte stream of one client connection.
///
/// Feed it the bytes read from the client, split anywhere; it reports the index of the
/// first request whose head has ambiguous framing (see [`judge`]) and then stops.
#[derive(Debug)]
pub(crate) struct HeadScanner {
    /// Where in the message stream the next byte belongs.
    state: State,
    /// The head being accumulated (only a head that arrives in pieces); released once complete.
    head: Vec<u8>,
    /// Largest head accepted before giving up (should be at least hyper's read-buffer
    /// limit, or a client could pad its head past it to evade the check).
    max_head_bytes: usize,
    /// 0-based index of the request whose head comes next.
    index: u32,
}

/// Position of a [`HeadScanner`] in the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a request line; empty lines before it are ignored (RFC 9112 §2.2).
    Idle,
    /// Saw a CR where a request line was expected; only LF may follow.
    IdleCr,
    /// Accumulating a request head in `head`; the current line starts at `line_start`.
    Head {
        /// Offset in `head` of the line being read.
        line_start: usize,
    },
    /// Skipping a `Content-Length` body (RFC 9112 §6.2); `remaining` is never zero.
    Body {
        /// Body bytes still to come.
        remaining: u64,
    },
    /// Inside a chunked body (RFC 9112 §7.1).
    Chunked(Chunk),
    /// Stopped looking for good: the stream could not be followed, is not HTTP/1.x, or
    /// a verdict was already given. Never itself a verdict of "bad".
    Passthrough,
}

/// Position inside a chunked body, mirroring hyper's own decoder (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting the first hex digit of a chunk-size.
    Start,
    /// Reading chunk-size hex digits (value so far).
    Size(u64),
    /// Whitespace after the chunk-size, tolerated as hyper does.
    SizeWs(u64),
    /// Skipping a chunk extension (`;name=value`) up to the CR.
    Ext(u64),
    /// Expecting the LF ending a chunk-size line.
    SizeLf(u64),
    /// Skipping chunk data; the count of remaining bytes is never zero.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk or a trailer field: a trailer line or the final CRLF follows.
    LineStart,
    /// Skipping a trailer field line up to its CR (RFC 9112 §7.1.2).
    Trailer,
    /// Expecting the LF ending a trailer field line.
    TrailerLf,
    /// Expecting the LF of the CRLF that ends the chunked body.
    EndLf,
}

/// Outcome of feeding one byte to a [`Chunk`] state.
enum ChunkStep {
    /// Still inside the chunked body.
    Continue(Chunk),
    /// The chunked body (including trailers) is complete.
    End,
    /// The bytes do not follow the chunked syntax.
    Invalid,
}

/// What a complete request head says about the message body (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// No body (item 7): the next request head follows directly.
    NoBody,
    /// A body of this many bytes, never zero (item 6).
    Length(u64),
    /// A chunked body (item 3).
    Chunked,
    /// Ambiguous or invalid framing (items 3 to 5, and §6.1 for HTTP/1.0).
    Ambiguous,
    /// Not a parsable HTTP/1.x request head (including the HTTP/2 preface).
    Unknown,
}

impl HeadScanner {
    /// Creates a scanner for a new connection; heads longer than `max_head_bytes`
    /// (request line through the empty line) make it give up, see [`State::Passthrough`].
    pub(crate) fn new(max_head_bytes: usize) -> Self {
        Self {
            state: State::Idle,
            head: Vec::new(),
            max_head_bytes,
            index: 0,
        }
    }

    /// Feeds the next bytes read from the client; returns the index of a request whose
    /// head has ambiguous framing. That happens at most once: the scanner stops after it,
    /// since every later request on the connection is to be rejected as well.
    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Option<u32> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                State::Passthrough => return None,
                State::Idle => match byte {
                    b'\r' => self.state = State::IdleCr,
                    b'\n' => {}
                    _ => {
                        // The request line starts with this byte: keep it.
                        self.state = State::Head { line_start: 0 };
                        continue;
                    }
                },
                State::IdleCr => {
                    self.state = if byte == b'\n' {
                        State::Idle
                    } else {
                        State::Passthrough
                    };
                }
                State::Head { line_start } => {
                    // The usual case: the whole head arrived in this read. Judge it in place,
                    // finding its end on the way.
                    let whole = if self.head.is_empty() {
                        judge(bytes)
                    } else {
                        None
                    };
                    if let Some((end, verdict)) = whole {
                        if end > self.max_head_bytes {
                            self.state = State::Passthrough;
                            return None;
                        }
                        let bad = self.finish_head(verdict);
                        if bad.is_some() {
                            return bad;
                        }
                        bytes = bytes.get(end..).unwrap_or_default();
                        continue;
                    }
                    let (used, bad) = self.scan_head(bytes, line_start);
                    if bad.is_some() {
                        return bad;
                    }
                    bytes = bytes.get(used..).unwrap_or_default();
                    continue;
                }
                State::Body { remaining } => {
                    let used = skip(&mut bytes, remaining);
                    self.state = match remaining - used {
                        0 => State::Idle,
                        remaining => State::Body { remaining },
                    };
                    continue;
                }
                State::Chunked(Chunk::Data(remaining)) => {
                    let used = skip(&mut bytes, remaining);
                    self.state = State::Chunked(match remaining - used {
                        0 => Chunk::DataCr,
                        remaining => Chunk::Data(remaining),
                    });
                    continue;
                }
                State::Chunked(chunk) => {
                    self.state = match chunk.step(byte) {
                        ChunkStep::Continue(next) => State::Chunked(next),
                        ChunkStep::End => State::Idle,
                        ChunkStep::Invalid => State::Passthrough,
                    };
                }
            }
            bytes = rest;
        }
        None
    }

    /// Which request head is incomplete, for the header-read timeout: `index + 1` (never 0,
    /// different for each head) while a head is partly read or the first one is awaited, 0
    /// otherwise (between requests, in a body, or no longer following the stream).
    pub(crate) fn awaiting_head(&self) -> u32 {
        match self.state {
            State::Head { .. } => self.index % u32::MAX + 1,
            State::Idle | State::IdleCr if self.index == 0 => 1,
            _ => 0,
        }
    }

    /// Appends `bytes` up to and including the next LF to the head; returns how many
    /// bytes were used and, if that completed an ambiguous head, its request index.
    fn scan_head(&mut self, bytes: &[u8], line_start: usize) -> (usize, Option<u32>) {
        let (piece, line_ended) = match memchr::memchr(b'\n', bytes) {
            Some(lf) => (bytes.split_at(lf + 1).0, true),
            None => (bytes, false),
        };
        if self.head.len().saturating_add(piece.len()) > self.max_head_bytes {
            self.state = State::Passthrough;
            return (bytes.len(), None);
        }
        self.head.extend_from_slice(piece);
        if !line_ended {
            return (piece.len(), None);
        }
        let line = self.head.get(line_start..).unwrap_or_default();
        if line == b"\n" || line == b"\r\n" {
            // Taken, not kept: a connection that idles (or is parked) after a head that came
            // in pieces should not hold a buffer of that head's size.
            let head = std::mem::take(&mut self.head);
            let verdict = judge(&head).map_or(Verdict::Unknown, |(_, verdict)| verdict);
            let bad = self.finish_head(verdict);
            (piece.len(), bad)
        } else {
            self.state = State::Head {
                line_start: self.head.len(),
            };
            (piece.len(), None)
        }
    }

    /// Moves on to the body of the head just judged `verdict`, and returns the request's
    /// index if its framing is ambiguous.
    fn finish_head(&mut self, verdict: Verdict) -> Option<u32> {
        // Index `u32::MAX` cannot be reported (it means "none"), so stop before it.
        let verdict = if self.index == NO_BAD_REQUEST {
            Verdict::Unknown
        } else {
            verdict
        };
        let index = self.index;
        self.index = self.index.saturating_add(1);
        self.state = match verdict {
            Verdict::NoBody => State::Idle,
            Verdict::Length(remaining) => State::Body { remaining },
            Verdict::Chunked => State::Chunked(Chunk::Start),
            Verdict::Unknown => State::Passthrough,
            Verdict::Ambiguous => {
                self.state = State::Passthrough;
                return Some(index);
            }
        };
        None
    }
}

/// The complete lines at the start of some bytes, without their CRLF or LF; `end` is where
/// the bytes after the last line returned start.
struct Lines<'a> {
    bytes: &'a [u8],
    end: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.bytes.get(self.end..)?;
        let lf = memchr::memchr(b'\n', rest)?;
        let line = rest.get(..lf)?;
        self.end += lf + 1;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

/// Advances `bytes` past at most `limit` bytes and returns how many were skipped.
fn skip(bytes: &mut &[u8], limit: u64) -> u64 {
    let n = usize::try_from(limit).map_or(bytes.len(), |limit| limit.min(bytes.len()));
    *bytes = bytes.get(n..).unwrap_or_default();
    n as u64
}

impl Chunk {
    /// Consumes one byte of chunked framing (RFC 9112 §7.1); LF alone is not accepted
    /// as a line ending here, exactly as in hyper's decoder.
    fn step(self, byte: u8) -> ChunkStep {
        let next = match (self, byte) {
            (Self::Start, _) => match hex_digit(byte) {
                Some(digit) => Self::Size(digit),
                None => return ChunkStep::Invalid,
            },
            (Self::Size(size) | Self::SizeWs(size), b' ' | b'\t') => Self::SizeWs(size),
            (Self::Size(size) | Self::SizeWs(size), b';') => Self::Ext(size),
            (Self::Size(size) | Self::SizeWs(size) | Self::Ext(size), b'\r') => Self::SizeLf(size),
            (Self::Size(size), _) => {
                match hex_digit(byte).and_then(|d| size.checked_mul(16)?.checked_add(d)) {
                    Some(size) => Self::Size(size),
                    None => return ChunkStep::Invalid,
                }
            }
            (Self::Ext(_), b'\n') => return ChunkStep::Invalid,
            (Self::Ext(size), _) => Self::Ext(size),
            (Self::SizeLf(0), b'\n') => Self::LineStart,
            (Self::SizeLf(size), b'\n') => Self::Data(size),
            (Self::DataCr, b'\r') => Self::DataLf,
            (Self::DataLf, b'\n') => Self::Start,
            (Self::LineStart, b'\r') => Self::EndLf,
            (Self::Trailer, b'\r') => Self::TrailerLf,
            (Self::LineStart | Self::Trailer, _) => Self::Trailer,
            (Self::TrailerLf, b'\n') => Self::LineStart,
            (Self::EndLf, b'\n') => return ChunkStep::End,
            // `Data` never gets here: `HeadScanner::feed` skips chunk data by length.
            (
                Self::SizeWs(_)
                | Self::SizeLf(_)
                | Self::Data(_)
                | Self::DataCr
                | Self::DataLf
                | Self::TrailerLf
                | Self::EndLf,
                _,
            ) => return ChunkStep::Invalid,
        };
        ChunkStep::Continue(next)
    }
}

/// Finds the end of the request head at the start of `bytes` (request line, fields, empty
/// line) and judges its framing per RFC 9112 §6, in one pass over its lines; `None` while the
/// head is incomplete.
///
/// Ambiguous: `Content-Length` together with `Transfer-Encoding` (§6.3 item 3), a final
/// coding other than `chunked` (item 4), an invalid or conflicting `Content-Length` (item 5,
/// which includes lists like `5, 5` that RFC 9110 §8.6 allows rejecting), or any
/// `Transfer-Encoding` in HTTP/1.0 (§6.1). Header names match case-insensitively.
fn judge(bytes: &[u8]) -> Option<(usize, Verdict)> {
    let mut lines = Lines { bytes, end: 0 };
    // `None` once the head is not ours to judge: its end is still looked for.
    let mut facts = request_version(lines.next()?).map(|http_11| Facts {
        http_11,
        ..Facts::default()
    });
    loop {
        let line = lines.next()?;
        if line.is_empty() {
            return Some((
                lines.end,
                facts.map_or(Verdict::Unknown, |facts| facts.verdict()),
            ));
        }
        if facts.as_mut().is_some_and(|facts| !facts.note(line)) {
            facts = None;
        }
    }
}

/// Whether a request line is HTTP/1.1 (`true`) or HTTP/1.0 (`false`); `None` for anything
/// else, including the HTTP/2 preface `PRI * HTTP/2.0`.
fn request_version(line: &[u8]) -> Option<bool> {
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if method.is_empty() || target.is_empty() {
        return None;
    }
    match version {
        b"HTTP/1.1" => Some(true),
        b"HTTP/1.0" => Some(false),
        _ => None,
    }
}

/// What a request head's fields say about its body, gathered line by line.
#[derive(Debug, Default)]
struct Facts {
    http_11: bool,
    content_length: Option<u64>,
    bad_content_length: bool,
    transfer_encoding: bool,
    chunked: bool,
}

impl Facts {
    /// Notes one field line; `false` if it is not a field hyper would accept.
    fn note(&mut self, line: &[u8]) -> bool {
        let mut halves = line.splitn(2, |&b| b == b':');
        let (Some(name), Some(value)) = (halves.next(), halves.next()) else {
            return false;
        };
        // hyper (httparse) rejects these too: whitespace in or before a name, which
        // also covers obsolete line folding (RFC 9112 §5.2).
        if name.is_empty() || name.iter().any(|&b| b == b' ' || b == b'\t') {
            return false;
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            match (content_length(trim(value)), self.content_length) {
                (Some(length), None) => self.content_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => self.bad_content_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Several fields form one list, so the last field's last coding is final.
            self.transfer_encoding = true;
            self.chunked = trim(value)
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|coding| trim(coding).eq_ignore_ascii_case(b"chunked"));
        }
        true
    }

    fn verdict(&self) -> Verdict {
        if self.transfer_encoding {
            let has_length = self.content_length.is_some() || self.bad_content_length;
            if has_length || !self.chunked || !self.http_11 {
                return Verdict::Ambiguous;
            }
            return Verdict::Chunked;
        }
        match self.content_length {
            _ if self.bad_content_length => Verdict::Ambiguous,
            None | Some(0) => Verdict::NoBody,
            Some(length) => Verdict::Length(length),
        }
    }
}

/// Strips optional whitespace (SP / HTAB) from both ends of a field value.
fn trim(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

/// Per-connection verdict shared by [`ScannedIo`] (writer) and the request handler.
#[derive(Debug)]
pub(crate) struct FramingCheck {
    /// Index of the first request with ambiguous framing, or [`NO_BAD_REQUEST`].
    first_bad: AtomicU32,
    /// Number of requests the handler has asked about so far.
    requests: AtomicU32,
}

impl FramingCheck {
    /// Creates a check with no request flagged and no request seen by the handler.
    fn new() -> Self {
        Self {
            first_bad: AtomicU32::new(NO_BAD_REQUEST),
            requests: AtomicU32::new(0),
        }
    }

    /// Flags request `index`; only the earliest flagged index is kept.
    fn mark_bad(&self, index: u32) {
        self.first_bad.fetch_min(index, Ordering::Release);
    }

    /// Call exactly once per request, in order: counts it and tells whether it (or an
    /// earlier request on this connection) had ambiguous framing and must get a 400.
    pub(crate) fn next_request_is_bad(&self) -> bool {
        let index = self.requests.fetch_add(1, Ordering::Relaxed);
        let first_bad = self.first_bad.load(Ordering::Acquire);
        first_bad != NO_BAD_REQUEST && index >= first_bad
    }
}

/// Client connection wrapper that feeds every byte read into a [`HeadScanner`], records its
/// verdict in a shared [`FramingCheck`] and tells the connection's [`Activity`] when a read
/// ends inside a request head (for the header-read timeout); writes pass straight through.
#[derive(Debug)]
pub(crate) struct ScannedIo<T> {
    /// The client socket.
    inner: T,
    /// Scanner of the bytes read from `inner`.
    scanner: HeadScanner,
    /// Where the scanner's verdict goes.
    check: Arc<FramingCheck>,
    /// Where an incomplete head is published.
    activity: Arc<Activity>,
    /// The last value given to [`Activity::await_head`].
    published: u32,
}

impl<T> ScannedIo<T> {
    /// Wraps a fresh client connection; the returned check is for its request handler.
    /// `max_head_bytes` should be at least hyper's `max_buf_size` (see [`HeadScanner`]).
    /// The first request head counts as awaited from now.
    pub(crate) fn new(
        inner: T,
        max_head_bytes: usize,
        activity: Arc<Activity>,
    ) -> (Self, Arc<FramingCheck>) {
        let check = Arc::new(FramingCheck::new());
        let scanner = HeadScanner::new(max_head_bytes);
        let published = scanner.awaiting_head();
        activity.await_head(published);
        let io = Self {
            inner,
            scanner,
            check: Arc::clone(&check),
            activity,
            published,
        };
        (io, check)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ScannedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if let Some(index) = this.scanner.feed(fresh) {
                this.check.mark_bad(index);
            }
            let awaiting = this.scanner.awaiting_head();
            if awaiting != this.published {
                this.published = awaiting;
                this.activity.await_head(awaiting);
            }
        }
        result
    }
}

crate::io::delegate_async_write!(ScannedIo, inner);

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Empty;
    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Head limit used by the table tests.
    const MAX_HEAD: usize = 1024;

    /// Expected outcome of scanning a whole input.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Expect {
        /// No verdict; this many complete requests, ending at a message boundary.
        Clean(u32),
        /// The request with this index is flagged (and scanning stops).
        Bad(u32),
        /// No verdict; the scanner gave up.
        Passthrough,
    }

    /// A clean GET.
    const GET: &str = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";

    /// Feeds `input` in pieces of `piece` bytes; returns the scanner and all verdicts.
    fn scan_pieces(input: &[u8], piece: usize) -> (HeadScanner, Vec<u32>) {
        let mut scanner = HeadScanner::new(MAX_HEAD);
        let verdicts = input
            .chunks(piece)
            .filter_map(|piece| scanner.feed(piece))
            .collect();
        (scanner, verdicts)
    }

    /// Asserts that a scan ended as `expect` says.
    fn check(name: &str, how: &str, (scanner, verdicts): (HeadScanner, Vec<u32>), expect: Expect) {
        let got = match (verdicts.as_slice(), scanner.state) {
            ([], State::Idle) => Expect::Clean(scanner.index),
            ([index], State::Passthrough) => Expect::Bad(*index),
            ([], State::Passthrough) => Expect::Passthrough,
            (verdicts, state) => panic!("{name} ({how}): verdicts {verdicts:?}, state {state:?}"),
        };
        assert_eq!(got, expect, "{name} ({how})");
    }

    /// Runs one case whole, byte by byte, in several piece sizes and split at every point.
    fn run(name: &str, input: &[u8], expect: Expect) {
        for piece in [input.len().max(1), 1, 2, 3, 7, 64] {
            check(
                name,
                &format!("pieces of {piece}"),
                scan_pieces(input, piece),
                expect,
            );
        }
        for at in 0..=input.len() {
            let mut scanner = HeadScanner::new(MAX_HEAD);
            let (first, second) = input.split_at(at);
            let verdicts = [first, second]
                .iter()
                .filter_map(|p| scanner.feed(p))
                .collect();
            check(name, &format!("split at {at}"), (scanner, verdicts), expect);
        }
    }

    #[test]
    fn table() {
        let smuggled = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let cases: Vec<(&str, String, Expect)> = vec![
            ("clean GET", GET.into(), Expect::Clean(1)),
            (
                "LF-only line endings",
                "GET / HTTP/1.1\nHost: a\n\n".into(),
                Expect::Clean(1),
            ),
            (
                "HTTP/1.0 GET",
                "GET / HTTP/1.0\r\n\r\n".into(),
                Expect::Clean(1),
            ),
            (
                "POST with Content-Length, then GET",
                format!("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello{GET}"),
                Expect::Clean(2),
            ),
            (
                "Content-Length: 0",
                format!("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n{GET}"),
                Expect::Clean(2),
            ),
            (
                "OWS around Content-Length value",
                format!("POST / HTTP/1.1\r\nContent-Length: \t2 \r\n\r\nhi{GET}"),
                Expect::Clean(2),
            ),
            (
                "chunked with extensions and trailers",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                     5;name=val\r\nhello\r\nA ; x=\"y\"\r\n0123456789\r\n\
                     0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "chunked without trailers, upper-case hex size",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1F\r\n{}\r\n0\r\n\r\n{GET}",
                    "x".repeat(31)
                ),
                Expect::Clean(2),
            ),
            (
                "pipelined, second is CL+TE",
                format!("{GET}{smuggled}{GET}"),
                Expect::Bad(1),
            ),
            ("first is CL+TE", format!("{smuggled}{GET}"), Expect::Bad(0)),
            (
                "TE before CL",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "CL before TE",
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "CL: 0 with TE",
                "POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "TE gzip, chunked",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "TE gzip then TE chunked fields",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "TE chunked, gzip",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "TE chunked then TE gzip fields",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
                    .into(),
                Expect::Bad(0),
            ),
            (
                "TE gzip alone",
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "TE in HTTP/1.0",
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "duplicate equal CLs",
                format!(
                    "POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\nabc{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "duplicate differing CLs",
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(),
                Expect::Bad(0),
            ),
            (
                "CL list",
                "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc".into(),
                Expect::Bad(0),
            ),
            (
                "CL not a number",
                "POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "CL signed",
                "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc".into(),
                Expect::Bad(0),
            ),
            (
                "CL empty",
                "POST / HTTP/1.1\r\nContent-Length:\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "CL overflowing u64",
                "POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "mixed-case CL+TE names and value",
                "POST / HTTP/1.1\r\ncontent-LENGTH: 3\r\nTRANSFER-encoding: CHUNKED\r\n\r\n".into(),
                Expect::Bad(0),
            ),
            (
                "mixed-case TE alone",
                format!("POST / HTTP/1.1\r\ntRaNsFeR-eNcOdInG: ChUnKeD\r\n\r\n0\r\n\r\n{GET}"),
                Expect::Clean(2),
            ),
            (
                "field names that merely contain the words",
                format!(
                    "POST / HTTP/1.1\r\nX-Content-Length: 9\r\nX-Transfer-Encoding: gzip\r\n\r\n{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "smuggling text inside a CL body",
                format!(
                    "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{smuggled}{GET}",
                    smuggled.len()
                ),
                Expect::Clean(2),
            ),
            (
                "smuggling text inside chunk data and trailer",
                format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{smuggled}\r\n\
                     0\r\nContent-Length: 7\r\n\r\n{GET}",
                    smuggled.len()
                ),
                Expect::Clean(2),
            ),
            (
                "leading empty lines",
                format!(
                    "\r\n\r\n\n{GET}\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n{GET}"
                ),
                Expect::Clean(3),
            ),
            (
                "h2 prior knowledge",
                "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".into(),
                Expect::Passthrough,
            ),
            (
                "h2 preface then smuggling-like bytes",
                format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{smuggled}"),
                Expect::Passthrough,
            ),
            (
                "garbage request line",
                "HELLO\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "unknown version",
                "GET / HTTP/1.2\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "double space in request line",
                "GET  / HTTP/1.1\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "field without colon",
                "GET / HTTP/1.1\r\nHost\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "whitespace before colon",
                "POST / HTTP/1.1\r\nContent-Length : 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .into(),
                Expect::Passthrough,
            ),
            (
                "obs-fold",
                "GET / HTTP/1.1\r\nX-A: b\r\n c\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "bare CR before request line",
                format!("\r{GET}"),
                Expect::Passthrough,
            ),
            (
                "LF-only chunk-size line",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "chunk data not followed by CRLF",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "chunk size overflowing u64",
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n".into(),
                Expect::Passthrough,
            ),
            (
                "upgrade request followed by a plain request",
                format!(
                    "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n{GET}"
                ),
                Expect::Clean(2),
            ),
            (
                "upgrade request does not switch the check off",
                format!("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n{smuggled}"),
                Expect::Bad(1),
            ),
            (
                "CONNECT does not switch the check off",
                format!("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n{GET}{smuggled}"),
                Expect::Bad(2),
            ),
            (
                "head of exactly the limit",
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD - 23)),
                Expect::Clean(1),
            ),
            (
                "oversized head",
                format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD - 22)),
                Expect::Passthrough,
            ),
            (
                "oversized head hiding CL+TE",
                format!(
                    "POST / HTTP/1.1\r\nX: {}\r\n{}",
                    "a".repeat(MAX_HEAD),
                    &smuggled[16..]
                ),
                Expect::Passthrough,
            ),
            (
                "oversized second head",
                format!(
                    "{GET}GET / HTTP/1.1\r\nX: {}\r\n\r\n{smuggled}",
                    "a".repeat(MAX_HEAD)
                ),
                Expect::Passthrough,
            ),
        ];
        for (name, input, expect) in &cases {
            run(name, input.as_bytes(), *expect);
        }
    }

    #[test]
    fn tunnelled_bytes_after_upgrade_never_panic() {
        let mut input = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n".to_vec();
        input.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        for piece in [1, 5, 4096] {
            let (scanner, _) = scan_pieces(&input, piece);
            assert!(scanner.index >= 1, "the CONNECT head is counted");
        }
    }

    #[test]
    fn large_body_is_skipped_then_next_head_judged() {
        let length = 10 * 1024 * 1024;
        let mut scanner = HeadScanner::new(MAX_HEAD);
        let head = format!("POST / HTTP/1.1\r\nContent-Length: {length}\r\n\r\n");
        assert_eq!(scanner.feed(head.as_bytes()), None);
        let block = b"\r\n\r\nGET / HTTP/1.1\r\nTransfer-Encoding: x\r\n\r\n".repeat(1500);
        let mut left = length;
        while left > 0 {
            let n = left.min(block.len());
            assert_eq!(scanner.feed(&block[..n]), None);
            left -= n;
        }
        assert_eq!(scanner.state, State::Idle);
        assert!(scanner.head.is_empty());
        let bad = "GET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scanner.feed(bad.as_bytes()), Some(1));
    }

    #[test]
    fn awaiting_head_names_the_incomplete_head() {
        let mut scanner = HeadScanner::new(MAX_HEAD);
        assert_eq!(
            scanner.awaiting_head(),
            1,
            "the first head is awaited from the start"
        );
        scanner.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(scanner.awaiting_head(), 0, "between requests");
        scanner.feed(b"GET / HT");
        assert_eq!(scanner.awaiting_head(), 2, "inside the second head");
        scanner.feed(b"TP/1.1\r\nHost: a\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab");
        assert_eq!(scanner.awaiting_head(), 0, "inside a body");
        scanner.feed(b"cde\r\nGET");
        assert_eq!(scanner.awaiting_head(), 4, "inside the fourth head");
        scanner.feed(b" / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(scanner.awaiting_head(), 0, "no longer following the stream");
    }

    #[test]
    fn head_buffer_is_reused() {
        let mut scanner = HeadScanner::new(MAX_HEAD);
        let request = format!("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi{GET}");
        for &byte in request.as_bytes() {
            assert_eq!(scanner.feed(&[byte]), None);
        }
        let capacity = scanner.head.capacity();
        for _ in 0..100 {
            for &byte in request.as_bytes() {
                assert_eq!(scanner.feed(&[byte]), None);
            }
        }
        assert_eq!(scanner.head.capacity(), capacity);
        assert_eq!(scanner.index, 202);
    }

    #[test]
    fn only_one_verdict_then_stop() {
        let bad =
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let mut scanner = HeadScanner::new(MAX_HEAD);
        assert_eq!(scanner.feed(format!("{bad}{bad}").as_bytes()), Some(0));
        assert_eq!(scanner.feed(bad.as_bytes()), None);
        assert_eq!(scanner.state, State::Passthrough);
    }

    #[test]
    fn index_stops_before_sentinel() {
        let mut scanner = HeadScanner::new(MAX_HEAD);
        scanner.index = NO_BAD_REQUEST - 1;
        assert_eq!(scanner.feed(GET.as_bytes()), None);
        let bad = "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(scanner.feed(bad.as_bytes()), None);
        assert_eq!(scanner.state, State::Passthrough);
    }

    #[test]
    fn framing_check_rejects_from_first_bad_index() {
        let check = FramingCheck::new();
        check.mark_bad(3);
        check.mark_bad(2);
        check.mark_bad(5);
        let answers: Vec<bool> = (0..5).map(|_| check.next_request_is_bad()).collect();
        assert_eq!(answers, [false, false, true, true, true]);

        let clean = FramingCheck::new();
        assert!((0..5).all(|_| !clean.next_request_is_bad()));
    }

    #[tokio::test]
    async fn scanned_io_over_duplex() {
        let (mut client, server) = tokio::io::duplex(16);
        let (mut io, check) = ScannedIo::new(server, MAX_HEAD, Arc::default());
        let smuggled =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
        let request = format!("{GET}{smuggled}");
        let writer = tokio::spawn(async move {
            client
                .write_all(request.as_bytes())
                .await
                .expect("write request");
            let mut reply = [0; 5];
            client.read_exact(&mut reply).await.expect("read reply");
            reply
        });
        let mut received = Vec::new();
        let mut buf = [0; 7];
        while received.len() < GET.len() + smuggled.len() {
            let n = io.read(&mut buf).await.expect("read");
            received.extend_from_slice(&buf[..n]);
        }
        assert_eq!(received, format!("{GET}{smuggled}").as_bytes());
        assert!(!check.next_request_is_bad());
        assert!(check.next_request_is_bad());
        io.write_all(b"reply").await.expect("write reply");
        io.flush().await.expect("flush");
        assert_eq!(&writer.await.expect("join"), b"reply");
    }

    #[tokio::test]
    async fn hyper_request_handler_sees_flag() {
        let (mut client, server) = tokio::io::duplex(4096);
        let (io, check) = ScannedIo::new(server, MAX_HEAD, Arc::default());
        let service = service_fn(move |_request| {
            let status = if check.next_request_is_bad() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = status;
            async move { Ok::<_, Infallible>(response) }
        });
        let server = tokio::spawn(
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service),
        );
        let smuggled = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
                        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let request = format!("{GET}{smuggled}{GET}");
        client.write_all(request.as_bytes()).await.expect("write");
        let mut replies = String::new();
        client.read_to_string(&mut replies).await.expect("read");
        let statuses: Vec<&str> = replies
            .lines()
            .filter(|line| line.starts_with("HTTP/1.1 "))
            .collect();
        assert_eq!(statuses, ["HTTP/1.1 200 OK", "HTTP/1.1 400 Bad Request"]);
        server.await.expect("join").expect("serve");
    }
}
