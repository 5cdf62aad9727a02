//! A listener's parked HTTP/1 connections, held in a set and watched by one task instead of a
//! task each.
//!
//! A connection found quiet between two requests hands itself (for a client connection, its
//! `Conn`: the socket, the listener's and the connection's shared state, its room under
//! `max_connections`) to the set with its idle deadline, and its task ends. In the set it
//! costs its parts and the set's links (a plain connection about 220 bytes; as a task of its
//! own it held a 384-byte cell, a 112-byte idle timer and a drain waker). When bytes arrive
//! for a parked connection (the set peeks, so they stay in the socket; a TLS connection may
//! also have them decrypted already) or its client closes, it leaves the set: resumed on a
//! new task that reads and serves them, or closed.
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
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The least time between two looks for idle connections: a parked connection closes at most
/// this long after its idle deadline.
const SWEEP_GAP: Duration = Duration::from_millis(100);

/// A connection as the parked set holds it.
pub(super) trait Parkable: Send + Unpin + Sized + 'static {
    /// The TCP socket underneath: peeked for the next bytes, shut down at the idle deadline.
    fn socket(&self) -> &TcpStream;

    /// Whether something can be read already without the socket (TLS: plaintext decrypted
    /// from records read before, or the client's close_notify).
    fn readable_now(&mut self) -> bool;

    /// Counts and logs that the connection is closed for its idle timeout.
    fn closed_idle(&self);

    /// Serves the connection again, on a new task from `tracker`: something arrived for it.
    fn resume(self, tracker: &TaskTracker);

    /// Logs the error that ended the connection while it was parked.
    fn failed(&self, err: &io::Error);
}

/// The way into a parked set (its task holds the set).
#[derive(Debug)]
pub(super) struct Parking<C> {
    way_in: UnboundedSender<Parked<C>>,
}

impl<C: Parkable> Parking<C> {
    /// Starts a set's task on `tracker` (so a drain waits for it to close what it holds),
    /// counting its connections in `gauge`; it closes them all and ends when `stop` is
    /// cancelled.
    pub(super) fn start(gauge: Gauge, stop: CancellationToken, tracker: &TaskTracker) -> Self {
        let (way_in, incoming) = unbounded_channel();
        let set = Set {
            incoming,
            waiting: FuturesUnordered::new(),
            gauge,
        };
        tracker.spawn(run(set, stop, tracker.clone()));
        Self { way_in }
    }

    /// Parks `conn`, which may stay quiet for `idle_left` more before it is closed. When the
    /// set is gone (the listener drains), the connection is dropped: closed.
    pub(super) fn park(&self, conn: C, idle_left: Duration) {
        let parked = Parked {
            conn: Some(conn),
            until: Some(Instant::now() + idle_left),
        };
        // A send fails only once the set's task ended: the connection then closes as it drops.
        let _ = self.way_in.send(parked);
    }
}

/// One parked connection and its idle deadline (`None` once its socket was shut down for
/// it). As a future it waits for something to read on the connection (or its end), and
/// gives the connection back then.
struct Parked<C> {
    conn: Option<C>,
    until: Option<Instant>,
}

impl<C: Parkable> Future for Parked<C> {
    /// The connection, and whether it has something to read (`false`: its client closed);
    /// `None` only if polled again after that.
    type Output = Option<(C, io::Result<bool>)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        let readable = if conn.readable_now() {
            Ok(true)
        } else {
            let mut byte = [0u8; 1];
            ready!(conn.socket().poll_peek(cx, &mut ReadBuf::new(&mut byte))).map(|n| n > 0)
        };
        Poll::Ready(this.conn.take().map(|conn| (conn, readable)))
    }
}

/// A set's parked connections, and the way they come in.
struct Set<C> {
    incoming: UnboundedReceiver<Parked<C>>,
    waiting: FuturesUnordered<Parked<C>>,
    gauge: Gauge,
}

/// What happened in a [`Set`].
enum Event<C> {
    Parked(Parked<C>),
    Woke(C, io::Result<bool>),
}

impl<C: Parkable> Set<C> {
    /// The next connection parked or woken. Pending for good once no connection can come
    /// in any more and none waits.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event<C>> {
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
    /// go: resumed on a task of its own from `tracker` when something came, dropped (closed)
    /// when its client closed or failed.
    fn handle(&mut self, event: Event<C>, tracker: &TaskTracker) -> Option<Instant> {
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
                    Ok(true) => conn.resume(tracker),
                    Ok(false) => {}
                    Err(err) => conn.failed(&err),
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
            conn.closed_idle();
            if let Err(err) = socket2::SockRef::from(conn.socket()).shutdown(Shutdown::Both) {
                // Already shut by the peer or the kernel: it wakes with that end anyway.
                conn.failed(&err);
            }
        }
        next
    }
}

/// A set's task: takes parked connections in, lets woken ones go, closes the idle ones at
/// their deadlines, until `stop`; then every connection still parked closes.
async fn run<C: Parkable>(mut set: Set<C>, stop: CancellationToken, tracker: TaskTracker) {
    // Armed for the earliest idle deadline, but never sooner than `SWEEP_GAP` after the last
    // look: one look closes every connection due by then.
    let sweep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sweep);
    let mut armed = false;
    let mut looked = Instant::now();
    loop {
        let due = tokio::select! {
            () = stop.cancelled() => break,
            event = std::future::poll_fn(|cx| set.poll_event(cx)) => set.handle(event, &tracker),
            () = &mut sweep, if armed => {
                looked = Instant::now();
                armed = false;
                set.sweep(looked)
            }
        };
        if let Some(due) = due
            && (!armed || due < sweep.deadline())
        {
            sweep.as_mut().reset(due.max(looked + SWEEP_GAP));
            armed = true;
        }
    }
    set.gauge.decrement(set.waiting.len() as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A parked test connection: the server's end of a loopback pair, which, resumed, reads
    /// what arrived and reports it.
    struct Probe {
        socket: TcpStream,
        resumed: UnboundedSender<Vec<u8>>,
        idle: Arc<AtomicUsize>,
    }

    impl Parkable for Probe {
        fn socket(&self) -> &TcpStream {
            &self.socket
        }

        fn readable_now(&mut self) -> bool {
            false
        }

        fn closed_idle(&self) {
            self.idle.fetch_add(1, Ordering::Relaxed);
        }

        fn resume(mut self, tracker: &TaskTracker) {
            tracker.spawn(async move {
                let mut read = vec![0u8; 1024];
                let n = self.socket.read(&mut read).await.expect("read");
                read.truncate(n);
                let _ = self.resumed.send(read);
            });
        }

        fn failed(&self, _err: &io::Error) {}
    }

    /// A parked set under test, and what its probes report: what resumed ones read, and how
    /// many were closed for their idle timeout.
    struct Harness {
        parking: Parking<Probe>,
        resumed: UnboundedSender<Vec<u8>>,
        reads: UnboundedReceiver<Vec<u8>>,
        idle: Arc<AtomicUsize>,
    }

    impl Harness {
        /// A set on `tracker` until `drain`.
        fn start(drain: &CancellationToken, tracker: &TaskTracker) -> Self {
            let (resumed, reads) = unbounded_channel();
            Self {
                parking: Parking::start(Gauge::noop(), drain.clone(), tracker),
                resumed,
                reads,
                idle: Arc::default(),
            }
        }

        /// A connected pair on loopback: (the probe on the server's end, the client's end).
        async fn probe(&self) -> (Probe, TcpStream) {
            let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let client = TcpStream::connect(socket.local_addr().expect("address"))
                .await
                .expect("connect");
            let (server, _) = socket.accept().await.expect("accept");
            let probe = Probe {
                socket: server,
                resumed: self.resumed.clone(),
                idle: Arc::clone(&self.idle),
            };
            (probe, client)
        }

        fn idle_closes(&self) -> usize {
            self.idle.load(Ordering::Relaxed)
        }
    }

    /// Reads until the client's end closes; what came before that.
    async fn until_closed(client: &mut TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        received
    }

    #[tokio::test(start_paused = true)]
    async fn each_parked_connection_closes_at_its_own_idle_deadline() {
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        let harness = Harness::start(&drain, &tracker);
        let parking = &harness.parking;
        let (late, mut late_client) = harness.probe().await;
        let (early, mut early_client) = harness.probe().await;
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
        assert_eq!(harness.idle_closes(), 2);
        drain.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_wake_a_parked_connection_and_stay_for_it_whole() {
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        let mut harness = Harness::start(&drain, &tracker);
        let (conn, mut client) = harness.probe().await;
        harness.parking.park(conn, Duration::from_secs(60));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Peeked by the set, read by the connection's new task: every byte is still there.
        let request = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
        client.write_all(request).await.expect("write");
        let read = harness.reads.recv().await.expect("resumed");
        assert_eq!(read, request);
        assert_eq!(harness.idle_closes(), 0);
        drain.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn a_drain_closes_every_parked_connection_and_ends_the_set() {
        let (drain, tracker) = (CancellationToken::new(), TaskTracker::new());
        let harness = Harness::start(&drain, &tracker);
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (conn, client) = harness.probe().await;
            harness.parking.park(conn, Duration::from_secs(60));
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
        let (conn, mut client) = harness.probe().await;
        harness.parking.park(conn, Duration::from_secs(60));
        assert!(until_closed(&mut client).await.is_empty());
    }
}
