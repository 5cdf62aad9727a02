//! Sending a route's mirror copy: the request's head and (once it has streamed to the primary
//! backend) its body go to the mirror pool in a task of their own; the response is read and
//! dropped. Nothing here can delay or fail the original request: a copy that cannot be made
//! or sent is counted and forgotten.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tokio::time::Instant;

use super::forward::{Arrival, forward};
use crate::http::headers::{self, ClientInfo};
use crate::metrics::MirrorOutcome;
use crate::route::Mirror;
use crate::upstream::request_body::{self, BodyCopy};
use crate::upstream::{BoxedRequest, RequestBody};

/// How long a copy waits for the original body to finish streaming, and for its own response.
const COPY_LIMIT: Duration = Duration::from_secs(30);

/// A copy on its way: taken when the request was routed, sent once its body is complete.
#[derive(Debug)]
pub(super) struct Copy {
    mirror: Arc<Mirror>,
    permit: OwnedSemaphorePermit,
    head: BoxedRequest,
    body: Pending,
}

#[derive(Debug)]
enum Pending {
    /// The request has no body.
    Empty,
    /// The copy of the body arrives here once the original has streamed.
    Streaming(oneshot::Receiver<Bytes>),
}

impl Copy {
    /// A copy of `request` for `mirror`, if the mirror takes this one; the body copier to put
    /// around the request's body comes with it. Upgrades are never mirrored.
    pub(super) fn take(
        mirror: &Arc<Mirror>,
        request: &Request<RequestBody>,
    ) -> Option<(Copy, Option<Box<BodyCopy>>)> {
        if request.headers().contains_key(http::header::UPGRADE) {
            return None;
        }
        // A body of unknown length is copied as it streams and dropped if it outgrows the cap.
        if request.body().size_hint().lower() > mirror.max_body as u64 {
            mirror.metrics.record(MirrorOutcome::Body);
            return None;
        }
        let permit = mirror.admit()?;
        let head = request_body::head_copy(request);
        let (body, copier) = if request.body().is_end_stream() {
            (Pending::Empty, None)
        } else {
            let (copier, receiver) = BodyCopy::new(mirror.max_body);
            (Pending::Streaming(receiver), Some(Box::new(copier)))
        };
        let copy = Copy {
            mirror: Arc::clone(mirror),
            permit,
            head,
            body,
        };
        Some((copy, copier))
    }

    /// Sends the copy in a task of its own, as `client` sent it to `listener`.
    pub(super) fn send(self, client: ClientInfo, listener: Arc<str>) {
        tokio::spawn(async move {
            let Copy {
                mirror,
                permit,
                head: mut request,
                body,
            } = self;
            let outcome = tokio::time::timeout(COPY_LIMIT, async {
                let body = match body {
                    Pending::Empty => RequestBody::Empty,
                    Pending::Streaming(receiver) => match receiver.await {
                        Ok(bytes) => RequestBody::Whole { data: Some(bytes) },
                        Err(_) => return MirrorOutcome::Body,
                    },
                };
                *request.body_mut() = body;
                // The copy hashes like the original would on the mirror's pool.
                let selection = mirror
                    .pool
                    .selection(request.uri(), request.headers(), &client);
                let client_version = request.version();
                *request.version_mut() = Version::HTTP_11;
                let mut uri = std::mem::take(request.uri_mut());
                let forwarding = headers::prepare_request(
                    &mut uri,
                    client_version,
                    request.headers_mut(),
                    &client,
                );
                *request.uri_mut() = uri;
                let arrival = Arrival {
                    listener: &listener,
                    started: Instant::now(),
                    selection,
                };
                let budget = mirror.pool.budget();
                match forward(
                    &mirror.pool,
                    request,
                    &forwarding,
                    arrival,
                    None,
                    &mut None,
                    budget,
                )
                .await
                {
                    Ok(response) => {
                        // Read to the end so the connection can serve again; the bytes go nowhere.
                        let _ = response.into_body().collect().await;
                        MirrorOutcome::Sent
                    }
                    Err(_) => MirrorOutcome::Failed,
                }
            })
            .await
            .unwrap_or(MirrorOutcome::Failed);
            mirror.metrics.record(outcome);
            drop(permit);
        });
    }
}
