//! Data plane: body wrappers that count bytes and hand a node connection back to its pool when a response ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::backend::{ActiveGuard, Sender};

pin_project_lite::pin_project! {
    /// A body that adds the size of each data frame to two counters (frontend and node).
    pub struct Counted<B> {
        #[pin]
        inner: B,
        a: Arc<Counter2>,
    }
}

/// The pair of byte counters one direction of one exchange feeds.
#[derive(Debug)]
pub struct Counter2 {
    pub frontend: Arc<crate::stats::FrontendCounters>,
    pub node: Arc<crate::stats::NodeCounters>,
    /// true: bytes from clients (bytes_in); false: bytes to clients (bytes_out).
    pub inbound: bool,
}

impl Counter2 {
    fn add(&self, n: u64) {
        let (f, b): (&AtomicU64, &AtomicU64) = if self.inbound {
            (&self.frontend.bytes_in, &self.node.bytes_in)
        } else {
            (&self.frontend.bytes_out, &self.node.bytes_out)
        };
        f.fetch_add(n, Ordering::Relaxed);
        b.fetch_add(n, Ordering::Relaxed);
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, counters: Arc<Counter2>) -> Self {
        Counted { inner, a: counters }
    }

    /// Count into other counters from now on (the request body learns its node late).
    pub fn set_counters(&mut self, counters: Arc<Counter2>) {
        self.a = counters;
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                this.a.add(d.len() as u64);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A node's response body on its way to the client. Holds the node's active count until it ends
/// and returns the connection to the pool once the body was read to its end.
pub struct Tracked {
    inner: Counted<Incoming>,
    sender: Option<Sender>,
    guard: ActiveGuard,
}

impl Tracked {
    pub fn new(inner: Counted<Incoming>, sender: Sender, guard: ActiveGuard) -> Self {
        Tracked { inner, sender: Some(sender), guard }
    }

    fn finish(&mut self) {
        if let Some(s) = self.sender.take() {
            self.guard.backend.release(s);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.finish(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.finish(),
            Some(Err(_)) => {
                this.sender = None;
                this.guard.backend.counters.response_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Empty bodies (HEAD, 204, 304) may be dropped unpolled: the connection is still reusable.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
