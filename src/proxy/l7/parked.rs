//! A listener's parked HTTP/1 connections, held in one set and watched by one task instead of
//! a task each.
//!
//! A connection found quiet between two requests hands its parts ([`Conn`]: the socket, the
//! listener's and the connection's shared state, its room under `max_connections`) to the
//! set with its idle deadline, and its task ends. In the set it costs its parts and the set's
//! links (a plain connection about 220 bytes; as a task of its own it held a 384-byte cell,
//! a 112-byte idle timer and a drain waker). When bytes arrive for a parked connection (the
//! set peeks, so they stay in the socket; a TLS connection may also have them decrypted
//! already) or its client closes, it leaves the set: to a new task that reads and serves
//! them, or closed.
//!
//! The set's task sleeps until the earliest idle deadline (looking at most once every
//! [`SWEEP_GAP`]), then shuts the sockets of the connections past theirs down, which wakes
//! each as a client's close would, so they leave by the same path. When the listener drains,
//! the set closes every connection in it and ends.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use metrics::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::conn::{Conn, serve_conn};
use crate::proxy::activity::{Activity, ActivityIo, Close};

/// The least time between two looks for idle connections: a parked connection closes at most
/// this long after its idle deadline.
const SWEEP_GAP: Duration = Duration::from_millis(100);

/// A plain client connection's transport.
pub(super) type Plain = ActivityIo<TcpStream>;
/// A TLS client connection's transport.
pub(super) type Tls = tokio_rustls::server::TlsStream<Plain>;

/// A client connection's transport, as the parked set holds it.
pub(super) trait ParkIo: AsyncRead + AsyncWrite + Unpin + Send + Sized + 'static {
    /// The TCP socket underneath: peeked for the next bytes, shut down at the idle deadline.
    fn socket(&self) -> &TcpStream;

    /// The connection's activity, which the plain transport underneath records.
    fn activity(&self) -> &Activity;

    /// Whether something can be read already without the socket (TLS: plaintext decrypted
    /// from records read before, or the client's close_notify).
    fn readable_now(&mut self) -> bool;

    /// The way into the set for connections of this kind.
    fn way_in(parking: &Parking) -> &UnboundedSender<Parked<Self>>;
}

impl ParkIo for Plain {
    fn socket(&self) -> &TcpStream {
        self.get_ref()
    }

    fn activity(&self) -> &Activity {
        ActivityIo::activity(self)
    }

    fn readable_now(&mut self) -> bool {
        false
    }

    fn way_in(parking: &Parking) -> &UnboundedSender<Parked<Self>> {
        &parking.plain
    }
}

impl ParkIo for Tls {
    fn socket(&self) -> &TcpStream {
        self.get_ref().0.get_ref()
    }

    fn activity(&self) -> &Activity {
        self.get_ref().0.activity()
    }

    fn readable_now(&mut self) -> bool {
        // Processes whole records left in rustls' buffer, if any; an error is the next read's.
        self.get_mut()
            .1
            .process_new_packets()
            .map_or(true, |state| {
                state.plaintext_bytes_to_read() > 0 || state.peer_has_closed()
            })
    }

    fn way_in(parking: &Parking) -> &UnboundedSender<Parked<Self>> {
        &parking.tls
    }
}

/// The way into a listener's parked set (its task holds the set).
#[derive(Debug)]
pub(super) struct Parking {
    plain: UnboundedSender<Parked<Plain>>,
    tls: UnboundedSender<Parked<Tls>>,
}

impl Parking {
    /// Starts the set's task on `tracker` (so a drain waits for it to close what it holds),
    /// counting its connections in `gauge`; it closes them all and ends when `stop` is
    /// cancelled.
    pub(super) fn start(gauge: Gauge, stop: CancellationToken, tracker: &TaskTracker) -> Self {
        let (plain, plain_parked) = unbounded_channel();
        let (tls, tls_parked) = unbounded_channel();
        tracker.spawn(run(
            Set::new(plain_parked, gauge.clone()),
            Set::new(tls_parked, gauge),
            stop,
            tracker.clone(),
        ));
        Self { plain, tls }
    }

    /// Parks `conn`, which may stay quiet for `idle_left` more before it is closed. When the
    /// set is gone (the listener drains), the connection is dropped: closed.
    pub(super) fn park<T: ParkIo>(&self, conn: Conn<T>, idle_left: Duration) {
        let parked = Parked {
            conn: Some(conn),
            until: Some(Instant::now() + idle_left),
        };
        // A send fails only once the set's task ended: the connection then closes as it drops.
        let _ = T::way_in(self).send(parked);
    }
}

/// One parked connection: its parts and its idle deadline (`None` once its socket was shut
/// down for it). As a future it waits for something to read on the connection (or its end),
/// and gives the connection back then.
pub(super) struct Parked<T> {
    conn: Option<Conn<T>>,
    until: Option<Instant>,
}

impl<T: ParkIo> Future for Parked<T> {
    /// The connection, and whether it has something to read (`false`: its client closed);
    /// `None` only if polled again after that.
    type Output = Option<(Conn<T>, io::Result<bool>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let readable = if conn.io.readable_now() {
            Ok(true)
        } else {
            let mut byte = [0u8; 1];
            ready!(conn.io.socket().poll_peek(cx, &mut ReadBuf::new(&mut byte))).map(|n| n > 0)
        };
        Poll::Ready(this.conn.take().map(|conn| (conn, readable)))
    }
}

/// The parked connections of one kind, and the way they come in.
struct Set<T> {
    incoming: UnboundedReceiver<Parked<T>>,
    waiting: FuturesUnordered<Parked<T>>,
    gauge: Gauge,
}

/// What happened in a [`Set`].
enum Event<T> {
    Parked(Parked<T>),
    Woke(Conn<T>, io::Result<bool>),
}

impl<T: ParkIo> Set<T> {
    fn new(incoming: UnboundedReceiver<Parked<T>>, gauge: Gauge) -> Self {
        Self {
            incoming,
            waiting: FuturesUnordered::new(),
            gauge,
        }
    }

    /// The next connection parked or woken. Pending for good once no connection can come
    /// in any more and none waits.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event<T>> {
        if let Poll::Ready(Some(parked)) = self.incoming.poll_recv(cx) {
            return Poll::Ready(Event::Parked(parked));
        }
        while !self.waiting.is_empty() {
            match ready!(self.waiting.poll_next_unpin(cx)) {
                Some(Some((conn, readable))) => return Poll::Ready(Event::Woke(conn, readable)),
                Some(None) => {}
                None => break,
            }
        }
        Poll::Pending
    }

    /// Takes in a newly parked connection (returning its idle deadline) or lets a woken one
    /// go: served on a task of its own from `tracker` when bytes came, dropped (closed) when
    /// its client closed or failed.
    fn handle(&mut self, event: Event<T>, tracker: &TaskTracker) -> Option<Instant> {
        match event {
            Event::Parked(parked) => {
                self.gauge.increment(1.0);
                let until = parked.until;
                self.waiting.push(parked);
                return until;
            }
            Event::Woke(conn, readable) => {
                self.gauge.decrement(1.0);
                match readable {
                    Ok(true) => {
                        tracker.spawn(serve_conn(conn, true));
                    }
                    Ok(false) => {}
                    Err(err) => {
                        tracing::debug!(listener = %conn.listener.name, client = %conn.peer, error = %err, "parked client connection ended with an error");
                    }
                }
            }
        }
        None
    }

    /// Closes the connections whose idle deadline passed by `now` (their sockets are shut
    /// down, which wakes each with its end); returns the earliest deadline still to come.
    fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for parked in self.waiting.iter_mut() {
            let (Some(until), Some(conn)) = (parked.until, parked.conn.as_ref()) else {
                continue;
            };
            if until > now {
                next = Some(next.map_or(until, |next| next.min(until)));
                continue;
            }
            parked.until = None;
            conn.listener.closed_by(Close::Idle, conn.peer);
            if let Err(err) = socket2::SockRef::from(conn.io.socket()).shutdown(Shutdown::Both) {
                // Already shut by the peer or the kernel: it wakes with that end anyway.
                tracing::debug!(listener = %conn.listener.name, client = %conn.peer, error = %err, "could not shut an idle parked connection down");
            }
        }
        next
    }

    fn len(&self) -> usize {
        self.waiting.len()
    }
}

/// The set's task: takes parked connections in, lets woken ones go, closes the idle ones at
/// their deadlines, until `stop`; then every connection still parked closes.
async fn run(
    mut plain: Set<Plain>,
    mut tls: Set<Tls>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // Armed for the earliest idle deadline, but never sooner than `SWEEP_GAP` after the last
    // look: one look closes every connection due by then.
    let sweep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sweep);
    let mut armed = false;
    let mut looked = Instant::now();
    loop {
        let due = tokio::select! {
            () = stop.cancelled() => break,
            event = std::future::poll_fn(|cx| plain.poll_event(cx)) => plain.handle(event, &tracker),
            event = std::future::poll_fn(|cx| tls.poll_event(cx)) => tls.handle(event, &tracker),
            () = &mut sweep, if armed => {
                looked = Instant::now();
                armed = false;
                [plain.sweep(looked), tls.sweep(looked)].into_iter().flatten().min()
            }
        };
        if let Some(due) = due
            && (!armed || due < sweep.deadline())
        {
            sweep.as_mut().reset(due.max(looked + SWEEP_GAP));
            armed = true;
        }
    }
    let left = plain.len() + tls.len();
    plain.gauge.decrement(left as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::ConnectionLimit;
    use crate::proxy::l7::listener::HttpListener;
    use crate::proxy::l7::listener::tests::listener;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair on loopback, the proxy's end as a connection `listener` accepted:
    /// (that connection, the client's end).
    async fn accepted(
        listener: &Arc<HttpListener>,
        drain: &CancellationToken,
    ) -> (Conn<Plain>, TcpStream) {
        let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(socket.local_addr().expect("address"))
            .await
            .expect("connect");
        let (server, peer) = socket.accept().await.expect("accept");
        let room = ConnectionLimit::new(None, metrics::Counter::noop())
            .try_open()
            .expect("unlimited");
        let conn = Conn::accepted(Arc::clone(listener), server, peer, drain.clone(), room);
        (conn, client)
    }

    /// Reads until the client's end closes; what came before that.
    async fn until_closed(client: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        received
    }

    #[tokio::test(start_paused = true)]
    async fn each_parked_connection_closes_at_its_own_idle_deadline() {
        let listener = listener("60s");
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        listener.start(drain.clone(), &tracker);
        let parking = listener.parking.get().expect("started");
        let (late, mut late_client) = accepted(&listener, &drain).await;
        let (early, mut early_client) = accepted(&listener, &drain).await;
        let start = Instant::now();
        // Parked later deadline first: the earlier one that follows moves the set's wake-up.
        parking.park(late, Duration::from_secs(10));
        parking.park(early, Duration::from_secs(2));
        assert!(until_closed(&mut early_client).await.is_empty());
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_secs(2) && closed <= Duration::from_secs(2) + SWEEP_GAP,
            "{closed:?}"
        );
        assert!(until_closed(&mut late_client).await.is_empty());
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_secs(10) && closed <= Duration::from_secs(10) + SWEEP_GAP,
            "{closed:?}"
        );
        drain.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_wake_a_parked_connection_and_reach_its_server_whole() {
        let listener = listener("60s");
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        listener.start(drain.clone(), &tracker);
        let parking = listener.parking.get().expect("started");
        let (conn, mut client) = accepted(&listener, &drain).await;
        parking.park(conn, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Peeked by the set, read by the connection's new task: the whole request reaches
        // the HTTP/1 server, which answers it (no backend listens: a 5xx).
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let response = until_closed(&mut client).await;
        let response = String::from_utf8_lossy(&response);
        assert!(response.starts_with("HTTP/1.1 50"), "{response}");
        drain.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_drain_closes_every_parked_connection_and_ends_the_set() {
        let listener = listener("60s");
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        listener.start(drain.clone(), &tracker);
        let parking = listener.parking.get().expect("started");
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (conn, client) = accepted(&listener, &drain).await;
            parking.park(conn, Duration::from_secs(60));
            clients.push(client);
        }
        drain.cancel();
        for client in &mut clients {
            let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(client)).await;
            assert!(closed.expect("closed at the drain").is_empty());
        }
        tracker.close();
        tokio::time::timeout(Duration::from_secs(5), tracker.wait())
            .await
            .expect("the set's task ended");
        // Too late to park: the connection closes.
        let (conn, mut client) = accepted(&listener, &drain).await;
        parking.park(conn, Duration::from_secs(60));
        assert!(until_closed(&mut client).await.is_empty());
    }
}
