//! Connection limits: a listener's `max_connections` (its accept loop waits, so new clients
//! wait in the kernel's accept backlog) and a backend's `max_connections` (requests wait in
//! their pool's queue, see `state::Pool::next_attempt`).
//!
//! Both count units in an atomic, taken with [`take_unit`] and given back with
//! [`Waiters::give_back`], which costs one atomic load more while nobody waits and wakes one
//! waiter otherwise. A waiter registers before it looks for room, so a unit given back between
//! its look and its sleep still wakes it.

use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use metrics::Counter;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Tasks waiting for capacity to be given back.
#[derive(Debug, Default)]
pub struct Waiters {
    /// Registered waiters; `SeqCst` with the capacity counters, so a release either sees a
    /// waiter or the waiter sees the released unit.
    waiting: AtomicUsize,
    notify: Notify,
}

/// Adds one unit to `count` if it is below `max` (0: no cap); whether it did.
pub(crate) fn take_unit(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (max == 0 || n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Waiters {
    /// Gives one unit of `count` back and wakes one waiter, if there is one. `SeqCst` pairs
    /// with the registration in [`Waiters::wait_for`]: either a waiter registered before this
    /// and is woken, or it registers after and finds the room.
    pub fn give_back(&self, count: &AtomicUsize) {
        count.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.notify.notify_one();
        }
    }

    /// Wakes every waiter to look again: the limits or the set of usable backends changed.
    pub fn recheck(&self) {
        self.notify.notify_waiters();
    }

    /// How many tasks wait right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits until `take` finds room (`Some`), looking again each time capacity is given back,
    /// or until `deadline` passes (`None`). `take` runs at least once.
    pub async fn wait_for<T>(
        &self,
        mut take: impl FnMut() -> Option<T>,
        deadline: Option<Instant>,
    ) -> Option<T> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _registered = Registered(self);
        loop {
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            if let Some(taken) = take() {
                return Some(taken);
            }
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, notified).await.ok()?,
                None => notified.await,
            }
        }
    }
}

/// Holds one registration in [`Waiters::waiting`].
struct Registered<'a>(&'a Waiters);

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A listener's cap on open client connections, adjustable by a reload.
#[derive(Debug)]
pub struct ConnectionLimit {
    /// The cap; 0 when there is none.
    max: AtomicUsize,
    /// Connections holding an [`OpenConnection`].
    open: AtomicUsize,
    /// Set while the accept loop waits at the cap, so reaching it is logged once per episode.
    saturated: AtomicBool,
    /// Counts the episodes.
    saturations: Counter,
    waiters: Waiters,
}

impl ConnectionLimit {
    /// A limit of `max` open connections (`None`: unlimited); `saturations` counts the
    /// episodes of waiting at it.
    pub fn new(max: Option<NonZeroUsize>, saturations: Counter) -> Arc<Self> {
        let limit = Arc::new(Self {
            max: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            saturated: AtomicBool::new(false),
            saturations,
            waiters: Waiters::default(),
        });
        limit.set(max);
        limit
    }

    /// Changes the cap; an accept loop waiting at the old one looks again.
    pub fn set(&self, max: Option<NonZeroUsize>) {
        self.max
            .store(max.map_or(0, NonZeroUsize::get), Ordering::SeqCst);
        self.waiters.recheck();
    }

    /// The cap, if there is one.
    pub fn max(&self) -> Option<NonZeroUsize> {
        NonZeroUsize::new(self.max.load(Ordering::Relaxed))
    }

    /// Open connections right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a connection until the returned guard drops, if the cap leaves room.
    pub fn try_open(self: &Arc<Self>) -> Option<OpenConnection> {
        take_unit(&self.open, self.max.load(Ordering::SeqCst))
            .then(|| OpenConnection(Arc::clone(self)))
    }

    /// A unit of room, waiting for a connection to close while the cap is reached. Returns
    /// whether this starts an episode of waiting (the first wait since the count was at nine
    /// tenths of the cap or less), which is counted, so the caller can log it once.
    pub async fn acquire(self: &Arc<Self>) -> (OpenConnection, bool) {
        if let Some(open) = self.try_open() {
            let max = self.max.load(Ordering::Relaxed);
            if max != 0 && self.open() * 10 <= max * 9 {
                self.saturated.store(false, Ordering::Relaxed);
            }
            return (open, false);
        }
        let first = !self.saturated.swap(true, Ordering::Relaxed);
        if first {
            self.saturations.increment(1);
        }
        loop {
            // Without a deadline the wait only ends with room.
            if let Some(open) = self.waiters.wait_for(|| self.try_open(), None).await {
                return (open, first);
            }
        }
    }
}

/// One open connection counted against a [`ConnectionLimit`]; dropping it gives the unit back.
#[derive(Debug)]
pub struct OpenConnection(Arc<ConnectionLimit>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.waiters.give_back(&self.0.open);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limit(max: usize) -> Arc<ConnectionLimit> {
        ConnectionLimit::new(NonZeroUsize::new(max), Counter::noop())
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_and_a_close_lets_the_next_one_in() {
        let limit = limit(2);
        let (a, waited_a) = limit.acquire().await;
        let (_b, waited_b) = limit.acquire().await;
        assert!(!waited_a && !waited_b);
        assert!(limit.try_open().is_none());
        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a third connection must wait");
        drop(a);
        let (_c, waited) = waiting.await.expect("task");
        assert!(waited, "the wait is reported");
        assert_eq!(limit.open(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_cap_wakes_a_waiting_accept_loop() {
        let limit = limit(1);
        let (_a, _) = limit.acquire().await;
        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await.0 }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        limit.set(NonZeroUsize::new(2));
        let _b = waiting.await.expect("task");
        assert_eq!(limit.open(), 2);
        limit.set(None);
        let _more: Vec<_> = (0..10)
            .map(|_| limit.try_open().expect("unlimited"))
            .collect();
        assert_eq!(limit.open(), 12);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_is_reported_once_per_episode() {
        let limit = limit(10);
        let mut open: Vec<_> = (0..10).map(|_| limit.try_open().expect("room")).collect();
        for round in 0..3 {
            let waiting = tokio::spawn({
                let limit = Arc::clone(&limit);
                async move { limit.acquire().await }
            });
            tokio::task::yield_now().await;
            open.pop();
            let (connection, waited) = waiting.await.expect("task");
            assert_eq!(waited, round == 0, "round {round}");
            open.push(connection);
        }
        // Down to nine tenths of the cap ends the episode; the next wait is reported again.
        open.truncate(8);
        let (connection, _) = limit.acquire().await;
        open.push(connection);
        open.push(limit.try_open().expect("room"));
        let waiting = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await.1 }
        });
        tokio::task::yield_now().await;
        open.pop();
        assert!(waiting.await.expect("task"));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_give_up_at_their_deadline() {
        let waiters = Waiters::default();
        let started = Instant::now();
        let taken: Option<()> = waiters
            .wait_for(|| None, Some(started + Duration::from_millis(300)))
            .await;
        assert!(taken.is_none());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(waiters.waiting(), 0, "the registration ends with the wait");
    }
}
