//! One client connection's HTTP/1.1 exchanges, one after the other: read a head, hand the
//! request to the handler while feeding it the body it asks for, write the response, and go on
//! while the connection may be kept. Between requests it holds no buffer at all.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::encode::{self, Exchange, Framing as Out};
use super::head::{self, Framing, HeadError};
use crate::http::body_slot::{self as body, BodyError, Feeder, Wanted};
use crate::http::decode::{Decoded, Decoder};
use crate::http::wire;
use crate::proxy::activity::Activity;
use crate::upstream::request_body::{BoxedRequest, IncomingBody, RequestBody};

/// Bytes a read for a request head asks for: a whole typical head (browsers' with cookies
/// included) in one read. The buffer is given back as soon as it holds nothing unread.
const HEAD_READ: usize = 4 * 1024;
/// Bytes a read for a request body asks for, into the connection's buffer.
const BODY_READ: usize = 8 * 1024;
/// Body data due from which a read goes into a buffer of its own (handed on without a copy).
const LARGE_READ: u64 = 16 * 1024;
/// Largest such read.
const MAX_READ: usize = 64 * 1024;

/// The request a head starts, how its response is to be written, and the feeding of its body
/// (none without one). A function of its own, so the head's parts take no room in the
/// server's future while the handler runs.
fn start_exchange(head: head::Head) -> (BoxedRequest, Exchange, Option<Feeding>) {
    let head::Head {
        mut request,
        framing,
        keep_alive,
        expects_continue,
        trailers,
        ..
    } = head;
    let exchange = Exchange {
        head: request.method() == Method::HEAD,
        version: request.version(),
        keep_alive,
        trailers,
    };
    let (body, feeding) = match framing {
        Framing::Empty => return (request, exchange, None),
        Framing::Length(length) => {
            let (body, feeder) = body::channel(Some(length));
            let feeding = Feeding::new(feeder, Decoder::length(length), expects_continue);
            (body, feeding)
        }
        Framing::Chunked => {
            let (body, feeder) = body::channel(None);
            let feeding = Feeding::new(feeder, Decoder::Size, expects_continue);
            (body, feeding)
        }
    };
    *request.body_mut() = RequestBody::client(IncomingBody::Http1 { body });
    (request, exchange, Some(feeding))
}

/// `feed`'s next step; never, without one (a disabled `select!` branch still builds its
/// future).
async fn step_if<T: AsyncRead + AsyncWrite + Unpin>(
    feed: Option<&mut Feeding>,
    io: &mut T,
    buf: &mut BytesMut,
) -> Fed {
    match feed {
        Some(feed) => feed.step(io, buf).await,
        None => std::future::pending().await,
    }
}

/// How the exchanges on a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The client is done, or the connection must close: close it (gracefully).
    Close,
    /// Stopped between two requests, as asked (to park, or to drain).
    Stopped,
    /// A `101` went out: the connection carries another protocol from here.
    Upgraded,
}

/// The HTTP/1.1 server side of one client connection.
pub(crate) struct Server<'a, T> {
    io: &'a mut T,
    /// Bytes read and not yet consumed; no allocation while empty.
    buf: BytesMut,
    max_head: usize,
    activity: &'a Activity,
    /// Heads started on the connection, for the head timeout's bookkeeping.
    heads: u32,
    /// A head is incomplete and published as awaited.
    awaiting: bool,
}

impl<'a, T: AsyncRead + AsyncWrite + Unpin> Server<'a, T> {
    /// A server on `io`, with `start` the bytes already read from it; `awaited`: the first
    /// head is already published as awaited (a new connection's first request).
    pub(crate) fn new(
        io: &'a mut T,
        start: Bytes,
        max_head: usize,
        activity: &'a Activity,
        awaited: bool,
    ) -> Self {
        let buf = match start.try_into_mut() {
            Ok(buf) => buf,
            Err(start) => BytesMut::from(&start[..]),
        };
        Self {
            io,
            buf,
            max_head,
            activity,
            heads: u32::from(awaited),
            awaiting: awaited,
        }
    }

    /// Bytes read and not consumed (the start of a tunnel after an upgrade).
    pub(crate) fn into_unread(mut self) -> Bytes {
        self.release_if_empty();
        self.buf.freeze()
    }

    /// Gives the read buffer back once everything in it is consumed: an empty buffer still
    /// holds its whole allocation, and a connection between requests should hold none.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
    }

    /// Serves requests until the connection ends or, between two requests, `stop` is set.
    /// `handle` answers a request; `refuse` answers a head that cannot be served.
    pub(crate) async fn serve<H, Fut, R, B>(
        &mut self,
        stop: &AtomicBool,
        mut handle: H,
        refuse: R,
    ) -> io::Result<Ended>
    where
        H: FnMut(BoxedRequest) -> Fut,
        Fut: Future<Output = Result<Response<B>, Infallible>>,
        R: Fn(HeadError) -> Response<B>,
        B: http_body::Body<Data = Bytes>,
    {
        let activity = self.activity;
        loop {
            let head = match self.read_head(stop).await? {
                Next::Head(head) => head,
                Next::Stopped => return Ok(Ended::Stopped),
                Next::Closed => return Ok(Ended::Close),
                Next::Refused(err) => {
                    let _open = activity.open_h1_exchange();
                    let exchange = Exchange {
                        head: false,
                        version: http::Version::HTTP_11,
                        keep_alive: false,
                        trailers: false,
                    };
                    self.respond(refuse(err), exchange, &mut None).await?;
                    return Ok(Ended::Close);
                }
            };
            // Open from the whole head to the end of the response (or of this connection):
            // the connection is not parked meanwhile.
            let open = activity.open_h1_exchange();
            let (request, mut exchange, mut feeding) = start_exchange(head);
            // A future of its own: the handler's (kilobytes) is gone before the response is
            // written, and the two share their room in this one.
            let response = self.answer(&mut handle, request, &mut feeding).await;
            // A connection asked to stop (the listener drains) ends after this response.
            exchange.keep_alive &= !stop.load(Ordering::Relaxed);
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let kept = self.respond(response, exchange, &mut feeding).await?;
            drop(open);
            if switching {
                return Ok(Ended::Upgraded);
            }
            // A body the handler left unread is skipped if it has arrived whole (the common
            // case of a small one refused or failed early); otherwise the next request's head
            // cannot be found, so the connection closes (and lingers over the rest).
            let body_done = match feeding.as_mut() {
                None => true,
                Some(feed) => feed.outcome == Some(Fed::Done) || feed.skip_buffered(&mut self.buf),
            };
            if !kept || !body_done {
                return Ok(Ended::Close);
            }
            self.release_if_empty();
        }
    }

    /// Reads until a whole head is buffered, the client closes, or (between requests) `stop`.
    async fn read_head(&mut self, stop: &AtomicBool) -> io::Result<Next> {
        // Bytes of an incomplete head already parsed: the head is parsed again only once a
        // line has ended since, so a head trickling in a byte per read costs a parse per line
        // (at most `head::MAX_FIELDS` and the request line), not one per byte.
        let mut parsed = 0;
        loop {
            let line_ended = self
                .buf
                .get(parsed..)
                .is_some_and(|new| memchr::memchr(b'\n', new).is_some());
            if line_ended || self.buf.len() > self.max_head {
                parsed = self.buf.len();
                match head::parse(&self.buf, self.max_head) {
                    Ok(Some(head)) => {
                        self.buf.advance(head.len);
                        self.release_if_empty();
                        if self.awaiting {
                            self.awaiting = false;
                            self.activity.await_head(0);
                        }
                        return Ok(Next::Head(head));
                    }
                    Ok(None) => {}
                    Err(err) => return Ok(Next::Refused(err)),
                }
            }
            if !self.buf.is_empty() && !self.awaiting {
                // A head has started and is not whole: its deadline runs from now.
                self.awaiting = true;
                self.heads = self.heads.wrapping_add(1).max(1);
                self.activity.await_head(self.heads);
            }
            let read = std::future::poll_fn(|cx| {
                if self.buf.is_empty() && stop.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(None));
                }
                if self.buf.is_empty() {
                    // Between requests no buffer is held: a read takes one of the size of
                    // what came.
                    return crate::io::poll_read_landing(&mut *self.io, cx, &mut self.buf)
                        .map_ok(Some);
                }
                if self.buf.capacity() - self.buf.len() < 512 {
                    self.buf.reserve(HEAD_READ);
                }
                tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *self.io), cx, &mut self.buf)
                    .map_ok(Some)
            })
            .await?;
            match read {
                None => return Ok(Next::Stopped),
                Some(0) => {
                    // The client closed inside a line: a head already malformed gets the
                    // answer it would have had, had it come in one read.
                    if parsed < self.buf.len() {
                        if let Err(err) = head::parse(&self.buf, self.max_head) {
                            return Ok(Next::Refused(err));
                        }
                    }
                    return Ok(Next::Closed);
                }
                Some(_) => {}
            }
        }
    }

    /// `handle`'s answer to `request`, feeding it the request body meanwhile as it asks. The
    /// handler's future is made here, not passed in: an argument would be kept twice.
    async fn answer<H, Fut, B>(
        &mut self,
        handle: &mut H,
        request: BoxedRequest,
        feeding: &mut Option<Feeding>,
    ) -> Response<B>
    where
        H: FnMut(BoxedRequest) -> Fut,
        Fut: Future<Output = Result<Response<B>, Infallible>>,
    {
        let mut answer = pin!(handle(request));
        loop {
            let feed = feeding.as_mut().filter(|feed| feed.outcome.is_none());
            let feeds = feed.is_some();
            tokio::select! {
                biased;
                Ok(response) = answer.as_mut() => return response,
                fed = step_if(feed, self.io, &mut self.buf), if feeds => {
                    if let Some(feed) = feeding.as_mut().filter(|_| fed != Fed::More) {
                        feed.outcome = Some(fed);
                    }
                }
            }
        }
    }

    /// Writes `response` to the client, feeding the request body meanwhile if it is still
    /// wanted; whether the connection may carry another request.
    async fn respond<B: http_body::Body<Data = Bytes>>(
        &mut self,
        response: Response<B>,
        exchange: Exchange,
        feeding: &mut Option<Feeding>,
    ) -> io::Result<bool> {
        let mut out = Vec::with_capacity(encode::size_of(response.headers()));
        let (framing, keep_alive) = encode::head(&response, exchange, &mut out);
        // Only the body is kept while it is written: the head's parts go here.
        let mut body = pin!(response.into_body());
        let mut head = Some(out);
        let mut written = 0u64;
        loop {
            if framing == Out::None {
                if let Some(head) = head.take() {
                    self.io.write_all(&head).await?;
                }
                break;
            }
            let frame = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
                Poll::Pending if head.is_some() => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
                Poll::Ready(frame) => Poll::Ready(Some(frame)),
            });
            let frame = match feeding.as_mut().filter(|feed| feed.outcome.is_none()) {
                None => frame.await,
                Some(feed) => {
                    let mut frame = pin!(frame);
                    loop {
                        tokio::select! {
                            biased;
                            frame = frame.as_mut() => break frame,
                            fed = feed.step(self.io, &mut self.buf) => {
                                if fed != Fed::More {
                                    feed.outcome = Some(fed);
                                    break frame.as_mut().await;
                                }
                            }
                        }
                    }
                }
            };
            let Some(frame) = frame else {
                // The body has nothing yet: the head goes out on its own.
                if let Some(head) = head.take() {
                    self.io.write_all(&head).await?;
                    self.io.flush().await?;
                }
                continue;
            };
            match frame {
                None => {
                    let end: &[u8] = if framing == Out::Chunked {
                        b"0\r\n\r\n"
                    } else {
                        b""
                    };
                    self.write(head.take().as_deref(), b"", b"", end).await?;
                    break;
                }
                Some(Err(_)) => return Ok(false),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        written += data.len() as u64;
                        if let Out::Length(length) = framing {
                            if written > length {
                                return Ok(false);
                            }
                        }
                        // The body may say it has ended with its last frame: then nothing more
                        // is polled, and a chunked body's end goes out with that frame.
                        let last = body.is_end_stream();
                        if framing == Out::Chunked {
                            let size = format!("{:x}\r\n", data.len());
                            let end: &[u8] = if last { b"\r\n0\r\n\r\n" } else { b"\r\n" };
                            self.write(head.take().as_deref(), size.as_bytes(), &data, end)
                                .await?;
                        } else {
                            self.write(head.take().as_deref(), b"", &data, b"").await?;
                        }
                        if last {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), framing) {
                            // Only a client whose `TE` accepts trailers gets them (as hyper did).
                            let trailers = trailers.iter().filter(|_| exchange.trailers);
                            let end = wire::last_chunk(trailers);
                            self.write(head.take().as_deref(), b"", b"", &end).await?;
                            break;
                        }
                    }
                },
            }
        }
        self.io.flush().await?;
        let complete = match framing {
            Out::Length(length) => written == length,
            Out::UntilClose => false,
            Out::None | Out::Chunked => true,
        };
        Ok(keep_alive && complete)
    }

    /// Writes `head` (if any), then `prefix`, `data` and `suffix`, in as few writes as the
    /// socket takes.
    async fn write(
        &mut self,
        head: Option<&[u8]>,
        prefix: &[u8],
        data: &[u8],
        suffix: &[u8],
    ) -> io::Result<()> {
        let mut parts = [
            IoSlice::new(head.unwrap_or_default()),
            IoSlice::new(prefix),
            IoSlice::new(data),
            IoSlice::new(suffix),
        ];
        let mut slices = &mut parts[..];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let n = self.io.write_vectored(slices).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, n);
        }
        Ok(())
    }
}

/// What reading for a head found.
enum Next {
    Head(head::Head),
    Stopped,
    Closed,
    Refused(HeadError),
}

/// A request body being read for the handler.
struct Feeding {
    feeder: Feeder,
    decoder: Decoder,
    /// Nothing asked for yet.
    first: bool,
    /// A `100 Continue` is owed once the body is first wanted.
    expects_continue: bool,
    /// How feeding ended, once it has.
    outcome: Option<Fed>,
}

/// What one feeding step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fed {
    /// A frame went to the body; more follow.
    More,
    /// The body has ended.
    Done,
    /// The body was dropped unread, or failed (broken framing, the client gone).
    Failed,
}

impl Feeding {
    fn new(feeder: Feeder, decoder: Decoder, expects_continue: bool) -> Self {
        Self {
            feeder,
            decoder,
            first: true,
            expects_continue,
            outcome: None,
        }
    }

    /// Skips what is left of a body nobody reads, if all of it is in `buf`; whether it was.
    /// Broken framing, or a client gone mid-body, never is.
    fn skip_buffered(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
                Ok(Decoded::End) => return true,
                Ok(Decoded::More(_)) | Err(_) => return false,
            }
        }
    }

    /// Waits until the body wants a frame, then reads and hands over one.
    async fn step<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        buf: &mut BytesMut,
    ) -> Fed {
        let wanted = std::future::poll_fn(|cx| self.feeder.poll_wanted(cx, &mut self.first)).await;
        let first = match wanted {
            Wanted::Dropped => return Fed::Failed,
            Wanted::Frame { first } => first,
        };
        // The client waits for a `100` before sending a body nobody asked for yet.
        if first && self.expects_continue && buf.is_empty() {
            let sent = io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
            if sent.is_err() || io.flush().await.is_err() {
                self.feeder.give(Err(BodyError::Gone), true);
                return Fed::Failed;
            }
        }
        loop {
            match self.decoder.decode(buf) {
                Ok(Decoded::Data(data)) => {
                    let last = self.decoder.is_done();
                    self.feeder.give(Ok(Frame::data(data)), last);
                    return if last { Fed::Done } else { Fed::More };
                }
                Ok(Decoded::Trailers(trailers)) => {
                    self.feeder.give(Ok(Frame::trailers(trailers)), true);
                    return Fed::Done;
                }
                Ok(Decoded::End) => {
                    self.feeder.finish();
                    return Fed::Done;
                }
                Ok(Decoded::More(due)) => {
                    let read = match due {
                        Some(due) if due >= LARGE_READ && buf.is_empty() => {
                            let want = usize::try_from(due).unwrap_or(MAX_READ).min(MAX_READ);
                            let mut own = BytesMut::with_capacity(want);
                            match io_read(io, &mut own).await {
                                Ok(0) | Err(_) => 0,
                                Ok(n) => {
                                    self.decoder.consumed(n as u64);
                                    let last = self.decoder.is_done();
                                    self.feeder.give(Ok(Frame::data(own.freeze())), last);
                                    return if last { Fed::Done } else { Fed::More };
                                }
                            }
                        }
                        _ => {
                            buf.reserve(BODY_READ);
                            io_read(io, buf).await.unwrap_or(0)
                        }
                    };
                    if read == 0 {
                        let err = match self.decoder.closed() {
                            Ok(()) => {
                                self.feeder.finish();
                                return Fed::Done;
                            }
                            Err(_) => BodyError::Gone,
                        };
                        self.feeder.give(Err(err), true);
                        return Fed::Failed;
                    }
                }
                Err(err) => {
                    let crate::http::decode::DecodeError::Malformed(what) = err;
                    self.feeder.give(Err(BodyError::Malformed(what)), true);
                    return Fed::Failed;
                }
            }
        }
    }
}

/// One read into `buf`; `Ok(0)` at the end of the stream.
async fn io_read<T: AsyncRead + Unpin>(io: &mut T, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *io), cx, buf))
        .await
}
