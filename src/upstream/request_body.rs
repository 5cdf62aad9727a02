//! The body of every request fulcrum sends to a backend, over either protocol.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::sync::Notify;

pin_project! {
    /// Body of every request fulcrum sends to a backend: the client's body streamed through,
    /// or nothing (a bodiless request replayed on another backend).
    #[derive(Debug)]
    #[project = RequestBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on pinned fields
    pub enum RequestBody {
        Client {
            #[pin]
            body: Incoming,
            sent: Option<Arc<Notify>>,
        },
        Empty,
    }
}

impl RequestBody {
    /// The client's body, streamed through.
    pub(crate) fn client(body: Incoming) -> RequestBody {
        RequestBody::Client { body, sent: None }
    }

    /// A signal for when the body has been read whole (for HTTP/2 backends, whose client
    /// sends it on a task of its own): `request_timeout` starts then. `None` when there is
    /// nothing left to send.
    pub(crate) fn track_sent(&mut self) -> Option<Arc<Notify>> {
        match self {
            RequestBody::Client { body, sent } if !body.is_end_stream() => {
                Some(Arc::clone(sent.get_or_insert_with(Arc::default)))
            }
            RequestBody::Client { .. } | RequestBody::Empty => None,
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
            RequestBodyProj::Client { mut body, sent } => {
                let frame = body.as_mut().poll_frame(cx);
                let ended = match &frame {
                    Poll::Ready(None) => true,
                    Poll::Ready(Some(Ok(_))) => body.is_end_stream(),
                    Poll::Ready(Some(Err(_))) | Poll::Pending => false,
                };
                if let Some(sent) = sent.as_ref().filter(|_| ended) {
                    // A permit is stored if nobody waits yet.
                    sent.notify_one();
                }
                frame
            }
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body, .. } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body, .. } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
