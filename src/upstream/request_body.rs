//! The body of every request fulcrum sends to a backend, over either protocol.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;

use crate::http::headers;

pin_project! {
    /// Body of every request fulcrum sends to a backend: the client's body streamed through
    /// (its trailers without the fields a trailer may not carry), or nothing (a bodiless request replayed on another backend).
    #[derive(Debug)]
    #[project = RequestBodyProj]
    #[allow(missing_docs)] // pin-project-lite cannot carry docs on pinned fields
    pub enum RequestBody {
        Client {
            #[pin]
            body: Incoming,
        },
        Empty,
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
            RequestBodyProj::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client { body } => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client { body } => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
