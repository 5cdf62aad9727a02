//! A client's upload in progress: when its bytes stop for the listener's `idle_timeout` while
//! fulcrum waits for them, the client gets `408` (its fault, no backend blamed); when they stop
//! because the backend no longer reads them, `504`.
//!
//! `request_timeout` only starts once the request is sent whole, so an upload of any size
//! succeeds as long as bytes keep flowing; this watch is what bounds one that stops. It counts
//! quiet ticks like the connection's idle watchdog, which holds its own close back meanwhile
//! (see `Activity::open_upload`), so the `408` is written before the connection closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::upstream::request_body::RequestBody;
use http::Response;

use crate::proxy::activity::{self, Activity, OpenUpload};
use crate::proxy::body::ProxyBody;
use crate::proxy::error::{ClientFault, ProxyError};
use crate::upstream::request_body::Progress;

/// The stall watch of one request's upload.
#[derive(Debug)]
pub(super) struct Upload {
    progress: Arc<Progress>,
    idle: Duration,
    _open: OpenUpload,
}

impl Upload {
    /// A watch for `body`, and the progress its request body reports to; `None` for a request
    /// with no body left to send.
    pub(super) fn watch(
        activity: &Arc<Activity>,
        body: &RequestBody,
        idle: Duration,
    ) -> Option<(Upload, Arc<Progress>)> {
        if http_body::Body::is_end_stream(body) {
            return None;
        }
        let progress = Arc::new(Progress::default());
        let upload = Upload {
            progress: Arc::clone(&progress),
            idle,
            _open: activity.open_upload(),
        };
        Some((upload, progress))
    }

    /// Resolves with the error to answer once the upload has been quiet for `idle`; never,
    /// once the body has ended.
    async fn stalled(&self) -> ProxyError {
        let (tick, idle_ticks) = activity::quiet_ticks(self.idle);
        let mut ticker = activity::idle_ticker(tick);
        let mut quiet = 0;
        loop {
            ticker.tick().await;
            if self.progress.ended() {
                return std::future::pending().await;
            }
            if self.progress.take_moved() {
                quiet = 0;
                continue;
            }
            quiet += 1;
            if quiet >= idle_ticks {
                return if self.progress.waiting_on_client() {
                    ProxyError::Client(ClientFault::Stalled)
                } else {
                    ProxyError::UploadNotRead(self.idle)
                };
            }
        }
    }
}

/// Runs `forwarding` (the request's attempts), cut short with the stall's error when `upload`
/// stalls first. Dropping the attempts closes the backend connection the body was going to.
pub(super) fn bound<'a, F>(
    upload: Option<&'a Upload>,
    forwarding: F,
) -> Bounded<F, impl Future<Output = ProxyError> + 'a>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    Bounded {
        forwarding,
        stalled: upload.map(Upload::stalled),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`bound`]. Not an `async fn`: one would keep the attempts' future twice,
    /// as its argument and as the value it awaits (kilobytes per request in flight).
    pub(super) struct Bounded<F, S> {
        #[pin]
        forwarding: F,
        #[pin]
        stalled: Option<S>,
    }
}

impl<F, S> Future for Bounded<F, S>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
    S: Future<Output = ProxyError>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.forwarding.poll(cx) {
            return Poll::Ready(outcome);
        }
        match this.stalled.as_pin_mut() {
            Some(stalled) => stalled.poll(cx).map(Err),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attempts that never end, as large as a real request's state machine.
    struct Attempts {
        _state: [u8; 4096],
    }

    impl Future for Attempts {
        type Output = Result<Response<ProxyBody>, ProxyError>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Pending
        }
    }

    #[test]
    fn bounding_keeps_the_attempts_once() {
        let bounded = bound(None, Attempts { _state: [0; 4096] });
        let size = std::mem::size_of_val(&bounded);
        assert!(
            size < 2 * 4096,
            "{size} bytes: the attempts are stored twice"
        );
    }
}
