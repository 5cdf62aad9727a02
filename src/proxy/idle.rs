//! Idle detection and byte counting for client connections.
//!
//! The IO wrapper only sets a flag on each read or write (no clock call on the data path); a
//! per-connection ticker clears it every period and reports idleness when it was already clear.
//! A connection is therefore closed between one and two periods after its last byte.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared flag: "something moved since the last tick".
#[derive(Debug, Default)]
pub struct Activity(AtomicBool);

impl Activity {
    fn touch(&self) {
        // Skip the store when already set, so the data path does not keep dirtying the line.
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    /// Resolves once a whole `period` passes without any read or write.
    pub async fn idle_for(&self, period: Duration) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if !self.0.swap(false, Ordering::Relaxed) {
                return;
            }
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
        bytes_in: Counter,
        bytes_out: Counter,
    }
}

impl<T> ActivityIo<T> {
    /// Wraps `inner`, counting bytes read into `bytes_in` and written into `bytes_out`; the
    /// returned [`Activity`] is shared with the idle ticker.
    pub fn new(inner: T, bytes_in: Counter, bytes_out: Counter) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        let io = Self {
            inner,
            activity: Arc::clone(&activity),
            bytes_in,
            bytes_out,
        };
        (io, activity)
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
            this.bytes_in
                .increment((buf.filled().len() - before) as u64);
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
        if let Poll::Ready(Ok(written)) = result {
            this.activity.touch();
            this.bytes_out.increment(written as u64);
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
        if let Poll::Ready(Ok(written)) = result {
            this.activity.touch();
            this.bytes_out.increment(written as u64);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
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
        let (mut io, activity) = ActivityIo::new(server, Counter::noop(), Counter::noop());
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
}
