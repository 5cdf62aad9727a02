//! The waker an awake client connection gives its side futures.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

/// The waker an awake connection gives its side futures (watchdog, shutdown wait): it notes
/// that one of them may be ready, then wakes the connection's task. Polling them only then
/// spares every other wake a timer registration and the shutdown wait's lock.
pub(super) struct SideWake {
    woken: AtomicBool,
    task: std::task::Waker,
}

impl SideWake {
    /// A side waker for the task that awaits this, noted as woken so the first poll looks.
    pub(super) async fn new() -> Arc<Self> {
        let task = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        Arc::new(Self {
            woken: AtomicBool::new(true),
            task,
        })
    }

    /// Whether a side future was woken since the last call.
    pub(super) fn take(&self) -> bool {
        // Looked at first: most polls find it unset, and a load takes no bus lock.
        self.woken.load(Ordering::Acquire) && self.woken.swap(false, Ordering::AcqRel)
    }

    /// Has the side futures polled at the next look, as if woken (from inside the task).
    pub(super) fn look_again(&self) {
        self.woken.store(true, Ordering::Release);
    }
}

impl std::task::Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}
