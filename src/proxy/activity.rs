//! A client connection's activity: idle detection, the request-head timeout, parking, and byte
//! counting (the upstream idle pool is `upstream::idle_pool`, the timeouts' values `config`).
//!
//! The IO wrapper only sets a flag on each read or write (no clock call on the data path); a
//! ticker clears it every period and reports idleness when it was already clear. A connection is
//! therefore closed between one and two periods after its last byte.
//!
//! HTTP/1 connections also have a request-head deadline (slowloris protection). The HTTP/1
//! server (`l7::h1`) publishes which head is still incomplete when a read ends inside one, or
//! while the first request is awaited; only then does the [`Watchdog`] move its timer for the
//! head. Heads that arrive whole in one read, the normal case, cost no timer at all, and a
//! keep-alive connection waiting for its next request is governed by the idle timeout alone.
//!
//! The watchdog is a future the connection's own task polls next to its server, not a task of
//! its own: a busy connection costs its one timer, not a second task, a channel and an
//! interval's timer.
//!
//! An HTTP/1 connection found between requests at a watchdog tick (every [`PARK_AFTER`]: an
//! exchange has ended, none is open, no head is half read, every write went out) is *parked*:
//! the watchdog resolves to [`Close::Park`], and the connection's task stops the HTTP/1 server
//! on it, which gives back the request future's slot (about 4 KiB; the server itself holds no
//! buffer between requests, see `benches/README.md`), hands the connection to the listener's
//! parked set (`l7::parked`, which keeps its idle deadline and waits for its next bytes with
//! no buffer and no task) and ends. Woken, the connection gets a new task, server and watch.
//! A fresh watch also looks once after a quarter of a second, so a connection that came (or
//! woke) for one request is parked then. So a keep-alive connection holds the server's state
//! for at most one tick after its last response, and a parked one is its socket and a few
//! pointers in a set, as nginx's is a small struct. A connection in steady use (more than one
//! exchange ended since the watchdog's last look) is not parked at that look, though it is met
//! between two requests: a woken connection's next request waits two turns of the runtime's
//! queue (the parked set's task, then the connection's new one), and at a thousand busy
//! connections a park every quarter second each put those requests in the p99 tail. Once its
//! requests stop, it is parked at the look after next (within two ticks).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::config::ClientLimits;
use crate::metrics::ByteCounters;

/// The watchdog's tick: an HTTP/1 connection between requests is parked at the first tick
/// after its last exchange ended, so within one of these.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// A new watchdog also looks once this soon (or at its first tick, if that is sooner): a
/// connection that answered its one request, or woke from parking for one, is parked again
/// a quarter of a second later instead of a second.
const FIRST_LOOK: Duration = Duration::from_millis(250);

/// Per-connection state shared by the IO wrappers, the request handler and the watchdog.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Something moved since the last idle tick.
    moved: AtomicBool,
    /// The request head being waited for (see [`Activity::await_head`]), 0 for none.
    head: AtomicU32,
    /// HTTP/2 exchanges open on the connection: from the request to the end of its response
    /// body.
    exchanges: AtomicU32,
    /// The HTTP/1 server's exchange is open (see [`Activity::open_h1_exchange`]).
    h1_exchange: AtomicBool,
    /// Uploads the proxy watches for stalls (`l7::upload`): while one is open, the idle close
    /// waits for its `408`.
    uploads: AtomicU32,
    /// The connection may be parked (an HTTP/1 server runs on it, see `start_serving`).
    parkable: AtomicBool,
    /// An exchange ended since the current HTTP/1 server started: only then is the server idle
    /// between requests (a fresh server counts as busy until its first exchange).
    served: AtomicBool,
    /// HTTP/1 exchanges ended since the watchdog last looked (or the server started): more than
    /// one, and the connection is busy, not parked (see [`Watchdog`]).
    ended: AtomicU32,
    /// The last write or flush to the client could not complete (its socket is full): the rest
    /// of a response may still be waiting to go out.
    write_blocked: AtomicBool,
}

/// Holds one exchange open on a connection (see [`Activity::open_exchange`]); a connection is
/// never parked while one is.
#[derive(Debug)]
pub(crate) struct Exchange(Arc<Activity>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.served.store(true, Ordering::Relaxed);
        self.0.exchanges.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Holds the HTTP/1 server's one exchange open (see [`Activity::open_h1_exchange`]).
#[derive(Debug)]
pub(crate) struct H1Exchange<'a>(&'a Activity);

impl Drop for H1Exchange<'_> {
    fn drop(&mut self) {
        // Plain loads and stores: only the connection's own task opens, ends and looks.
        let activity = self.0;
        activity.served.store(true, Ordering::Relaxed);
        activity.h1_exchange.store(false, Ordering::Relaxed);
        let ended = activity.ended.load(Ordering::Relaxed);
        activity
            .ended
            .store(ended.saturating_add(1), Ordering::Relaxed);
    }
}

/// Holds one watched upload open on a connection (see [`Activity::open_upload`]).
#[derive(Debug)]
pub(crate) struct OpenUpload(Arc<Activity>);

impl Drop for OpenUpload {
    fn drop(&mut self) {
        self.0.uploads.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why the [`Watchdog`] ends or parks a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Close {
    /// No byte moved either way for the idle timeout.
    Idle,
    /// A request head was not complete within the header-read timeout.
    HeadTimeout,
    /// Between requests, with no exchange open and no head started: park the connection,
    /// which may then wait this much longer for its next bytes (the idle timeout, less the
    /// quiet time already counted).
    Park(Duration),
}

impl Activity {
    fn touch(&self) {
        // Skip the store when already set, so the data path does not keep dirtying the line.
        if !self.moved.load(Ordering::Relaxed) {
            self.moved.store(true, Ordering::Relaxed);
        }
    }

    /// Publishes which request head is incomplete: `head` identifies it (any value but 0, a new
    /// value for each head) and 0 means none is. Called only when the value changes.
    pub(crate) fn await_head(&self, head: u32) {
        self.head.store(head, Ordering::Relaxed);
    }

    /// Opens an exchange, held until the guard drops.
    pub(crate) fn open_exchange(self: &Arc<Self>) -> Exchange {
        self.exchanges.fetch_add(1, Ordering::Relaxed);
        Exchange(Arc::clone(self))
    }

    /// Opens the HTTP/1 server's exchange, from its whole request head to the end of its
    /// response, until the guard drops. Only the connection's own task opens one, one at a
    /// time, so a flag does what [`Activity::open_exchange`]'s count does for HTTP/2's
    /// concurrent streams, with two plain stores instead of four bus-locked instructions (the
    /// count's add and subtract, the shared handle's clone and drop).
    pub(crate) fn open_h1_exchange(&self) -> H1Exchange<'_> {
        self.h1_exchange.store(true, Ordering::Relaxed);
        H1Exchange(self)
    }

    /// Opens a watched upload, held until the guard drops: its own stall watch answers a quiet
    /// upload with `408`, so the idle close gives it one more idle period to do so.
    pub(crate) fn open_upload(self: &Arc<Self>) -> OpenUpload {
        self.uploads.fetch_add(1, Ordering::Relaxed);
        OpenUpload(Arc::clone(self))
    }

    /// A new HTTP/1 server starts on the connection: from now on the watchdog may end with
    /// [`Close::Park`], but not before this server's first exchange ends.
    pub(crate) fn start_serving(&self) {
        self.parkable.store(true, Ordering::Relaxed);
        self.served.store(false, Ordering::Relaxed);
        self.ended.store(0, Ordering::Relaxed);
    }

    /// Whether more than one HTTP/1 exchange ended since the last look (a connection in steady
    /// use rather than one that came for a request); the count starts again.
    fn busy_since_last_look(&self) -> bool {
        let ended = self.ended.load(Ordering::Relaxed);
        self.ended.store(0, Ordering::Relaxed);
        ended > 1
    }

    /// Whether parking now is safe: the HTTP/1 server is idle between requests. Checked by the
    /// watchdog and again, authoritatively, by the connection task, which also runs the server.
    pub(crate) fn may_park(&self) -> bool {
        self.parkable.load(Ordering::Relaxed)
            && self.served.load(Ordering::Relaxed)
            && self.exchanges.load(Ordering::Relaxed) == 0
            && !self.h1_exchange.load(Ordering::Relaxed)
            && self.head.load(Ordering::Relaxed) == 0
            && !self.write_blocked.load(Ordering::Relaxed)
    }

    /// Notes whether a write or flush to the client just completed or had to wait.
    fn write_outcome<T>(&self, result: &Poll<T>) {
        let blocked = result.is_pending();
        if self.write_blocked.load(Ordering::Relaxed) != blocked {
            self.write_blocked.store(blocked, Ordering::Relaxed);
        }
    }

    /// Resolves once a whole `period` passes without any read or write.
    pub(crate) async fn idle_for(&self, period: Duration) {
        let mut ticker = idle_ticker(period);
        loop {
            ticker.tick().await;
            if !self.moved.swap(false, Ordering::Relaxed) {
                return;
            }
        }
    }
}

/// The tick for counting quiet time up to `idle`, and how many quiet ticks make `idle`.
pub(crate) fn quiet_ticks(idle: Duration) -> (Duration, u32) {
    let tick = tick_for(idle);
    let ticks = u32::try_from(idle.as_nanos().div_ceil(tick.as_nanos().max(1)))
        .unwrap_or(u32::MAX)
        .max(1);
    (tick, ticks)
}

/// The watchdog's tick for an `idle` timeout.
fn tick_for(idle: Duration) -> Duration {
    idle.min(PARK_AFTER)
}

/// An interval of `period` whose first tick is one period from now.
pub(crate) fn idle_ticker(period: Duration) -> tokio::time::Interval {
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Watches one client connection from inside the connection's own task, polled alongside
/// the server: resolves with why the connection should close or park ([`Close`]; the
/// listener's shutdown the task watches for itself).
///
/// One timer serves every wait, moved only when it fires or a head starts: the first look
/// ([`FIRST_LOOK`]), the idle ticks ([`PARK_AFTER`], or `idle` when shorter) and the request
/// head deadline. Between firings a poll reads one atomic and checks the timer. A head
/// started by the server gets its deadline at the poll that follows in the same task, so
/// the deadline counts from the read that left the head incomplete. If that head completes
/// and the next one is already incomplete when the deadline passes, the next one gets a
/// fresh deadline, so no head ever gets more than twice `header_read_timeout`.
///
/// Quiet time is counted in ticks, so the idle close comes between `idle` and one tick
/// later. A parkable connection ([`Activity::may_park`]) that is not in steady use (at most
/// one exchange ended since the last look) at the first look resolves to
/// [`Close::Park`] with the whole `idle` left; at a later tick, with the idle time left: the
/// whole `idle` if a byte moved during the last tick, less one tick per quiet tick counted
/// otherwise, so a parked connection still closes between `idle` and one tick after its
/// last byte. [`Watchdog::restart`] makes a fresh watch again when the park was not taken.
#[derive(Debug)]
pub(crate) struct Watchdog {
    // Boxed: a connection waiting for its first bytes keeps the watchdog, and the timer is
    // the bulk of it.
    timer: Pin<Box<Sleep>>,
    next_tick: Instant,
    // The incomplete head being timed (0: none) and its deadline.
    head: u32,
    head_deadline: Instant,
    quiet: u32,
    // The first look is still to come, one tick before `next_tick` plus `FIRST_LOOK`.
    looking: bool,
}

impl Watchdog {
    /// A fresh watch with `limits`' idle timeout (the connection's activity and limits are
    /// handed to every poll: [`Watchdog::watch`]).
    pub(crate) fn new(limits: &ClientLimits) -> Self {
        let now = Instant::now();
        let tick = tick_for(limits.idle_timeout);
        Self {
            timer: Box::pin(tokio::time::sleep_until(now + FIRST_LOOK.min(tick))),
            next_tick: now + tick,
            head: 0,
            head_deadline: now,
            quiet: 0,
            looking: true,
        }
    }

    /// Starts watching afresh, as [`Watchdog::new`] does: after a park the task did not take
    /// (bytes came as it stopped its server).
    pub(crate) fn restart(&mut self, limits: &ClientLimits) {
        let now = Instant::now();
        let tick = tick_for(limits.idle_timeout);
        self.next_tick = now + tick;
        self.head = 0;
        self.quiet = 0;
        self.looking = true;
        self.timer.as_mut().reset(now + FIRST_LOOK.min(tick));
    }

    /// Whether the server started a head this watch has not timed yet: polled at once, the
    /// watch gives it its deadline (see [`Watchdog`]); otherwise only its timer needs it polled.
    pub(crate) fn wants_poll(&self, activity: &Activity) -> bool {
        self.head == 0 && activity.head.load(Ordering::Relaxed) != 0
    }

    /// The watch over `activity` with `limits` as a future (borrowing all three), for a
    /// `select!` or an `await`.
    pub(crate) fn watch<'a>(
        &'a mut self,
        activity: &'a Activity,
        limits: &'a ClientLimits,
    ) -> impl Future<Output = Close> + 'a {
        std::future::poll_fn(move |cx| self.poll_watch(cx, activity, limits))
    }

    /// Polls the watch over the connection's `activity` with its `limits` (the same ones at
    /// every poll): why the connection should close or park, once it should.
    pub(crate) fn poll_watch(
        &mut self,
        cx: &mut Context<'_>,
        activity: &Activity,
        limits: &ClientLimits,
    ) -> Poll<Close> {
        if self.head == 0 {
            let current = activity.head.load(Ordering::Relaxed);
            if current != 0 {
                let at = Instant::now() + limits.header_read_timeout;
                (self.head, self.head_deadline) = (current, at);
                if at < self.timer.deadline() {
                    self.timer.as_mut().reset(at);
                }
            }
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            let idle = limits.idle_timeout;
            let tick = tick_for(idle);
            let first_look = self.next_tick - tick + FIRST_LOOK.min(tick);
            let looked = self.looking && first_look <= now;
            let ticked = self.next_tick <= now;
            // One look, even where the first look and a tick fall together (an idle timeout
            // under a quarter of a second).
            let busy = (looked || ticked) && activity.busy_since_last_look();
            if looked {
                self.looking = false;
                if !busy && activity.may_park() {
                    return Poll::Ready(Close::Park(idle));
                }
            }
            if ticked {
                self.next_tick = now + tick;
                if activity.moved.swap(false, Ordering::Relaxed) {
                    self.quiet = 0;
                } else {
                    self.quiet += 1;
                    let idle_ticks = quiet_ticks(idle).1;
                    let upload_answers = activity.uploads.load(Ordering::Relaxed) > 0
                        && self.quiet < idle_ticks.saturating_mul(2);
                    if self.quiet >= idle_ticks && !upload_answers {
                        return Poll::Ready(Close::Idle);
                    }
                }
                if !busy && activity.may_park() {
                    return Poll::Ready(Close::Park(
                        idle.saturating_sub(tick.saturating_mul(self.quiet)),
                    ));
                }
            }
            if self.head != 0 && self.head_deadline <= now {
                let current = activity.head.load(Ordering::Relaxed);
                if self.head == current {
                    return Poll::Ready(Close::HeadTimeout);
                }
                (self.head, self.head_deadline) = (current, now + limits.header_read_timeout);
            }
            let mut next = self.next_tick;
            if self.looking {
                next = next.min(first_look);
            }
            if self.head != 0 {
                next = next.min(self.head_deadline);
            }
            self.timer.as_mut().reset(next);
        }
    }
}

pin_project! {
    /// An IO object that records activity and counts bytes on every read or write.
    #[derive(Debug)]
    pub struct ActivityIo<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
        bytes: Option<Arc<ByteCounters>>,
    }
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`, counting bytes read and written into `bytes` (when given: a tunnel's
    /// bytes are counted by the connection it runs on); the returned [`Activity`] is shared
    /// with the idle ticker.
    pub(crate) fn new(inner: T, bytes: Option<Arc<ByteCounters>>) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let io = Self {
            inner,
            activity: Arc::clone(&activity),
            bytes,
        };
        (io, activity)
    }

    /// The wrapped IO object.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The activity this records.
    pub(crate) fn activity(&self) -> &Activity {
        &self.activity
    }
}

impl<T: AsyncRead> AsyncRead for ActivityIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if result.is_ready() {
            this.activity.touch();
            if let Some(bytes) = this.bytes {
                bytes.read.add((buf.filled().len() - before) as u64);
            }
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        this.activity.write_outcome(&result);
        if let Poll::Ready(Ok(written)) = result {
            this.activity.touch();
            if let Some(bytes) = this.bytes {
                bytes.written.add(written as u64);
            }
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write_vectored(cx, bufs);
        this.activity.write_outcome(&result);
        if let Poll::Ready(Ok(written)) = result {
            this.activity.touch();
            if let Some(bytes) = this.bytes {
                bytes.written.add(written as u64);
            }
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let result = this.inner.poll_flush(cx);
        this.activity.write_outcome(&result);
        result
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_fires_only_after_a_quiet_period() {
        let (client, server) = tokio::io::duplex(64);
        let (mut io, activity) = ActivityIo::new(server, None);
        let mut client = client;
        let period = Duration::from_secs(10);
        let watcher = tokio::spawn({
            let activity = Arc::clone(&activity);
            async move {
                activity.idle_for(period).await;
                tokio::time::Instant::now()
            }
        });
        let start = tokio::time::Instant::now();
        // Traffic every 5 s for 30 s keeps the connection alive.
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(b"x").await.expect("write");
            let mut byte = [0u8; 1];
            io.read_exact(&mut byte).await.expect("read");
        }
        let fired_at = watcher.await.expect("watcher");
        let quiet_since = start + Duration::from_secs(30);
        assert!(fired_at >= quiet_since + period, "fired too early");
        assert!(fired_at <= quiet_since + 2 * period, "fired too late");
    }

    /// A listener's client limits with these idle and header-read timeouts.
    fn limits(idle: Duration, head: Duration) -> ClientLimits {
        ClientLimits {
            header_read_timeout: head,
            idle_timeout: idle,
            max_header_bytes: 8192,
            http2: crate::config::Http2Limits {
                max_concurrent_streams: 100,
                max_cancelled_streams: 100,
            },
        }
    }

    /// Runs a [`Watchdog`] on its own task; returns when and why it fired.
    fn watch(
        activity: &Arc<Activity>,
        idle: Duration,
        head: Duration,
    ) -> tokio::task::JoinHandle<(Close, Instant)> {
        let activity = Arc::clone(activity);
        tokio::spawn(async move {
            let limits = limits(idle, head);
            let close = Watchdog::new(&limits).watch(&activity, &limits).await;
            (close, Instant::now())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_incomplete_head_times_out_even_while_bytes_trickle_in() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let watcher = watch(&activity, Duration::from_secs(60), Duration::from_secs(10));
        activity.await_head(1);
        // A byte a second keeps the idle timer quiet, but the head never completes.
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            activity.touch();
        }
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::HeadTimeout);
        assert_eq!(at - start, Duration::from_secs(10));
    }

    /// The connection polls its watchdog only when the watchdog's own waker fired or
    /// `wants_poll` says a head started that it has not timed yet.
    #[tokio::test(start_paused = true)]
    async fn a_started_head_asks_for_a_poll_until_the_watch_times_it() {
        let activity = Arc::new(Activity::default());
        let head_timeout = Duration::from_secs(10);
        let limits = limits(Duration::from_secs(60), head_timeout);
        let mut watchdog = Watchdog::new(&limits);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut poll = |dog: &mut Watchdog| dog.poll_watch(&mut cx, &activity, &limits);
        assert!(poll(&mut watchdog).is_pending());
        assert!(!watchdog.wants_poll(&activity), "no head started");
        let start = Instant::now();
        activity.await_head(1);
        assert!(
            watchdog.wants_poll(&activity),
            "a head started and is not timed yet"
        );
        assert!(poll(&mut watchdog).is_pending());
        assert!(
            !watchdog.wants_poll(&activity),
            "timed: only its timer wakes it now"
        );
        tokio::time::advance(head_timeout).await;
        assert_eq!(poll(&mut watchdog), Poll::Ready(Close::HeadTimeout));
        assert_eq!(Instant::now() - start, head_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_upload_holds_the_idle_close_back_for_one_more_period() {
        let activity = Arc::new(Activity::default());
        let idle = Duration::from_secs(5);
        let start = Instant::now();
        let upload = activity.open_upload();
        let (close, at) = watch(&activity, idle, Duration::from_secs(60))
            .await
            .expect("watcher");
        assert_eq!(close, Close::Idle);
        assert_eq!(
            at - start,
            2 * idle,
            "the upload's 408 had its chance first"
        );
        drop(upload);
        let start = Instant::now();
        let (close, at) = watch(&activity, idle, Duration::from_secs(60))
            .await
            .expect("watcher");
        assert_eq!(close, Close::Idle);
        assert_eq!(at - start, idle);
    }

    #[tokio::test(start_paused = true)]
    async fn completed_heads_disarm_the_deadline_and_idle_takes_over() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let watcher = watch(&activity, Duration::from_secs(60), Duration::from_secs(10));
        // Three slow but timely heads, 8 s each, one right after the other.
        for head in 1..=3 {
            activity.await_head(head);
            tokio::time::sleep(Duration::from_secs(8)).await;
            activity.touch();
            activity.await_head(0);
        }
        // Then a quiet keep-alive connection: only the idle timeout closes it.
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Idle);
        assert!(
            at - start >= Duration::from_secs(24 + 60),
            "{:?}",
            at - start
        );
        assert!(
            at - start <= Duration::from_secs(24 + 120),
            "{:?}",
            at - start
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_following_a_completed_one_gets_its_own_deadline() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let watcher = watch(&activity, Duration::from_secs(600), Duration::from_secs(10));
        activity.await_head(1);
        tokio::time::sleep(Duration::from_secs(9)).await;
        // Head 1 completes just in time and head 2 starts straight away, never completing.
        activity.await_head(0);
        activity.await_head(2);
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::HeadTimeout);
        // Head 2 is timed from when the first deadline noticed it: within twice the timeout.
        let elapsed = at - start;
        assert!(elapsed > Duration::from_secs(10), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(9 + 20), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_parked_at_the_first_tick_after_its_exchange_with_its_idle_time_left() {
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::default());
        activity.start_serving();
        let start = Instant::now();
        let watcher = watch(&activity, idle, Duration::from_secs(10));
        // A response goes out and its exchange ends within the first tick: parked at that tick,
        // not one quiet tick later, and with the whole idle timeout still to wait.
        let exchange = activity.open_exchange();
        tokio::time::sleep(Duration::from_millis(300)).await;
        activity.touch();
        drop(exchange);
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Park(idle));
        assert_eq!(at - start, PARK_AFTER);

        // A slow exchange ends after two quiet ticks with nothing moving: parked at the next
        // tick, with those three quiet ticks taken off the idle time.
        let start = Instant::now();
        let exchange = activity.open_exchange();
        let watcher = watch(&activity, idle, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        drop(exchange);
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Park(idle - 3 * PARK_AFTER));
        assert_eq!(at - start, 3 * PARK_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_done_with_its_request_is_parked_at_the_first_look() {
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::default());
        activity.start_serving();
        let start = Instant::now();
        let watcher = watch(&activity, idle, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
        activity.touch();
        drop(activity.open_exchange());
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Park(idle));
        assert_eq!(at - start, FIRST_LOOK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_in_steady_use_is_parked_only_once_its_requests_stop() {
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::default());
        activity.start_serving();
        let start = Instant::now();
        let watcher = watch(&activity, idle, Duration::from_secs(10));
        // A request every 90 ms until 1.35 s: between two of them at the first look (250 ms)
        // and at the ticks of 1 s and 2 s, but with more than one ended since the look before.
        exchanges(&activity, Duration::from_millis(90), 15).await;
        let (close, at) = watcher.await.expect("watcher");
        // None since the tick of 2 s: parked at 3 s, one quiet tick taken off the idle time.
        assert_eq!(close, Close::Park(idle - PARK_AFTER));
        assert_eq!(at - start, 3 * PARK_AFTER);

        // An idle timeout under a quarter of a second: the first look is the first tick, and
        // counts as one look. Requests every 30 ms until 510 ms keep it awake; it closes idle
        // at the tick of 800 ms, a tick after its last byte.
        activity.start_serving();
        let start = Instant::now();
        let short = Duration::from_millis(200);
        let watcher = watch(&activity, short, Duration::from_secs(10));
        exchanges(&activity, Duration::from_millis(30), 17).await;
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Idle);
        assert_eq!(at - start, 4 * short);

        // A connection that came for one request is parked at the first look, as before.
        activity.start_serving();
        let start = Instant::now();
        let watcher = watch(&activity, idle, Duration::from_secs(10));
        exchanges(&activity, Duration::from_millis(100), 1).await;
        let (close, at) = watcher.await.expect("watcher");
        assert_eq!(close, Close::Park(idle));
        assert_eq!(at - start, FIRST_LOOK);
    }

    /// `count` HTTP/1 exchanges on `activity`, one every `every`, each moving a byte.
    async fn exchanges(activity: &Activity, every: Duration, count: u32) {
        for _ in 0..count {
            tokio::time::sleep(every).await;
            activity.touch();
            drop(activity.open_h1_exchange());
        }
    }

    #[tokio::test]
    async fn parking_waits_for_a_served_exchange_and_flushed_writes() {
        let (client, server) = tokio::io::duplex(16);
        let (mut io, activity) = ActivityIo::new(server, None);
        activity.start_serving();
        // A fresh server is busy until its first exchange ends (a stray CRLF is no request).
        assert!(!activity.may_park());
        drop(activity.open_exchange());
        assert!(activity.may_park());
        // A client that stops reading leaves the response unwritten: a write that has
        // to wait blocks parking until a write completes again.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let written = Pin::new(&mut io).poll_write(&mut cx, &[b'x'; 16]);
        assert!(matches!(written, Poll::Ready(Ok(16))));
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"more").is_pending());
        assert!(!activity.may_park());
        let mut client = client;
        let mut drained = [0u8; 16];
        client.read_exact(&mut drained).await.expect("drain");
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"more").is_ready());
        assert!(activity.may_park());
        activity.start_serving();
        assert!(
            !activity.may_park(),
            "a restarted server has served nothing yet"
        );
    }

    #[test]
    fn an_open_http1_exchange_prevents_parking_until_it_ends() {
        let activity = Activity::default();
        activity.start_serving();
        assert!(!activity.may_park(), "a new server has served nothing yet");
        let exchange = activity.open_h1_exchange();
        assert!(!activity.may_park());
        drop(exchange);
        assert!(activity.may_park());
        let exchange = activity.open_h1_exchange();
        assert!(!activity.may_park());
        drop(exchange);
        assert!(activity.may_park());
    }

    #[tokio::test(start_paused = true)]
    async fn open_exchanges_and_pending_heads_prevent_parking() {
        let activity = Arc::new(Activity::default());
        activity.start_serving();
        drop(activity.open_exchange());
        let exchange = activity.open_exchange();
        assert!(!activity.may_park());
        let start = Instant::now();
        // A slow response: nothing moves, but the exchange is open, so only the idle timeout
        // applies.
        let (close, at) = watch(&activity, Duration::from_secs(5), Duration::from_secs(600))
            .await
            .expect("watcher");
        assert_eq!(close, Close::Idle);
        assert_eq!(at - start, Duration::from_secs(5));
        drop(exchange);
        assert!(activity.may_park());

        let activity = Arc::new(Activity::default());
        activity.start_serving();
        drop(activity.open_exchange());
        activity.await_head(7);
        let start = Instant::now();
        let (close, at) = watch(&activity, Duration::from_secs(5), Duration::from_secs(600))
            .await
            .expect("watcher");
        assert_eq!(close, Close::Idle, "parked inside a request head");
        assert_eq!(at - start, Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_not_allowed_to_park_are_only_closed_when_idle() {
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let (close, at) = watch(
            &activity,
            Duration::from_millis(2500),
            Duration::from_secs(600),
        )
        .await
        .expect("watcher");
        // HTTP/2 and connections whose protocol is not known yet never park. Ticks of a
        // second: closed at the first tick at or past the idle timeout.
        assert_eq!(close, Close::Idle);
        assert_eq!(at - start, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_watch_watches_afresh() {
        let activity = Arc::new(Activity::default());
        let limits = limits(Duration::from_secs(60), Duration::from_secs(10));
        let mut dog = Watchdog::new(&limits);
        activity.start_serving();
        drop(activity.open_exchange());
        let start = Instant::now();
        assert_eq!(
            dog.watch(&activity, &limits).await,
            Close::Park(Duration::from_secs(60))
        );
        assert_eq!(Instant::now() - start, FIRST_LOOK);

        // The park not taken (bytes came), and they are a head that stays incomplete: a
        // fresh watch times it from its next poll and parks nothing meanwhile (a new server
        // has served nothing yet).
        dog.restart(&limits);
        activity.start_serving();
        activity.await_head(1);
        let start = Instant::now();
        assert_eq!(dog.watch(&activity, &limits).await, Close::HeadTimeout);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_shorter_than_the_first_look_is_timed_on_its_own() {
        let activity = Arc::new(Activity::default());
        let limits = limits(Duration::from_secs(60), Duration::from_millis(100));
        let mut dog = Watchdog::new(&limits);
        let start = Instant::now();
        activity.await_head(1);
        assert_eq!(dog.watch(&activity, &limits).await, Close::HeadTimeout);
        assert_eq!(Instant::now() - start, Duration::from_millis(100));
    }
}
