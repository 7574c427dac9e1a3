//! Data plane: a client stream whose writes may not stall longer than a timeout: a client that
//! stops reading (a slow-read attack, a frozen phone) is cut, and the node connection feeding it is
//! freed with it. No timer exists while writes go through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::core::stall::Stall;

pin_project_lite::pin_project! {
    /// `inner` with a deadline on writes that make no progress.
    pub struct SendTimeout<I> {
        // The stream written to.
        #[pin]
        inner: I,
        // How long a write may make no progress before it fails.
        limit: Duration,
        // The current stall, if any.
        stall: Stall,
    }
}

impl<I> SendTimeout<I> {
    pub fn new(inner: I, limit: Duration) -> Self {
        SendTimeout { inner, limit, stall: Stall::default() }
    }

    /// The stream, for what goes around these writes (the lane's splice(2)).
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// How long a write may make no progress.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The stream (a stall in progress is forgotten).
    pub fn into_inner(self) -> I {
        self.inner
    }
}

/// A write's outcome with the deadline applied: progress resets the clock, a stall past the limit
/// is an error.
fn within<T>(
    polled: Poll<io::Result<T>>,
    stall: &mut Stall,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    match polled {
        Poll::Pending => {
            stall.poll_wait(limit, cx).map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")))
        }
        ready => {
            stall.progress();
            ready
        }
    }
}

impl<I: AsyncWrite> AsyncWrite for SendTimeout<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        within(this.inner.poll_write(cx, buf), this.stall, *this.limit, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        within(this.inner.poll_write_vectored(cx, bufs), this.stall, *this.limit, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        within(this.inner.poll_flush(cx), this.stall, *this.limit, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        within(this.inner.poll_shutdown(cx), this.stall, *this.limit, cx)
    }
}

impl<I: AsyncRead> AsyncRead for SendTimeout<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_is_cut_after_the_limit_and_progress_resets_the_clock() {
        // A 1 KiB pipe whose reader never reads: writes stall once it is full.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        w.write_all(&[0u8; 1024]).await.expect("fits the pipe");
        let t0 = Instant::now();
        // Half the limit in, the reader takes some: progress, and the clock starts again.
        let drain = async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            let mut buf = [0u8; 512];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut buf).await.expect("read");
            b
        };
        let (r, _b) = tokio::join!(w.write_all(&[0u8; 4096]), drain);
        let e = r.expect_err("a stalled write must fail");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(8) && took < Duration::from_secs(9), "cut after {took:?}");
    }
}
