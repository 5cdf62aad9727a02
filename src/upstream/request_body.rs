//! The body of every request fulcrum sends to a backend, over either protocol.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::{Notify, oneshot};

use crate::http::headers;

pin_project! {
    /// Body of every request fulcrum sends to a backend: the client's body streamed through
    /// (its trailers without the fields a trailer may not carry; for a mirrored request, copied
    /// on the way), bytes held whole (a mirrored copy), or nothing (a bodiless request, or one
    /// replayed on another backend).
    #[derive(Debug)]
    #[project = RequestBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on pinned fields
    pub enum RequestBody {
        Client {
            #[pin]
            body: IncomingBody,
            sent: Option<Arc<Notify>>,
            // Set for an upload the proxy watches for stalls.
            progress: Option<Arc<Progress>>,
            // Boxed: a mirrored request is rare, and every request's future holds this enum.
            copy: Option<Box<BodyCopy>>,
        },
        Whole {
            data: Option<Bytes>,
        },
        Empty,
    }
}

/// A request on its way through fulcrum, boxed once where its head is parsed: the server, the
/// handler, the forwarder and the backend connection each move a pointer rather than the head
/// (224 bytes, moved a dozen times a request before), and the head a backend connection keeps
/// for a replay is the same allocation.
pub(crate) type BoxedRequest = Box<http::Request<RequestBody>>;

/// A copy of `request`'s head, its body empty: to replay it on another backend, or to mirror it.
pub(crate) fn head_copy<B>(request: &http::Request<B>) -> BoxedRequest {
    let mut head = Box::new(http::Request::new(RequestBody::Empty));
    *head.method_mut() = request.method().clone();
    *head.uri_mut() = request.uri().clone();
    *head.version_mut() = request.version();
    *head.headers_mut() = request.headers().clone();
    head
}

impl RequestBody {
    /// The client's body, streamed through.
    pub(crate) fn client(body: IncomingBody) -> RequestBody {
        RequestBody::Client {
            body,
            sent: None,
            progress: None,
            copy: None,
        }
    }

    /// Has a client's body copied for a mirror on the way when `copy` is given, and report its
    /// advance to `progress` when given; nothing for a body of another kind.
    pub(crate) fn watch(&mut self, copy: Option<Box<BodyCopy>>, progress: Option<Arc<Progress>>) {
        if let RequestBody::Client {
            progress: watched,
            copy: copied,
            ..
        } = self
        {
            *watched = progress;
            *copied = copy;
        }
    }

    /// A signal for when the body has been read whole (for HTTP/2 backends, whose client
    /// sends it on a task of its own): `request_timeout` starts then. `None` when there is
    /// nothing left to send.
    pub(crate) fn track_sent(&mut self) -> Option<Arc<Notify>> {
        match self {
            RequestBody::Client { body, sent, .. } if !body.is_end_stream() => {
                Some(Arc::clone(sent.get_or_insert_with(Arc::default)))
            }
            RequestBody::Client { .. } | RequestBody::Whole { .. } | RequestBody::Empty => None,
        }
    }
}

/// How an upload advances, for the proxy's stall watch: whether a frame arrived since the
/// watch last looked, whether the writer is waiting on the client (rather than on a backend
/// that stopped reading), and whether the body has ended.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    moved: AtomicBool,
    waiting: AtomicBool,
    ended: AtomicBool,
}

impl Progress {
    /// Whether a frame arrived since the last call; clears the mark.
    pub(crate) fn take_moved(&self) -> bool {
        self.moved.swap(false, Ordering::Relaxed)
    }

    /// Whether the body's reader is waiting for the client's next bytes.
    pub(crate) fn waiting_on_client(&self) -> bool {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Whether the body has ended (or failed): nothing is left to stall.
    pub(crate) fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    fn record<T>(&self, poll: &Poll<Option<T>>, ended: bool) {
        match poll {
            Poll::Pending => self.waiting.store(true, Ordering::Relaxed),
            Poll::Ready(Some(_)) => {
                self.waiting.store(false, Ordering::Relaxed);
                self.moved.store(true, Ordering::Relaxed);
            }
            Poll::Ready(None) => {}
        }
        if ended || matches!(poll, Poll::Ready(None)) {
            self.ended.store(true, Ordering::Relaxed);
        }
    }
}

/// A copy of a body taken while it streams to its backend, handed over whole when the body has
/// ended; dropped (and the receiver told so) when the body fails or outgrows `max`.
#[derive(Debug)]
pub struct BodyCopy {
    buf: BytesMut,
    max: usize,
    done: Option<oneshot::Sender<Bytes>>,
}

impl BodyCopy {
    /// A copy of at most `max` bytes, and where it arrives once complete.
    pub fn new(max: usize) -> (BodyCopy, oneshot::Receiver<Bytes>) {
        let (done, receiver) = oneshot::channel();
        let copy = BodyCopy {
            buf: BytesMut::new(),
            max,
            done: Some(done),
        };
        (copy, receiver)
    }

    fn push(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.buf.len() + data.len() > self.max {
            self.abandon();
            return;
        }
        self.buf.extend_from_slice(data);
    }

    fn abandon(&mut self) {
        self.done = None;
        self.buf = BytesMut::new();
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            // The mirror may have given up waiting; the original request goes on regardless.
            let _ = done.send(std::mem::take(&mut self.buf).freeze());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            RequestBodyProj::Client {
                mut body,
                sent,
                progress,
                copy,
            } => {
                let polled = body.as_mut().poll_frame(cx);
                if let Some(progress) = progress {
                    let failed = matches!(polled, Poll::Ready(Some(Err(_))));
                    progress.record(&polled, failed || body.is_end_stream());
                }
                let frame = ready!(polled).map(|frame| frame.map(headers::filter_trailer_frame));
                // Writers may stop polling once the body says it has ended.
                let ended = match &frame {
                    None => true,
                    Some(Ok(_)) => body.is_end_stream(),
                    Some(Err(_)) => false,
                };
                if let Some(copy) = copy {
                    match &frame {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                copy.push(data);
                            }
                        }
                        Some(Err(_)) => copy.abandon(),
                        None => {}
                    }
                    if ended {
                        copy.finish();
                    }
                }
                if let Some(sent) = sent.as_ref().filter(|_| ended) {
                    // A permit is stored if nobody waits yet.
                    sent.notify_one();
                }
                Poll::Ready(frame)
            }
            RequestBodyProj::Whole { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Whole { data } => data.is_none(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

pin_project! {
    /// Body of every request a client sends: read by fulcrum's own HTTP/1.1 server, or by
    /// hyper's HTTP/2 server.
    #[project = IncomingBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on pinned fields
    #[derive(Debug)]
    pub enum IncomingBody {
        /// Read off an HTTP/1.1 connection.
        Http1 {
            body: crate::http::body_slot::Body,
        },
        /// A stream of an HTTP/2 connection.
        Http2 {
            #[pin]
            body: Incoming,
        },
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            IncomingBodyProj::Http1 { body } => Pin::new(body).poll_frame(cx).map(|frame| {
                frame.map(|frame| {
                    frame.map_err(|err| Box::new(std::io::Error::from(err)) as Self::Error)
                })
            }),
            IncomingBodyProj::Http2 { body } => body
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Self::Error::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            IncomingBody::Http1 { body } => body.is_end_stream(),
            IncomingBody::Http2 { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            IncomingBody::Http1 { body } => body.size_hint(),
            IncomingBody::Http2 { body } => body.size_hint(),
        }
    }
}
