//! Upgraded connections (WebSocket and the like): the backend's side waits in the client
//! connection's slot until hyper has sent the 101, then bytes are copied both ways.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::backend::InFlight;
use crate::proxy::activity::ActivityIo;
use crate::upstream::h1;

/// Where the backend's side of an upgrade waits for the client's: set when a 101 is
/// forwarded, taken by the connection task once hyper has sent it, which then runs the tunnel.
/// If the connection ends first, the backend's side is dropped with the slot.
#[derive(Default)]
pub(super) struct UpgradeSlot(Mutex<Option<(h1::Upgraded, InFlight)>>);

impl UpgradeSlot {
    fn set(&self, upstream: h1::Upgraded, in_flight: InFlight) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some((upstream, in_flight));
    }

    pub(super) fn take(&self) -> Option<(h1::Upgraded, InFlight)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// An upgrade request (WebSocket and the like) waiting for the backend's 101.
pub(super) struct Tunnel(pub(super) Arc<UpgradeSlot>);

impl Tunnel {
    /// Hands the backend's side of the upgraded connection to the client connection's task,
    /// which runs the tunnel once hyper has sent the 101.
    pub(super) fn start(self, upstream: h1::Upgraded, in_flight: InFlight) {
        self.0.set(upstream, in_flight);
    }
}

/// Copies bytes both ways between the upgraded connections until either side closes, nothing
/// moves for `idle_timeout`, or the drain `deadline` passes. The request stays in flight
/// (least-connections and the backend's `max_connections` count it) for the tunnel's whole
/// life, as the client connection counts for its listener.
pub(super) async fn run_tunnel<T: AsyncRead + AsyncWrite + Unpin>(
    client: T,
    mut upstream: h1::Upgraded,
    in_flight: InFlight,
    idle_timeout: Duration,
    deadline: &CancellationToken,
) {
    let backend = Arc::clone(in_flight.backend());
    let (mut client, activity) = ActivityIo::new(client, None);
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(err) = result {
                tracing::debug!(backend = %backend.name, error = %err, "upgraded connection ended with an error");
            }
        }
        () = activity.idle_for(idle_timeout) => {
            tracing::debug!(backend = %backend.name, "upgraded connection idle; closed");
        }
        () = deadline.cancelled() => {
            tracing::debug!(backend = %backend.name, "shutdown deadline; closing upgraded connection");
        }
    }
    drop(in_flight);
}
