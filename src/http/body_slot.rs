//! A client's request body on its way from fulcrum's HTTP/1.1 server to the handler: the connection reads and decodes it, and
//! hands it over one frame at a time through a slot the body and the connection share. The
//! connection reads only while the body asks for more (so a handler that answers without the
//! body, a `401` or a `413`, leaves the client's upload unread, and a client that sent
//! `Expect: 100-continue` is only told to go on once the body is wanted).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// Why a request body could not be read whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// The client's framing is broken (a bad chunk size, a missing CRLF): its fault, `400`.
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    /// The client closed the connection (or it failed) before the body ended.
    #[error("the client closed the connection inside the request body")]
    Gone,
}

impl From<BodyError> for std::io::Error {
    fn from(err: BodyError) -> Self {
        let kind = match err {
            BodyError::Malformed(_) => std::io::ErrorKind::InvalidData,
            BodyError::Gone => std::io::ErrorKind::UnexpectedEof,
        };
        std::io::Error::new(kind, err)
    }
}

/// What the body and the connection share.
#[derive(Debug, Default)]
struct Shared {
    /// The next frame, until the body takes it.
    frame: Option<Result<Frame<Bytes>, BodyError>>,
    /// No frame will follow the one in `frame` (if any).
    ended: bool,
    /// The body has asked for a frame at least once.
    wanted: bool,
    /// The body was dropped: nobody reads on.
    dropped: bool,
    /// The body waiting for a frame.
    taker: Option<Waker>,
    /// The connection waiting for the body to ask, or to make room.
    giver: Option<Waker>,
}

/// The request body the handler reads.
#[derive(Debug)]
pub(crate) struct Body {
    shared: Arc<Mutex<Shared>>,
    /// Bytes still due when the length was declared.
    remaining: Option<u64>,
}

/// The connection's end of a [`Body`].
#[derive(Debug)]
pub(crate) struct Feeder {
    shared: Arc<Mutex<Shared>>,
}

/// A body of `length` bytes (`None`: chunked), and the connection's end of it.
pub(crate) fn channel(length: Option<u64>) -> (Body, Feeder) {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let body = Body {
        shared: Arc::clone(&shared),
        remaining: length,
    };
    (body, Feeder { shared })
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // Nothing panics while holding the lock; a poisoned one holds consistent state.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the connection should do for the body next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// Read and hand over the next frame; `first`: the body asks for the first time.
    Frame {
        /// This is the body's first request for a frame.
        first: bool,
    },
    /// The body was dropped: stop reading it.
    Dropped,
}

impl Feeder {
    /// Ready when the body wants a frame and the slot is free, or the body is gone.
    pub(crate) fn poll_wanted(&mut self, cx: &mut Context<'_>, first: &mut bool) -> Poll<Wanted> {
        let mut shared = lock(&self.shared);
        if shared.dropped {
            return Poll::Ready(Wanted::Dropped);
        }
        if shared.wanted && shared.frame.is_none() {
            let was_first = *first;
            *first = false;
            return Poll::Ready(Wanted::Frame { first: was_first });
        }
        shared.giver = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Hands over the next frame; `last`: the body ends with it.
    pub(crate) fn give(&mut self, frame: Result<Frame<Bytes>, BodyError>, last: bool) {
        let mut shared = lock(&self.shared);
        shared.ended |= last || frame.is_err();
        shared.frame = Some(frame);
        if let Some(taker) = shared.taker.take() {
            taker.wake();
        }
    }

    /// The body ended with no further frame.
    pub(crate) fn finish(&mut self) {
        let mut shared = lock(&self.shared);
        shared.ended = true;
        if let Some(taker) = shared.taker.take() {
            taker.wake();
        }
    }
}

impl Drop for Feeder {
    /// A connection that stops feeding a body that has not ended fails it: the client is gone.
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        if !shared.ended {
            shared.ended = true;
            if shared.frame.is_none() {
                shared.frame = Some(Err(BodyError::Gone));
            }
        }
        if let Some(taker) = shared.taker.take() {
            taker.wake();
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        let mut shared = lock(&self.shared);
        shared.dropped = true;
        if let Some(giver) = shared.giver.take() {
            giver.wake();
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut shared = lock(&self.shared);
        if let Some(frame) = shared.frame.take() {
            if let Some(giver) = shared.giver.take() {
                giver.wake();
            }
            drop(shared);
            if let (Ok(data), Some(remaining)) = (&frame, self.remaining.as_mut()) {
                let len = data.data_ref().map_or(0, |data| data.len() as u64);
                *remaining = remaining.saturating_sub(len);
            }
            return Poll::Ready(Some(frame));
        }
        if shared.ended {
            return Poll::Ready(None);
        }
        shared.wanted = true;
        shared.taker = Some(cx.waker().clone());
        if let Some(giver) = shared.giver.take() {
            giver.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        let shared = lock(&self.shared);
        shared.ended && shared.frame.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_pass_one_at_a_time_and_only_when_asked_for() {
        let (mut body, mut feeder) = channel(Some(10));
        let mut first = true;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(
            feeder.poll_wanted(&mut cx, &mut first).is_pending(),
            "not asked yet"
        );
        assert!(Pin::new(&mut body).poll_frame(&mut cx).is_pending());
        assert_eq!(
            feeder.poll_wanted(&mut cx, &mut first),
            Poll::Ready(Wanted::Frame { first: true })
        );
        feeder.give(Ok(Frame::data(Bytes::from_static(b"hello"))), false);
        assert!(
            feeder.poll_wanted(&mut cx, &mut first).is_pending(),
            "slot full"
        );
        let frame = body.frame().await.expect("frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        feeder.give(Ok(Frame::data(Bytes::from_static(b"world"))), true);
        let frame = body.frame().await.expect("frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "world");
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream_now());
    }

    #[tokio::test]
    async fn a_connection_gone_mid_body_fails_it_and_a_dropped_body_stops_the_reads() {
        let (mut body, feeder) = channel(None);
        drop(feeder);
        assert_eq!(
            body.frame().await.expect("frame").err(),
            Some(BodyError::Gone)
        );
        let (body, mut feeder) = channel(None);
        drop(body);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            feeder.poll_wanted(&mut cx, &mut true),
            Poll::Ready(Wanted::Dropped)
        );
    }

    impl Body {
        fn is_end_stream_now(&self) -> bool {
            http_body::Body::is_end_stream(self)
        }
    }
}
