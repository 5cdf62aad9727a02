//! The body of every request fulcrum sends to a backend, over either protocol.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use crate::http::headers;

pin_project! {
    /// Body of every request fulcrum sends to a backend: the client's body streamed through
    /// (its trailers without the fields a trailer may not carry; for a mirrored request, copied on
    /// the way), bytes held whole (a mirrored copy), or nothing (a bodiless request replayed on
    /// another backend).
    #[derive(Debug)]
    #[project = RequestBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on pinned fields
    pub enum RequestBody {
        Client {
            #[pin]
            body: Incoming,
        },
        Copied {
            #[pin]
            body: Incoming,
            // Boxed: a mirrored request is rare, and every request's future holds this enum.
            copy: Box<BodyCopy>,
        },
        Whole {
            data: Option<Bytes>,
        },
        Empty,
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
            self.done = None;
            self.buf = BytesMut::new();
            return;
        }
        self.buf.extend_from_slice(data);
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            RequestBodyProj::Client { body } => {
                body.poll_frame(cx).map_ok(headers::filter_trailer_frame)
            }
            RequestBodyProj::Copied { mut body, copy } => {
                let frame = ready!(body.as_mut().poll_frame(cx))
                    .map(|frame| frame.map(headers::filter_trailer_frame));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            copy.push(data);
                        }
                        // Writers may stop polling once the body says it has ended.
                        if body.is_end_stream() {
                            copy.finish();
                        }
                    }
                    Some(Err(_)) => copy.done = None,
                    None => copy.finish(),
                }
                Poll::Ready(frame)
            }
            RequestBodyProj::Whole { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body } | RequestBody::Copied { body, .. } => body.is_end_stream(),
            RequestBody::Whole { data } => data.is_none(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body } | RequestBody::Copied { body, .. } => body.size_hint(),
            RequestBody::Whole { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
