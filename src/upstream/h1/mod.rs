//! Upstream HTTP/1.1, driven in the task of the request it carries.
//!
//! hyper's client connection runs as a task of its own and passes every request, response head
//! and body chunk across channels to the request's task. Measured with callgrind on small
//! keep-alive responses, that connection task was 41 % of the proxy's user-space instructions.
//! Here the request's own future writes the head, streams the body and parses the response
//! head with `httparse` (the parser hyper uses), and the response body reads straight from the
//! socket while the client side polls it; an idle connection is just a socket in the backend's
//! pool.
//!
//! Framing follows RFC 9112 §6: responses to HEAD and 1xx/204/304 have no body;
//! `Transfer-Encoding: chunked` is decoded (trailers become a trailers frame); otherwise
//! `Content-Length`, else the body runs to the end of the connection. A response with both
//! fields, conflicting lengths or a transfer coding other than chunked last is refused, since a
//! proxy that guesses there is the way into response splitting. A connection is reused only
//! when the exchange ended exactly at a message boundary and both sides allow keep-alive.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::client::TlsStream;

use super::request_body::RequestBody;
use crate::http::headers::Forwarding;
use crate::http::wire::{self, content_length};
use crate::io::rewind::Rewind;

/// Largest response head (status line and fields) accepted from a backend.
const MAX_HEAD: usize = 64 * 1024;
/// Most fields a response head or trailer section may have.
const MAX_HEADERS: usize = 100;
/// Read size for heads and small bodies.
const READ_CHUNK: usize = 8 * 1024;
/// Bodies with at least this much left are read into buffers of their own, handed on whole.
const LARGE_READ: usize = 16 * 1024;
/// Largest single read of body bytes.
const MAX_READ: usize = 64 * 1024;
/// Data already buffered up to this size is copied out, keeping the connection's buffer.
const COPY_LIMIT: usize = 4 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading from or writing to the backend failed (reset and the like).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before the response was complete.
    #[error("backend closed the connection before the response was complete")]
    Closed,
    /// The backend sent something that is not a valid HTTP/1.1 response.
    #[error("invalid response: {0}")]
    Malformed(&'static str),
    /// The client's request body failed while it was being forwarded.
    #[error("request body from the client failed: {0}")]
    RequestBody(#[source] hyper::Error),
    /// No response head arrived before the exchange's deadline.
    #[error("no response head before the deadline")]
    TimedOut,
}

/// A failed exchange.
pub enum SendError {
    /// Nothing of the request reached the backend in a usable form (the head could not be
    /// written): the request comes back whole for another connection or backend.
    NotSent(Box<Request<RequestBody>>, Error),
    /// The request was sent, at least in part; it cannot be sent again.
    Failed(Error),
}

/// The transport under an upstream connection.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS to the backend.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Stream::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Stream::Tls(io) => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(io) => io.is_write_vectored(),
            Stream::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_flush(cx),
            Stream::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Stream::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection to a backend, between exchanges.
#[derive(Debug)]
pub struct Connection {
    io: Stream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
    /// Where request heads are encoded; kept for the next request.
    head: Vec<u8>,
    /// The response-head deadline: one timer for the connection's life. Moving a registered
    /// timer later is one atomic update; a new timer per request costs two timer-wheel
    /// updates (insert, remove). Set by [`Connection::send`] before it is ever polled.
    deadline: Pin<Box<Sleep>>,
}

impl Connection {
    /// A connection over `io`, ready for its first request. Called within the runtime (the
    /// deadline timer belongs to its time driver). Boxed for its whole life: requests,
    /// responses and the idle pool move it around as one pointer.
    pub fn new(io: Stream) -> Box<Self> {
        Box::new(Self {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            deadline: Box::pin(tokio::time::sleep_until(Instant::now())),
        })
    }

    /// Gives the read buffer (8 KiB or more once used) back to the allocator, for a connection
    /// that has been idle for a while; its next exchange allocates a new one. Whether there
    /// was one to give back.
    pub fn shed_buffer(&mut self) -> bool {
        let had = self.buf.capacity() > 0;
        self.buf = BytesMut::new();
        had
    }

    /// Whether an idle connection can no longer carry a request: the backend closed it, reset
    /// it, or sent bytes nobody asked for. Costs no system call while the socket has no news.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = ReadBuf::new(&mut byte);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    /// Sends `request` with the proxy's `forwarding` fields and waits for the response head
    /// until `deadline` (then
    /// [`Error::TimedOut`]). The response body streams from the connection and gives it back
    /// for reuse when it ends cleanly ([`Body::take_idle`]).
    ///
    /// The request body is written while the response head is awaited and, when the backend
    /// answers before it is complete (an echo, an early error), while the response body
    /// streams. The connection is reused only when both messages completed.
    ///
    /// One `async move` block, not an `async fn`, so the arguments are not stored twice.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would store its arguments twice"
    )]
    pub fn send(
        mut self: Box<Self>,
        request: Request<RequestBody>,
        forwarding: &Forwarding<'_>,
        deadline: Instant,
    ) -> impl Future<Output = Result<Response<Body>, SendError>> {
        async move {
            self.deadline.as_mut().reset(deadline);
            let framing = encode_head(&request, forwarding, &mut self.head);
            let mut written = 0;
            let wrote = std::future::poll_fn(|cx| {
                let write = poll_write_head(&mut self.io, cx, &self.head, &mut written);
                before(self.deadline.as_mut(), cx, write.map_err(Error::from))
            })
            .await;
            match wrote {
                Ok(()) => {}
                Err(Error::TimedOut) => return Err(SendError::Failed(Error::TimedOut)),
                Err(err) => return Err(SendError::NotSent(Box::new(request), err)),
            }
            // The request's field map, emptied, takes the response's fields: no new allocation.
            let (head_request, mut headers, mut writer) = {
                let (parts, body) = request.into_parts();
                let head_request = parts.method == Method::HEAD;
                (head_request, parts.headers, BodyWriter::new(body, framing))
            };
            let mut write_error = None;
            let parsed = std::future::poll_fn(|cx| {
                if !writer.done {
                    match writer.poll_write(&mut self.io, cx) {
                        Poll::Ready(Err(Error::RequestBody(err))) => {
                            return Poll::Ready(Err(Error::RequestBody(err)));
                        }
                        Poll::Ready(Err(err)) => {
                            // The backend may have answered and closed; read what it said.
                            writer.done = true;
                            write_error = Some(err);
                        }
                        Poll::Ready(Ok(())) | Poll::Pending => {}
                    }
                }
                let head = self.poll_head(cx, &mut headers);
                before(self.deadline.as_mut(), cx, head)
            })
            .await;
            let head = match (parsed, write_error) {
                (Ok(head), _) => head,
                (Err(_), Some(err)) | (Err(err), None) => return Err(SendError::Failed(err)),
            };
            let writing = if writer.done {
                Writing::Done {
                    complete: writer.complete,
                }
            } else {
                Writing::Body(Box::new(writer))
            };
            self.respond(head, headers, head_request, writing)
                .map_err(SendError::Failed)
        }
    }

    /// Reads until a final response head is buffered; 1xx interim responses are skipped.
    /// The head's fields go into `headers`.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        headers: &mut HeaderMap,
    ) -> Poll<Result<Head, Error>> {
        loop {
            if let Some(head) = parse_head(&self.buf, headers)? {
                if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    self.buf.advance(head.len);
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
            if self.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(Error::Malformed("response head too large")));
            }
            if ready!(poll_read_into(&mut self.io, cx, &mut self.buf, READ_CHUNK))? == 0 {
                return Poll::Ready(Err(Error::Closed));
            }
        }
    }

    /// Builds the response for `head` and decides how its body is framed.
    fn respond(
        mut self: Box<Self>,
        head: Head,
        mut headers: HeaderMap,
        head_request: bool,
        writing: Writing,
    ) -> Result<Response<Body>, Error> {
        self.buf.advance(head.len);
        let Head {
            status,
            version,
            fields,
            reason,
            ..
        } = head;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            // The connection now carries another protocol: see `Body::into_upgraded`.
            let mut response = Response::new(Body {
                conn: Some(self),
                kind: Kind::Done,
                keep_alive: false,
                writing,
            });
            *response.status_mut() = status;
            *response.version_mut() = version;
            *response.headers_mut() = headers;
            return Ok(response);
        }
        let keep_alive = fields.allow_keep_alive(version);
        let bodiless = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let kind = if bodiless {
            Kind::Done
        } else {
            fields.body_framing()?
        };
        if let Some(length) = fields.length {
            // A body framed by this length carries it to hyper's encoder, which writes the
            // field (`content-length: 0` too). A HEAD or 304 answer's length describes a body
            // not sent: the field goes back as the backend sent it.
            let carried = match kind {
                Kind::Length(framed) => framed == length,
                Kind::Done => length == 0 && !bodiless,
                Kind::Chunked(_) | Kind::Close => false,
            };
            if !carried {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
            }
        }
        let mut response = Response::new(Body {
            conn: Some(self),
            kind,
            keep_alive,
            writing,
        });
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        if let Some(reason) = reason {
            response.extensions_mut().insert(reason);
        }
        response.body_mut().settle();
        Ok(response)
    }
}

/// A parsed response head.
struct Head {
    /// Bytes the head takes in the buffer.
    len: usize,
    status: StatusCode,
    version: Version,
    /// What the fields say about framing and the connection.
    fields: Fields,
    /// The reason phrase, kept only when it is not the standard one.
    reason: Option<hyper::ext::ReasonPhrase>,
}

/// Parses a response head at the start of `buf` into `headers` (emptied first); `None` while
/// it is incomplete.
fn parse_head(buf: &[u8], headers: &mut HeaderMap) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised slots: zeroing a hundred fields per response costs more than parsing.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Malformed("too many header fields"));
        }
        Err(_) => return Err(Error::Malformed("unparsable response head")),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("invalid status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = response
        .reason
        .filter(|reason| status.canonical_reason() != Some(*reason))
        .and_then(|reason| {
            hyper::ext::ReasonPhrase::try_from(Bytes::copy_from_slice(reason.as_bytes())).ok()
        });
    headers.clear();
    let fields = read_fields(response.headers, headers)?;
    Ok(Some(Head {
        len,
        status,
        version,
        fields,
        reason,
    }))
}

/// What a head's fields say about its framing and connection, gathered while copying them.
#[derive(Debug, Default)]
struct Fields {
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent.
    keep_alive: bool,
    /// `Transfer-Encoding` was sent; `true` when its last coding is chunked.
    chunked: Option<bool>,
    /// The `Content-Length`, when sent (every value agreeing).
    length: Option<u64>,
}

impl Fields {
    /// Whether the backend lets the connection carry another request (RFC 9112 §9.3).
    fn allow_keep_alive(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }

    /// How a response that has a body delimits it (RFC 9112 §6.3).
    fn body_framing(&self) -> Result<Kind, Error> {
        match (self.chunked, self.length) {
            (Some(_), Some(_)) => Err(Error::Malformed(
                "both Transfer-Encoding and Content-Length",
            )),
            (Some(true), None) => Ok(Kind::Chunked(Chunked::Size)),
            (Some(false), None) => Err(Error::Malformed("transfer coding other than chunked last")),
            (None, Some(0)) => Ok(Kind::Done),
            (None, Some(length)) => Ok(Kind::Length(length)),
            (None, None) => Ok(Kind::Close),
        }
    }
}

/// Copies parsed fields into `headers`, noting the ones that frame the message.
///
/// `Date` is left out: the client gets the proxy's own, from hyper's once-a-second cache (as
/// nginx does), which costs less than carrying the backend's through. So is `Content-Length`,
/// noted in the facts: [`Connection::respond`] puts it back unless the body's own length says
/// the same (hyper writes the field from that).
fn read_fields(fields: &[httparse::Header<'_>], headers: &mut HeaderMap) -> Result<Fields, Error> {
    let mut facts = Fields::default();
    headers.reserve(fields.len());
    for field in fields {
        // The fields left out are known by their bytes, before a name or value is built.
        let raw = field.name.as_bytes();
        if raw.eq_ignore_ascii_case(b"date") {
            continue;
        }
        if raw.eq_ignore_ascii_case(b"content-length") {
            for item in field.value.split(|&b| b == b',') {
                let length = content_length(item.trim_ascii())
                    .ok_or(Error::Malformed("invalid Content-Length"))?;
                if facts.length.is_some_and(|known| known != length) {
                    return Err(Error::Malformed("conflicting Content-Length values"));
                }
                facts.length = Some(length);
            }
            continue;
        }
        let name =
            HeaderName::from_bytes(raw).map_err(|_| Error::Malformed("invalid header name"))?;
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Error::Malformed("invalid header value"))?;
        if name == header::CONNECTION {
            for token in field.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                facts.close |= token.eq_ignore_ascii_case(b"close");
                facts.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name == header::TRANSFER_ENCODING {
            let last = field
                .value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or_default();
            facts.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        headers.append(name, value);
    }
    Ok(facts)
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: the length is not known in advance.
    Chunked,
}

/// Methods whose requests carry a body by definition: an empty one is sent with
/// `Content-Length: 0` so the backend does not wait for one.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Encodes `request`'s head, with the proxy's `forwarding` fields after its own, into `out`
/// and says how its body follows.
///
/// The head was prepared by the proxy (hop-by-hop fields such as `Transfer-Encoding` are
/// gone), so the framing fields written here are the only ones.
fn encode_head(
    request: &Request<RequestBody>,
    forwarding: &Forwarding<'_>,
    out: &mut Vec<u8>,
) -> Framing {
    let body = request.body();
    let headers = request.headers();
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        }
    };
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    let mut host = None;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            has_length = true;
            if framing == Framing::Chunked {
                continue;
            }
        } else if name == header::HOST {
            host = Some(value);
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Empty if !has_length && expects_body(request.method()) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Length(length) if !has_length => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(length, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Length(_) => {}
    }
    forwarding.write(host, out);
    out.extend_from_slice(b"\r\n");
    framing
}

/// `value` in decimal, written into `digits`.
fn itoa(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

/// Writes the rest of `head` from `written` on and flushes it (a no-op on TCP; TLS may hold
/// written bytes).
fn poll_write_head(
    io: &mut Stream,
    cx: &mut Context<'_>,
    head: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while let Some(rest) = head.get(*written..).filter(|rest| !rest.is_empty()) {
        match ready!(Pin::new(&mut *io).poll_write(cx, rest))? {
            0 => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => *written += n,
        }
    }
    Pin::new(io).poll_flush(cx)
}

/// `work`, or [`Error::TimedOut`] once `deadline` has passed while it is still pending.
fn before<T>(
    deadline: Pin<&mut Sleep>,
    cx: &mut Context<'_>,
    work: Poll<Result<T, Error>>,
) -> Poll<Result<T, Error>> {
    match work {
        Poll::Pending => deadline.poll(cx).map(|()| Err(Error::TimedOut)),
        work => work,
    }
}

/// Reads into `buf`, making room for `want` bytes first; `Ok(0)` at end of stream.
fn poll_read_into(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    want: usize,
) -> Poll<io::Result<usize>> {
    buf.reserve(want);
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Streams a request body to the backend in its framing.
struct BodyWriter {
    body: RequestBody,
    framing: Framing,
    /// Encoded bytes waiting for the socket: chunk prefix, data, suffix.
    pending: [Bytes; 3],
    /// Body bytes still due under `Content-Length`.
    remaining: u64,
    /// Nothing more will be written.
    done: bool,
    /// The whole body was written.
    complete: bool,
}

impl BodyWriter {
    fn new(body: RequestBody, framing: Framing) -> Self {
        let empty = framing == Framing::Empty;
        Self {
            body,
            framing,
            pending: Default::default(),
            remaining: match framing {
                Framing::Length(length) => length,
                Framing::Empty | Framing::Chunked => 0,
            },
            done: empty,
            complete: empty,
        }
    }

    /// Moves body frames to the socket until the body ends, the socket is full or the client
    /// has nothing more yet.
    fn poll_write(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            ready!(self.poll_pending(io, cx))?;
            // A no-op on TCP; TLS may hold written bytes until flushed.
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if self.complete {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Err(Error::RequestBody(err))),
                None => {
                    self.finish(None)?;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => self.queue(data)?,
                Err(frame) => self.finish(frame.into_trailers().ok())?,
            }
        }
    }

    /// Queues one data frame in the body's framing.
    fn queue(&mut self, data: Bytes) -> Result<(), Error> {
        match self.framing {
            Framing::Length(_) => {
                let len = data.len() as u64;
                if len > self.remaining {
                    return Err(Error::Malformed(
                        "request body longer than its Content-Length",
                    ));
                }
                self.remaining -= len;
                self.pending[1] = data;
            }
            Framing::Chunked => {
                self.pending[0] = Bytes::from(format!("{:x}\r\n", data.len()));
                self.pending[1] = data;
                self.pending[2] = Bytes::from_static(b"\r\n");
            }
            Framing::Empty => {
                return Err(Error::Malformed("data in a request without a body"));
            }
        }
        Ok(())
    }

    /// Ends the body, with `trailers` when the framing can carry them.
    fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), Error> {
        match self.framing {
            Framing::Length(_) if self.remaining > 0 => {
                return Err(Error::Malformed(
                    "request body shorter than its Content-Length",
                ));
            }
            Framing::Chunked => {
                let mut end = b"0\r\n".to_vec();
                for (name, value) in trailers.iter().flatten() {
                    end.extend_from_slice(name.as_str().as_bytes());
                    end.extend_from_slice(b": ");
                    end.extend_from_slice(value.as_bytes());
                    end.extend_from_slice(b"\r\n");
                }
                end.extend_from_slice(b"\r\n");
                self.pending[0] = Bytes::from(end);
            }
            Framing::Empty | Framing::Length(_) => {}
        }
        self.complete = true;
        Ok(())
    }

    /// Writes the queued bytes.
    fn poll_pending(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.pending.iter().any(|part| !part.is_empty()) {
            let slices = [
                io::IoSlice::new(&self.pending[0]),
                io::IoSlice::new(&self.pending[1]),
                io::IoSlice::new(&self.pending[2]),
            ];
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            for part in &mut self.pending {
                let step = written.min(part.len());
                part.advance(step);
                written -= step;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where a response body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// This many bytes are still due.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Everything until the backend closes the connection.
    Close,
    /// The body has ended.
    Done,
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are due.
    Data(u64),
    /// The CRLF after chunk data is next.
    DataEnd,
    /// The trailer section (possibly empty) is next.
    Trailers,
}

/// Where the request body stands once the response head has arrived.
enum Writing {
    /// Nothing more will be written; `complete` when the whole body was.
    Done { complete: bool },
    /// Still streaming: the response body keeps it going.
    Body(Box<BodyWriter>),
}

/// A response body read from a backend connection.
pub struct Body {
    /// The connection, until the body ends or fails.
    conn: Option<Box<Connection>>,
    kind: Kind,
    /// Whether the backend lets the connection carry another request after this response.
    keep_alive: bool,
    /// The request body, when it was still being sent as the response began.
    writing: Writing,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("kind", &self.kind)
            .field("keep_alive", &self.keep_alive)
            .field("writing", &matches!(self.writing, Writing::Body(_)))
            .finish_non_exhaustive()
    }
}

/// The connection of a 101 response: the protocol the two sides switched to runs on it, with
/// the bytes that arrived after the 101 head read first.
pub type Upgraded = Rewind<Stream>;

impl Body {
    /// The connection, when the body has ended and the exchange left it reusable. Called once
    /// the body is at its end; afterwards the body no longer holds the connection.
    pub fn take_idle(&mut self) -> Option<Box<Connection>> {
        let request_sent = matches!(self.writing, Writing::Done { complete: true });
        if self.kind != Kind::Done || !self.keep_alive || !request_sent {
            return None;
        }
        self.conn.take().filter(|conn| conn.buf.is_empty())
    }

    /// For a 101 response: the connection, now carrying the upgraded protocol.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        let mut conn = self.conn.take()?;
        Some(Rewind::new(conn.buf.split().freeze(), conn.io))
    }

    /// Drops the connection as soon as the response is complete and the connection cannot
    /// be reused (a request body still unsent is abandoned with it).
    fn settle(&mut self) {
        let request_sent = matches!(self.writing, Writing::Done { complete: true });
        if self.kind == Kind::Done && !(self.keep_alive && request_sent) {
            self.conn = None;
            self.writing = Writing::Done { complete: false };
        }
    }

    /// Moves the rest of the request body on. A client whose upload fails breaks the
    /// exchange; a backend that stops reading just gets no more of it.
    fn poll_writing(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        let (Writing::Body(writer), Some(conn)) = (&mut self.writing, self.conn.as_mut()) else {
            return Ok(());
        };
        match writer.poll_write(&mut conn.io, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.writing = Writing::Done { complete: true };
                Ok(())
            }
            Poll::Ready(Err(Error::RequestBody(err))) => Err(Error::RequestBody(err)),
            Poll::Ready(Err(_)) => {
                self.writing = Writing::Done { complete: false };
                Ok(())
            }
        }
    }

    /// Marks the body finished.
    fn end(&mut self) {
        self.kind = Kind::Done;
        self.settle();
    }

    /// Reads more body bytes into the connection's buffer; an end of stream is an error.
    fn fill(conn: &mut Connection, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if ready!(poll_read_into(&mut conn.io, cx, &mut conn.buf, READ_CHUNK))? == 0 {
            return Poll::Ready(Err(Error::Closed));
        }
        Poll::Ready(Ok(()))
    }

    /// Up to `limit` bytes of body data: from the buffer when it has some, else read, into a
    /// buffer of their own when plenty is due. `Ok(None)` at end of stream.
    fn poll_data(
        conn: &mut Connection,
        cx: &mut Context<'_>,
        limit: u64,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        if conn.buf.is_empty() {
            if limit >= LARGE_READ as u64 {
                let want = usize::try_from(limit).unwrap_or(MAX_READ).min(MAX_READ);
                let mut own = BytesMut::with_capacity(want);
                if ready!(tokio_util::io::poll_read_buf(
                    Pin::new(&mut conn.io),
                    cx,
                    &mut own
                ))? == 0
                {
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Ok(Some(own.freeze())));
            }
            if ready!(poll_read_into(&mut conn.io, cx, &mut conn.buf, READ_CHUNK))? == 0 {
                return Poll::Ready(Ok(None));
            }
        }
        let take = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(conn.buf.len());
        let data = if take <= COPY_LIMIT {
            let data = Bytes::copy_from_slice(&conn.buf[..take]);
            conn.buf.advance(take);
            data
        } else {
            conn.buf.split_to(take).freeze()
        };
        Poll::Ready(Ok(Some(data)))
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.poll_writing(cx)?;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.kind {
                Kind::Done => return Poll::Ready(None),
                Kind::Length(remaining) => {
                    let Some(data) = ready!(Self::poll_data(conn, cx, remaining))? else {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    };
                    let left = remaining - data.len() as u64;
                    if left == 0 {
                        self.end();
                    } else {
                        self.kind = Kind::Length(left);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Close => match ready!(Self::poll_data(conn, cx, MAX_READ as u64))? {
                    Some(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    None => {
                        self.keep_alive = false;
                        self.end();
                        return Poll::Ready(None);
                    }
                },
                Kind::Chunked(Chunked::Data(remaining)) => {
                    let Some(data) = ready!(Self::poll_data(conn, cx, remaining))? else {
                        return Poll::Ready(Some(Err(Error::Closed)));
                    };
                    let left = remaining - data.len() as u64;
                    self.kind = Kind::Chunked(if left == 0 {
                        Chunked::DataEnd
                    } else {
                        Chunked::Data(left)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Kind::Chunked(Chunked::Size) => {
                    let Some(line_end) = memchr::memchr(b'\n', &conn.buf) else {
                        if conn.buf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(Error::Malformed(
                                "chunk size line too long",
                            ))));
                        }
                        ready!(Self::fill(conn, cx))?;
                        continue;
                    };
                    let size = parse_chunk_size(&conn.buf[..=line_end])?;
                    conn.buf.advance(line_end + 1);
                    self.kind = Kind::Chunked(if size == 0 {
                        Chunked::Trailers
                    } else {
                        Chunked::Data(size)
                    });
                }
                Kind::Chunked(Chunked::DataEnd) => {
                    if conn.buf.len() < 2 {
                        ready!(Self::fill(conn, cx))?;
                        continue;
                    }
                    if &conn.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Error::Malformed(
                            "chunk data not followed by CRLF",
                        ))));
                    }
                    conn.buf.advance(2);
                    self.kind = Kind::Chunked(Chunked::Size);
                }
                Kind::Chunked(Chunked::Trailers) => {
                    if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        self.end();
                        return Poll::Ready(None);
                    }
                    let Some(end) = memchr::memmem::find(&conn.buf, b"\r\n\r\n") else {
                        if conn.buf.len() >= MAX_HEAD {
                            return Poll::Ready(Some(Err(Error::Malformed(
                                "trailer section too large",
                            ))));
                        }
                        ready!(Self::fill(conn, cx))?;
                        continue;
                    };
                    let trailers = parse_trailers(&conn.buf[..end + 4])?;
                    conn.buf.advance(end + 4);
                    self.end();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
            }
        }
    }
}

/// The size on a chunk-size line, as [`wire::chunk_size`] reads it.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Error> {
    wire::chunk_size(line).ok_or(Error::Malformed("invalid chunk size line"))
}

/// The fields of a trailer section (ending in an empty line).
fn parse_trailers(section: &[u8]) -> Result<HeaderMap, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut trailers = HeaderMap::new();
            read_fields(fields, &mut trailers)?;
            Ok(trailers)
        }
        _ => Err(Error::Malformed("invalid trailer section")),
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        let next = ready!(this.poll_next(cx));
        if let Some(Err(_)) = &next {
            this.conn = None;
            this.kind = Kind::Done;
            this.keep_alive = false;
        }
        Poll::Ready(next)
    }

    fn is_end_stream(&self) -> bool {
        self.kind == Kind::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(remaining) => SizeHint::with_exact(remaining),
            Kind::Done => SizeHint::with_exact(0),
            Kind::Chunked(_) | Kind::Close => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::headers::test_forwarding as forwarding;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// A scripted backend on 127.0.0.1:0: for each reply, reads one request head and writes
    /// the reply; then closes the connection when `close` is set, else holds it open. Sends
    /// back every request head it read.
    async fn backend(
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
    fn sent(lines: &str) -> Vec<u8> {
        format!(
            "{lines}x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: app.test\r\nvia: 1.1 fulcrum\r\n\r\n"
        )
        .into_bytes()
    }

    async fn connect(addr: std::net::SocketAddr) -> Box<Connection> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Connection::new(Stream::Tcp(stream))
    }

    fn request(method: Method, target: &str) -> Request<RequestBody> {
        Request::builder()
            .method(method)
            .uri(target)
            .header("host", "app.test")
            .body(RequestBody::Empty)
            .expect("valid request")
    }

    async fn send(
        conn: Box<Connection>,
        request: Request<RequestBody>,
    ) -> Result<Response<Body>, Error> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match conn.send(request, &forwarding(), deadline).await {
            Ok(response) => Ok(response),
            Err(SendError::NotSent(_, err) | SendError::Failed(err)) => Err(err),
        }
    }

    /// The body's data and trailers, or its error.
    async fn read(body: &mut Body) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
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

    #[tokio::test]
    async fn length_framed_responses_reuse_the_connection() {
        let (addr, heads) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
                b"HTTP/1.1 404 Not Here\r\ncontent-length: 3\r\n\r\nbye",
            ],
            false,
        )
        .await;
        let conn = connect(addr).await;
        let mut response = send(conn, request(Method::GET, "/a?b=c"))
            .await
            .expect("first");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["x-a"], "1");
        assert_eq!(response.body().size_hint().exact(), Some(5));
        let (data, _) = read(response.body_mut()).await.expect("body");
        assert_eq!(data, b"hello");
        let mut conn = response.body_mut().take_idle().expect("reusable");
        assert!(!conn.is_closed());
        assert!(conn.shed_buffer(), "the read buffer is given back");
        assert!(!conn.shed_buffer(), "once");
        let mut response = send(conn, request(Method::POST, "/b"))
            .await
            .expect("second");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let reason = response.extensions().get::<hyper::ext::ReasonPhrase>();
        assert_eq!(reason.map(|r| r.as_bytes()), Some(&b"Not Here"[..]));
        assert_eq!(read(response.body_mut()).await.expect("body").0, b"bye");
        let heads = heads.await.expect("heads");
        assert_eq!(heads[0], sent("GET /a?b=c HTTP/1.1\r\nhost: app.test\r\n"));
        assert_eq!(
            heads[1],
            sent("POST /b HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0\r\n"),
            "an empty POST says so"
        );
    }

    /// Each exchange gets the whole timeout, counted from its own start: the connection's one
    /// timer is moved on, not left at the first exchange's deadline.
    #[tokio::test(start_paused = true)]
    async fn every_exchange_gets_its_own_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut chunk = [0u8; 4096];
            // Two answers 400 ms after their requests, then silence.
            for _ in 0..2 {
                assert!(socket.read(&mut chunk).await.expect("read request") > 0);
                tokio::time::sleep(Duration::from_millis(400)).await;
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                socket.write_all(reply).await.expect("write reply");
            }
            let _ = socket.read(&mut chunk).await;
            std::future::pending::<()>().await;
        });
        let timeout = Duration::from_millis(500);
        let mut conn = connect(addr).await;
        for exchange in ["first", "second"] {
            let response = conn
                .send(
                    request(Method::GET, "/"),
                    &forwarding(),
                    Instant::now() + timeout,
                )
                .await
                .unwrap_or_else(|_| panic!("{exchange} exchange failed"));
            conn = response.into_body().take_idle().expect("reusable");
        }
        let started = Instant::now();
        match conn
            .send(request(Method::GET, "/"), &forwarding(), started + timeout)
            .await
        {
            Err(SendError::Failed(Error::TimedOut)) => {}
            Ok(_) => panic!("a silent backend answered"),
            Err(SendError::NotSent(_, err) | SendError::Failed(err)) => panic!("{err}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(5),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_with_their_trailers() {
        let (addr, _heads) = backend(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Check: 42\r\n\r\n",
            ],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert_eq!(response.body().size_hint().exact(), None);
        let (data, trailers) = read(response.body_mut()).await.expect("body");
        assert_eq!(data, b"hello, world!!!");
        assert_eq!(trailers.expect("trailers")["x-check"], "42");
        assert!(response.body_mut().take_idle().is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close() {
        let (addr, _heads) = backend(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"], true).await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert_eq!(
            read(response.body_mut()).await.expect("body").0,
            b"until the end"
        );
        assert!(response.body_mut().take_idle().is_none());
    }

    /// The response's `Content-Length` field: kept where it describes a body not sent, left to
    /// the body's own length (which hyper writes) where it frames the body.
    #[tokio::test]
    async fn bodiless_responses_ignore_their_length() {
        for (method, reply, field) in [
            (
                Method::HEAD,
                &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"[..],
                Some("10"),
            ),
            (Method::GET, b"HTTP/1.1 204 No Content\r\n\r\n", None),
            (
                Method::GET,
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
                Some("7"),
            ),
            (
                Method::GET,
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                None,
            ),
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let mut response = send(connect(addr).await, request(method, "/"))
                .await
                .expect("response");
            assert!(response.body().is_end_stream(), "{reply:?}");
            assert_eq!(response.body().size_hint().exact(), Some(0), "{reply:?}");
            assert_ne!(response.status(), StatusCode::CONTINUE);
            let length = response.headers().get(header::CONTENT_LENGTH);
            assert_eq!(
                length.map(|v| v.as_bytes()),
                field.map(str::as_bytes),
                "{reply:?}"
            );
            assert!(response.body_mut().take_idle().is_some(), "{reply:?}");
        }
    }

    #[tokio::test]
    async fn a_framing_length_travels_as_the_bodys_size() {
        let (addr, _heads) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(!response.headers().contains_key(header::CONTENT_LENGTH));
        assert_eq!(response.body().size_hint().exact(), Some(5));
        assert_eq!(read(response.body_mut()).await.expect("body").0, b"hello");
    }

    #[tokio::test]
    async fn connections_the_backend_will_close_are_not_reused() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let mut response = send(connect(addr).await, request(Method::GET, "/"))
                .await
                .expect("response");
            let _ = read(response.body_mut()).await.expect("body");
            assert!(response.body_mut().take_idle().is_none(), "{reply:?}");
        }
        let (addr, _heads) = backend(
            vec![b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(response.body_mut().take_idle().is_some());
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let result = send(connect(addr).await, request(Method::GET, "/")).await;
            assert!(
                matches!(result, Err(Error::Malformed(_))),
                "{reply:?}: {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn cut_off_responses_are_errors() {
        let (addr, _heads) = backend(vec![b"HTTP/1.1 200 OK\r\nContent-Le"], true).await;
        let result = send(connect(addr).await, request(Method::GET, "/")).await;
        assert!(matches!(result, Err(Error::Closed)), "{result:?}");
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
        ] {
            let (addr, _heads) = backend(vec![reply], true).await;
            let mut response = send(connect(addr).await, request(Method::GET, "/"))
                .await
                .expect("head");
            assert!(read(response.body_mut()).await.is_err(), "{reply:?}");
            assert!(response.body_mut().take_idle().is_none());
        }
    }

    #[tokio::test]
    async fn idle_connections_report_closes_and_stray_bytes() {
        let (addr, _heads) =
            backend(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"], true).await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        let mut conn = response.body_mut().take_idle().expect("reusable");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !conn.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "close never noticed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (addr, _heads) = backend(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 408 Timeout\r\n\r\n"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(
            response.body_mut().take_idle().is_none(),
            "stray bytes buffered"
        );
    }

    #[tokio::test]
    async fn a_switch_hands_over_the_connection_with_early_bytes() {
        let (addr, heads) = backend(
            vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nearly"],
            false,
        )
        .await;
        let mut get = request(Method::GET, "/ws");
        get.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("echo"));
        let response = send(connect(addr).await, get).await.expect("response");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut upgraded = response.into_body().into_upgraded().expect("upgraded");
        let mut early = [0u8; 5];
        upgraded.read_exact(&mut early).await.expect("early bytes");
        assert_eq!(&early, b"early");
        upgraded
            .write_all(b"after")
            .await
            .expect("write on the upgraded connection");
        let head = &heads.await.expect("heads")[0];
        assert!(
            memchr::memmem::find(head, b"\r\nupgrade: echo\r\n").is_some(),
            "{head:?}"
        );
    }

    #[test]
    fn chunk_sizes_parse_strictly() {
        assert_eq!(parse_chunk_size(b"0\r\n").ok(), Some(0));
        assert_eq!(parse_chunk_size(b"1aF\r\n").ok(), Some(0x1af));
        assert_eq!(parse_chunk_size(b"10 ;name=value\r\n").ok(), Some(16));
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"10\n",
            b"-1\r\n",
            b"1000000000000000\r\n",
        ] {
            assert!(parse_chunk_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_heads_say_how_the_body_follows() {
        let mut out = Vec::new();
        let framing = encode_head(
            &request(Method::GET, "http://app.test/x"),
            &forwarding(),
            &mut out,
        );
        assert_eq!(framing, Framing::Empty);
        assert_eq!(out, sent("GET /x HTTP/1.1\r\nhost: app.test\r\n"));
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
