//! The bounded idle pool of keep-alive connections each backend keeps for reuse.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::conn::Conn;
use super::h1;

/// Idle keep-alive connections to one backend, ready for reuse.
///
/// Last in, first out: a request takes the connection that went idle most recently, so a
/// burst's extra connections sink to the bottom while steady traffic keeps reusing the same few
/// warm ones, and the backend's own keep-alive timeout rarely catches a connection we are about
/// to use. Bounded: when full, a returned connection is dropped (closed). Connections idle for
/// `idle_timeout` are closed by [`IdleConnections::reap`] (the server calls it every second)
/// or, at the latest, when a checkout meets them.
#[derive(Debug)]
pub struct IdleConnections {
    /// Oldest at the front, newest at the back; `None` when reuse is off.
    stack: Option<Mutex<VecDeque<Idle>>>,
    capacity: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

impl IdleConnections {
    /// A pool keeping at most `capacity` connections (0 disables reuse).
    pub fn new(capacity: usize, idle_timeout: Duration) -> Self {
        Self {
            stack: (capacity > 0).then(|| Mutex::new(VecDeque::new())),
            capacity,
            idle_timeout,
        }
    }

    /// The stack, locked. Nothing panics while holding it, so a poisoned lock is still sound.
    fn lock(&self) -> Option<MutexGuard<'_, VecDeque<Idle>>> {
        self.stack
            .as_ref()
            .map(|stack| stack.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The newest live idle connection, if there is one; stale ones met on the way are closed.
    /// An HTTP/2 connection stays in the pool for other requests to share. `now` is a recent
    /// clock reading (the request's start: no clock read of its own on the hot path).
    pub fn take(&self, now: Instant) -> Option<Conn> {
        loop {
            let mut idle = {
                let mut stack = self.lock()?;
                let idle = stack.pop_back()?;
                if now.saturating_duration_since(idle.since) >= self.idle_timeout {
                    // Everything below is older still; closed once the lock is released.
                    let expired = std::mem::take(&mut *stack);
                    drop(stack);
                    drop((idle, expired));
                    return None;
                }
                if let Conn::Http2(shared) = &idle.conn {
                    let conn = Conn::Http2(shared.clone());
                    stack.push_back(Idle {
                        conn: idle.conn,
                        since: now,
                    });
                    return Some(conn);
                }
                idle
            };
            // Probed outside the lock: it is a system call.
            if !idle.conn.is_closed() {
                return Some(idle.conn);
            }
        }
    }

    /// Offers an HTTP/1.1 connection whose last exchange completed cleanly for reuse, idle
    /// since `since`: a clock reading the exchange already made (its response head's arrival),
    /// so no reading of its own. That is at or before the true start of idleness, so a
    /// connection is closed for idleness early rather than late. (HTTP/2 connections stay in
    /// the pool while shared, see [`IdleConnections::share`].)
    pub fn put(&self, conn: Box<h1::Connection>, since: Instant) {
        self.push(Conn::Http1(conn), since);
    }

    /// Adds a new HTTP/2 connection to the pool so later requests share it.
    pub fn share(&self, conn: &Conn) {
        if let Conn::Http2(shared) = conn {
            self.push(Conn::Http2(shared.clone()), Instant::now());
        }
    }

    fn push(&self, conn: Conn, since: Instant) {
        let Some(mut stack) = self.lock() else {
            return;
        };
        if stack.len() < self.capacity {
            stack.push_back(Idle { conn, since });
            return;
        }
        // Full: the connection is closed, once the lock is released.
        drop(stack);
        drop(conn);
    }

    /// Closes the connections that have been idle for `idle_timeout` at `now`; how many.
    pub fn reap(&self, now: Instant) -> usize {
        let Some(mut stack) = self.lock() else {
            return 0;
        };
        let idle_for = |idle: &Idle| now.saturating_duration_since(idle.since);
        let expired = stack
            .iter()
            .take_while(|idle| idle_for(idle) >= self.idle_timeout)
            .count();
        // Closed after the lock is released: dropping a connection closes its socket.
        let closed: Vec<Idle> = stack.drain(..expired).collect();
        drop(stack);
        closed.len()
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let closed = self.lock().map(|mut stack| std::mem::take(&mut *stack));
        drop(closed);
    }

    /// Connections currently idle.
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |stack| stack.len())
    }

    /// Whether no connection is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::io::socket::Socket;

    /// A connection accepted by `listener`, with the backend's end of it.
    async fn connection_pair(listener: &TcpListener) -> (Box<h1::Connection>, TcpStream) {
        let address = listener.local_addr().expect("address");
        let stream = TcpStream::connect(address).await.expect("connect");
        let (backend, _) = listener.accept().await.expect("accept");
        (
            h1::Connection::new(h1::Stream::Tcp(Socket::new(stream))),
            backend,
        )
    }

    /// Whether the proxy's end of `backend`'s connection was closed.
    async fn closed(backend: &mut TcpStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(backend.read(&mut byte).await, Ok(0))
    }

    fn taken(idle: &IdleConnections, now: Instant) -> *const h1::Connection {
        match idle.take(now) {
            Some(Conn::Http1(conn)) => &raw const *conn,
            other => panic!("expected an idle HTTP/1.1 connection, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_connection_idle_for_the_shortest_time_is_reused_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        let (older, _backend_a) = connection_pair(&listener).await;
        let (newer, _backend_b) = connection_pair(&listener).await;
        let (older_at, newer_at) = (&raw const *older, &raw const *newer);
        idle.put(older, Instant::now());
        idle.put(newer, Instant::now());
        assert_eq!(taken(&idle, Instant::now()), newer_at);
        assert_eq!(taken(&idle, Instant::now()), older_at);
        assert!(idle.take(Instant::now()).is_none());
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_is_skipped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        let (live, _backend_live) = connection_pair(&listener).await;
        let (gone, backend_gone) = connection_pair(&listener).await;
        let live_at = &raw const *live;
        idle.put(live, Instant::now());
        idle.put(gone, Instant::now());
        drop(backend_gone);
        // The FIN reaches the proxy's socket before the probe looks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(taken(&idle, Instant::now()), live_at);
        assert!(idle.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn reap_closes_only_connections_idle_for_the_whole_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        let (first, mut backend_first) = connection_pair(&listener).await;
        let (second, mut backend_second) = connection_pair(&listener).await;
        idle.put(first, Instant::now());
        tokio::time::advance(Duration::from_secs(40)).await;
        idle.put(second, Instant::now());
        tokio::time::advance(Duration::from_secs(19)).await;
        assert_eq!(idle.reap(Instant::now()), 0, "nothing idle for 60 s yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(idle.reap(Instant::now()), 1);
        assert_eq!(idle.len(), 1);
        assert!(
            closed(&mut backend_first).await,
            "the reaped connection is closed"
        );
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(idle.reap(Instant::now()), 1);
        assert!(idle.is_empty());
        assert!(closed(&mut backend_second).await);
    }

    #[tokio::test(start_paused = true)]
    async fn idleness_counts_from_the_instant_handed_in() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        let (conn, mut backend) = connection_pair(&listener).await;
        let since = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        idle.put(conn, since);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(idle.reap(Instant::now()), 0, "idle for 59 s since `since`");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            idle.reap(Instant::now()),
            1,
            "60 s since `since`, 30 s in the pool"
        );
        assert!(closed(&mut backend).await);
    }

    #[tokio::test]
    async fn a_full_pool_closes_the_connection_handed_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(1, Duration::from_secs(60));
        let (kept, _backend_kept) = connection_pair(&listener).await;
        let (extra, mut backend_extra) = connection_pair(&listener).await;
        let kept_at = &raw const *kept;
        idle.put(kept, Instant::now());
        idle.put(extra, Instant::now());
        assert_eq!(idle.len(), 1);
        assert!(closed(&mut backend_extra).await);
        assert_eq!(taken(&idle, Instant::now()), kept_at);
    }

    #[tokio::test]
    async fn idle_connections_are_reused_until_the_idle_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let idle = IdleConnections::new(4, Duration::from_secs(60));
        let (conn, _backend) = connection_pair(&listener).await;
        idle.put(conn, Instant::now());
        let put = Instant::now();
        let taken = idle.take(put + Duration::from_secs(59));
        let Some(Conn::Http1(conn)) = taken else {
            panic!("a connection idle for less than the timeout is reused");
        };
        idle.put(conn, Instant::now());
        let now = Instant::now() + Duration::from_secs(60);
        assert!(
            idle.take(now).is_none(),
            "idle for the whole timeout: closed"
        );
        assert!(
            idle.take(Instant::now()).is_none(),
            "and gone from the pool"
        );
    }
}
