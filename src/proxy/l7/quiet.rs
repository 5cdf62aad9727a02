//! A listener's quiet connections: those waiting for their first bytes (parked ones wait in
//! the listener's parked set, [`super::parked`], which the drain closes itself). Each leaves
//! its task's waker here while it waits, so the listener's drain wakes them all from one wait
//! of its own ([`QuietConns::wake_on_drain`]) instead of each keeping a wait on the drain
//! token (64 bytes in every such connection's task).

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Waker;

use slab::Slab;
use tokio_util::sync::CancellationToken;

/// The wakers of a listener's quiet connections.
#[derive(Debug, Default)]
pub(super) struct QuietConns {
    wakers: Mutex<Slab<Waker>>,
}

impl QuietConns {
    /// Wakes every quiet connection once `drain` is cancelled (each then sees the drain and
    /// closes), on a task of its own that ends then.
    pub(super) fn wake_on_drain(self: &Arc<Self>, drain: CancellationToken) {
        let conns = Arc::clone(self);
        tokio::spawn(async move {
            drain.cancelled().await;
            conns.wake_all();
        });
    }

    /// Wakes every connection waiting now.
    fn wake_all(&self) {
        let wakers: Vec<Waker> = self.lock().iter().map(|(_, w)| w.clone()).collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// A place for one connection's waker while it is quiet, given back when dropped.
    pub(super) fn place(&self) -> QuietPlace<'_> {
        QuietPlace {
            conns: self,
            key: NONE,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Waker>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// No waker left yet.
const NONE: u32 = u32::MAX;

/// One quiet connection's place in [`QuietConns`]: its waker, once it has to wait.
#[derive(Debug)]
pub(super) struct QuietPlace<'a> {
    conns: &'a QuietConns,
    key: u32,
}

impl QuietPlace<'_> {
    /// Leaves `waker` to be woken by the drain (replacing the one left before, if it would
    /// wake another task). Called before the connection looks at the drain token for the last
    /// time before it waits, so a drain that begins after that look finds the waker here.
    pub(super) fn leave(&mut self, waker: &Waker) {
        let mut wakers = self.conns.lock();
        if let Some(left) = wakers.get_mut(self.key as usize) {
            if !left.will_wake(waker) {
                left.clone_from(waker);
            }
            return;
        }
        let entry = wakers.vacant_entry();
        // Keys fit in 32 bits: a listener never has four billion connections.
        if let Ok(key) = u32::try_from(entry.key())
            && key != NONE
        {
            entry.insert(waker.clone());
            self.key = key;
        }
    }
}

impl Drop for QuietPlace<'_> {
    fn drop(&mut self) {
        if self.key != NONE {
            self.conns.lock().try_remove(self.key as usize);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    /// Counts its wakes.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn the_drain_wakes_every_connection_waiting_and_none_that_left() {
        let conns = Arc::new(QuietConns::default());
        let drain = CancellationToken::new();
        conns.wake_on_drain(drain.clone());
        let (first, second, gone) = (
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
            Arc::new(Counter::default()),
        );
        let mut waiting = conns.place();
        waiting.leave(&Waker::from(Arc::clone(&first)));
        // Left again by the same task: still one place.
        waiting.leave(&Waker::from(Arc::clone(&first)));
        let mut also = conns.place();
        also.leave(&Waker::from(Arc::clone(&second)));
        {
            let mut left = conns.place();
            left.leave(&Waker::from(Arc::clone(&gone)));
        }
        assert_eq!(conns.lock().len(), 2, "the place given back is free again");
        drain.cancel();
        for _ in 0..100 {
            if second.0.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(first.0.load(Ordering::Relaxed), 1);
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
        assert_eq!(gone.0.load(Ordering::Relaxed), 0);
        drop((waiting, also));
        assert!(conns.lock().is_empty());
    }

    #[test]
    fn a_waker_for_another_task_replaces_the_one_left() {
        let conns = QuietConns::default();
        let (before, after) = (Arc::new(Counter::default()), Arc::new(Counter::default()));
        let mut place = conns.place();
        place.leave(&Waker::from(Arc::clone(&before)));
        place.leave(&Waker::from(Arc::clone(&after)));
        conns.wake_all();
        assert_eq!(before.0.load(Ordering::Relaxed), 0);
        assert_eq!(after.0.load(Ordering::Relaxed), 1);
    }
}
