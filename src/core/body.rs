//! Core: body wrappers that count bytes, bound a node's silence mid-body, and hand a node
//! connection back to its pool when a response ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::backend::{ActiveGuard, Sender};
use super::counters::{FrontendCounters, NodeCounters};
use super::stall::Stall;

/// Which direction a body's bytes count in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Bytes from clients (bytes_in).
    Inbound,
    /// Bytes to clients (bytes_out).
    Outbound,
}

pin_project_lite::pin_project! {
    /// A body that adds the size of each data frame to the frontend's and the node's counters.
    /// Holds the counters themselves (no per-request allocation, only reference counts).
    pub struct Counted<B> {
        // The body whose frames are counted.
        #[pin]
        inner: B,
        // Always counted into: the client side's bytes.
        frontend: Arc<FrontendCounters>,
        // None until the node is known (a request body is built before a node is picked).
        node: Option<Arc<NodeCounters>>,
        // Which counters the bytes go to: bytes_in or bytes_out.
        dir: Direction,
        // Set once the body has been read to its end (only for uploads whose end matters).
        ended: Option<Arc<AtomicBool>>,
        // This body's own byte count (only for the access log's line of its request).
        mine: Option<Arc<AtomicU64>>,
    }
}

impl<B> Counted<B> {
    pub fn new(inner: B, frontend: Arc<FrontendCounters>, node: Option<Arc<NodeCounters>>, dir: Direction) -> Self {
        Counted { inner, frontend, node, dir, ended: None, mine: None }
    }

    /// A counter of this body's own bytes (the access log's `bytes_in`).
    pub fn count_mine(&mut self) -> Arc<AtomicU64> {
        self.mine.get_or_insert_with(Arc::default).clone()
    }

    /// A flag that turns true when this body has been read to its end: tells a slow client's
    /// upload apart from a slow node.
    pub fn track_end(&mut self) -> Arc<AtomicBool> {
        self.ended.get_or_insert_with(|| Arc::new(AtomicBool::new(false))).clone()
    }

    /// Count into this node from now on (the request body learns its node late).
    pub fn set_node(&mut self, node: Arc<NodeCounters>) {
        self.node = Some(node);
    }

    fn add(frontend: &FrontendCounters, node: Option<&NodeCounters>, dir: Direction, n: u64) {
        match dir {
            Direction::Inbound => {
                frontend.bytes_in.fetch_add(n, Ordering::Relaxed);
                if let Some(c) = node {
                    c.bytes_in.fetch_add(n, Ordering::Relaxed);
                }
            }
            Direction::Outbound => {
                frontend.bytes_out.fetch_add(n, Ordering::Relaxed);
                if let Some(c) = node {
                    c.bytes_out.fetch_add(n, Ordering::Relaxed);
                }
            }
        }
    }
}

impl<B: Body<Data = Bytes>> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(d) = f.data_ref() {
                Self::add(this.frontend, this.node.as_deref(), *this.dir, d.len() as u64);
                if let Some(m) = this.mine.as_ref() {
                    m.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
        }
        if let Some(flag) = this.ended.as_ref() {
            if frame.is_none() || inner.is_end_stream() {
                flag.store(true, Ordering::Relaxed);
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

/// Why a response body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("node connection failed mid-body: {0}")]
    Node(#[from] hyper::Error),
    #[error("node sent nothing for {0:?} in the middle of a response body")]
    Stalled(Duration),
}

pin_project_lite::pin_project! {
    /// A node's response body on its way to the client. Holds the node's active count until it
    /// ends, returns the connection to the pool once the body was read to its end (never after an
    /// error), and fails the body if the node stays silent for `idle` in the middle of it, so a
    /// frozen node cannot hang a client forever.
    pub struct Tracked {
        // The node's body, its bytes counted.
        inner: Counted<Incoming>,
        // The first frame, read before the response head went to the client (see `new`).
        first: Option<First>,
        // The node connection, back to the pool once the body ends (None once released or broken).
        sender: Option<Sender>,
        // Keeps the request counted active on its node until the body ends.
        guard: ActiveGuard,
        // How long the node may stay silent mid-body (`[timeouts] server`).
        idle: Duration,
        // The node's silence mid-body: no timer at all for a body that came with its head.
        stall: Stall,
    }

    impl PinnedDrop for Tracked {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Empty bodies (HEAD, 204, 304) may be dropped unpolled: the connection is still reusable.
            if this.first.is_none() && this.inner.is_end_stream() {
                if let Some(s) = this.sender.take() {
                    this.guard.backend.release(s);
                }
            }
        }
    }
}

impl Tracked {
    /// `first`: a frame already read from `inner` (the proxy reads one before answering, so that a
    /// node that sends a head and closes gets the client a 502 rather than a cut response).
    /// `sender`: the connection to pool when the body ends; None when the node closes it.
    pub fn new(
        inner: Counted<Incoming>,
        first: Option<Frame<Bytes>>,
        sender: Option<Sender>,
        guard: ActiveGuard,
        idle: Duration,
    ) -> Self {
        let first = first.map(|f| match f.into_data() {
            Ok(data) => First::Data(data),
            Err(other) => First::Other(Box::new(other)),
        });
        Tracked { inner, first, sender, guard, idle, stall: Stall::default() }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Some(f) = this.first.take() {
            if this.inner.is_end_stream() {
                release(this.sender, this.guard);
            }
            return Poll::Ready(Some(Ok(match f {
                First::Data(data) => Frame::data(data),
                First::Other(frame) => *frame,
            })));
        }
        let frame = match Pin::new(&mut *this.inner).poll_frame(cx) {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if this.stall.poll_wait(*this.idle, cx).is_ready() {
                    // The connection is mid-body: never reuse it.
                    *this.sender = None;
                    this.guard.backend.counters.response_errors.fetch_add(1, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::Stalled(*this.idle))));
                }
                return Poll::Pending;
            }
        };
        this.stall.progress();
        match &frame {
            None => release(this.sender, this.guard),
            Some(Ok(_)) if this.inner.is_end_stream() => release(this.sender, this.guard),
            Some(Err(_)) => {
                *this.sender = None;
                this.guard.backend.counters.response_errors.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|r| r.map_err(BodyError::Node)))
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        let held = match &self.first {
            Some(First::Data(d)) => d.len() as u64,
            _ => 0,
        };
        if held > 0 {
            // Upper first: SizeHint refuses a lower bound above the current upper one.
            if let Some(u) = hint.upper() {
                hint.set_upper(u + held);
            }
            hint.set_lower(hint.lower() + held);
        }
        hint
    }
}

/// The first frame of a body, held: data (nearly always) kept inline, anything else boxed.
enum First {
    /// A data frame's bytes.
    Data(Bytes),
    /// A trailers frame (a chunked body that is empty but for its trailers).
    Other(Box<Frame<Bytes>>),
}

fn release(sender: &mut Option<Sender>, guard: &ActiveGuard) {
    if let Some(s) = sender.take() {
        guard.backend.release(s);
    }
}
