//! The head scanner: follows one connection's request stream (heads, `Content-Length` and
//! chunked bodies) and judges each head's framing per RFC 9112 §6.

use super::check::NO_BAD_REQUEST;
use super::chunked::{Chunk, ChunkStep};
use crate::http::wire::content_length;

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

#[cfg(test)]
mod differential;

#[cfg(test)]
mod tests {
    use super::*;

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
}
