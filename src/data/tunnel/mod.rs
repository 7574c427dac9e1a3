//! Data plane: the bidirectional tunnel behind an upgraded connection (WebSocket), with idle timeout
//! and a clean 1001 close frame when the node goes away or the gateway stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use std::io;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

use crate::core::backend::{ActiveGuard, NodeStream};
use crate::core::counters::FrontendCounters;
use crate::core::shed::Shed;
use crate::core::Lifecycle;
use crate::data::edge::access_log::{FirstClose, WsEnd, WsRecord};
use crate::data::send_timeout::SendTimeout;
use crate::data::serve::ClientStream;

mod side;
use side::side;

/// How long a closing tunnel waits for the node to finish the frame it is sending.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// The worker's read buffer: one per thread, shared by every tunnel on it.
const SCRATCH: usize = 64 * 1024;

thread_local! {
    static SCRATCH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SCRATCH]);
}

/// One direction's copy. Thousands of WebSockets stay open for hours and are idle nearly all the
/// time, so a tunnel holds no buffer of its own: reads land in the worker's scratch buffer and
/// are written on at once from there; only what the writer cannot take at once (a slow reader) is
/// copied into a buffer of the tunnel's, freed once written. No allocation, no zeroing per message.
#[derive(Debug, Default)]
pub struct Pump {
    /// Bytes read but not yet written, and how far they are written.
    pending: Vec<u8>,
    /// How much of `pending` is written already.
    written: usize,
    /// What the call that left `pending` will report once it is written: (read, kept).
    report: (usize, usize),
}

impl Pump {
    /// Read what `r` has and write it to `w`, all of it before this returns. `keep` sees the bytes
    /// read and says how many of the first ones go on (the rest are dropped: a close after a
    /// frame boundary). Returns (bytes read, bytes written); (0, 0) at end of stream.
    /// A plain future, not an `async fn`: one wrapping the `poll_fn` stored its references twice,
    /// in every tunnel's task (for as long as the WebSocket is open).
    pub fn pump<'a, R, W>(
        &'a mut self,
        r: &'a mut R,
        w: &'a mut W,
        mut keep: impl FnMut(&[u8]) -> usize + 'a,
    ) -> impl Future<Output = io::Result<(usize, usize)>> + 'a
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        std::future::poll_fn(move |cx| {
            if !self.pending.is_empty() {
                // An earlier poll read more than the writer took: finish that first.
                while self.written < self.pending.len() {
                    match Pin::new(&mut *w).poll_write(cx, &self.pending[self.written..]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(k)) => self.written += k,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.pending = Vec::new();
                self.written = 0;
                return Poll::Ready(Ok(self.report));
            }
            SCRATCH_BUF.with_borrow_mut(|buf| {
                let mut rb = ReadBuf::new(buf);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Ok((0, 0)));
                }
                let upto = keep(&buf[..n]).min(n);
                let mut off = 0;
                while off < upto {
                    match Pin::new(&mut *w).poll_write(cx, &buf[off..upto]) {
                        Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                        Poll::Ready(Ok(k)) => off += k,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            // The writer's waker is registered: keep the rest until it can take it.
                            self.pending = buf[off..upto].to_vec();
                            self.written = 0;
                            self.report = (n, upto);
                            return Poll::Pending;
                        }
                    }
                }
                Poll::Ready(Ok((n, upto)))
            })
        })
    }

    /// Whether a buffer is held now (tests, memory accounting).
    pub fn held(&self) -> bool {
        self.pending.capacity() > 0
    }
}

/// What a client connection holds while it is open, handed on to its tunnel when it upgrades (a
/// WebSocket keeps counting as a connection).
#[derive(Debug, Default)]
pub struct Held {
    /// Its place under `[gateway] max_connections`.
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Its count under `[limits] client_connections`.
    pub conn: Option<crate::data::edge::limits::ConnGuard>,
}

/// A connection's [`Held`], handed from the HTTP connection to its tunnel.
#[derive(Debug)]
pub struct PermitSlot(std::sync::Mutex<Option<Held>>);

impl PermitSlot {
    pub fn new(h: Held) -> Self {
        PermitSlot(std::sync::Mutex::new(Some(h)))
    }

    /// Take what the connection holds (once per connection; an upgrade ends the HTTP connection).
    pub fn take(&self) -> Option<Held> {
        crate::util::lock(&self.0).take()
    }
}

/// What a tunnel needs besides its two streams.
pub struct Tunnel {
    /// What it is for (WebSocket or not, idle timeout, SDK heartbeats).
    pub opts: RunOpts,
    /// Its node, counted busy until the tunnel ends.
    pub guard: ActiveGuard,
    /// Cancelled when the node goes down or into maintenance (taken before the exchange, so a node
    /// marked down meanwhile still closes this tunnel).
    pub kill: CancellationToken,
    /// The session's access log line, written when it ends (None: no access log).
    pub log: Option<Box<WsRecord>>,
}

/// Start the tunnel task once both sides have switched protocols (hyper's path).
pub fn spawn(
    life: &Lifecycle,
    frontend: &Arc<FrontendCounters>,
    t: Tunnel,
    permit: Option<Held>,
    client: OnUpgrade,
    node: OnUpgrade,
) {
    let frontend = frontend.clone();
    let close_all = life.close_tunnels.clone();
    life.connections.spawn(async move {
        let (client, node) = match tokio::try_join!(client, node) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                if let Some(r) = t.log {
                    r.never_opened();
                }
                return;
            }
        };
        // Plain TCP on both sides (the common case) skips hyper's `Upgraded` on every read and write.
        let client = side::<SendTimeout<ClientStream>, _>(client, |s| s);
        let node = side::<NodeStream, _>(node, NodeStream::into_inner);
        relay(frontend, close_all, t, client, node, permit).await;
    });
}

/// Relay a switched connection both ways until it ends, counted as a tunnel of the frontend and
/// of its node, its access log line written at the end; `held` (the connection's places) is let
/// go then. The streams are split here, before the future is made: a task holds every WebSocket
/// for as long as it is open, and streams moved into a future's own future are stored twice
/// (each time it was ~100 bytes a side, in every tunnel's task).
pub fn relay<C, N>(
    frontend: Arc<FrontendCounters>,
    close_all: CancellationToken,
    t: Tunnel,
    client: C,
    node: N,
    held: Option<Held>,
) -> impl Future<Output = ()> + Send
where
    C: AsyncRead + AsyncWrite + Send,
    N: AsyncRead + AsyncWrite + Send,
{
    let (client, node) = (tokio::io::split(client), tokio::io::split(node));
    async move {
        // The tunnel's fields are used where they are (copies of them would widen the task).
        let backend = &t.guard.backend;
        let f = &frontend;
        let c = &backend.counters;
        f.tunnels.fetch_add(1, Ordering::Relaxed);
        f.tunnels_total.fetch_add(1, Ordering::Relaxed);
        c.tunnels.fetch_add(1, Ordering::Relaxed);
        c.tunnels_total.fetch_add(1, Ordering::Relaxed);
        let io = TunnelIo {
            bytes_in: [&f.bytes_in, &c.bytes_in],
            bytes_out: [&f.bytes_out, &c.bytes_out],
            pings_answered: &f.sdk_pings_answered,
            session: t.log.as_ref().map(|_| Session::default()),
        };
        let draw = Some((&backend.shed, crate::util::epoch_ms()));
        let end = run_split(client, node, t.opts, &t.kill, &close_all, draw, &io).await;
        tracing::debug!(node = %backend.name, ?end, "tunnel closed");
        if let (Some(r), Some(s)) = (&t.log, &io.session) {
            r.log.websocket(r, s.end(end));
        }
        f.tunnels.fetch_sub(1, Ordering::Relaxed);
        c.tunnels.fetch_sub(1, Ordering::Relaxed);
        drop(t);
        drop(held);
    }
}

/// Counters one tunnel feeds.
pub struct TunnelIo<'a> {
    /// Client-to-node bytes: the frontend's and the node's counters.
    pub bytes_in: [&'a AtomicU64; 2],
    /// Node-to-client bytes: the frontend's and the node's counters.
    pub bytes_out: [&'a AtomicU64; 2],
    /// SDK heartbeats answered here (the frontend's counter).
    pub pings_answered: &'a AtomicU64,
    /// This session's own figures, for its access log line (None: no access log).
    pub session: Option<Session>,
}

/// One session's bytes and who closed it first (only kept when the access log is on).
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes from the client.
    pub bytes_in: AtomicU64,
    /// Bytes to the client.
    pub bytes_out: AtomicU64,
    /// Who closed first, with which code.
    pub first_close: FirstClose,
}

impl Session {
    /// The line's figures, once the tunnel ended with `end`.
    pub fn end(&self, end: TunnelEnd) -> WsEnd {
        if matches!(end, TunnelEnd::Idle | TunnelEnd::NodeGone | TunnelEnd::Shutdown) {
            self.first_close.set(FirstClose::GATEWAY, Some(1001));
        }
        let (closed_by, close_code) = self.first_close.get();
        WsEnd {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            close_code,
            closed_by,
        }
    }
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    /// One side closed normally.
    Closed,
    /// A read or write failed.
    Error,
    /// Idle for the tunnel timeout.
    Idle,
    /// The node was marked down / put in maintenance.
    NodeGone,
    /// The gateway is shutting down.
    Shutdown,
    /// Drawn by WebSocket rebalancing (`[fleet] rebalance_websockets`): closed with 1012.
    Rebalanced,
}

/// Why a rebalancing close says so: 1012 ("service restart") makes SDKs reconnect, never 1000.
pub const REBALANCE_CLOSE: (u16, &str) = (1012, "rebalancing: please reconnect");

/// What a tunnel is for, as the request that opened it and the configuration say.
#[derive(Debug, Clone, Copy)]
pub struct RunOpts {
    /// A WebSocket (frames are followed; closes are close frames), not another upgrade.
    pub websocket: bool,
    /// Closed after this long with nothing moving either way.
    pub idle: Duration,
    /// `[gateway] sdk_pings = "answer"`: SDK heartbeats are answered here but for one in this
    /// long, which goes on to the node (WebSockets only).
    pub pings: Option<Duration>,
}

impl RunOpts {
    /// A tunnel's rules as the configuration gives them (`websocket`: the upgrade was to it).
    pub fn of(cfg: &crate::control::config::Config, websocket: bool) -> Self {
        let pings = (cfg.gateway.sdk_pings == crate::control::config::SdkPings::Answer)
            .then_some(cfg.gateway.sdk_ping_forward.0);
        RunOpts { websocket, idle: cfg.timeouts.tunnel.0, pings }
    }
}

/// The official SDKs' heartbeat answer, as Kuzzle sends it: an unmasked text frame `{"p":2}`.
const SDK_PONG: &[u8] = b"\x81\x07{\"p\":2}";
/// Most heartbeat answers owed to one client before further heartbeats are forwarded instead (a
/// client that sends and never reads holds no more than this).
const MAX_OWED_PONGS: u8 = 16;

/// Whether `d` is exactly one SDK heartbeat from a client: a masked, unfragmented, uncompressed
/// text frame whose payload is `{"p":1}`.
fn is_sdk_ping(d: &[u8]) -> bool {
    const PING: &[u8; 7] = b"{\"p\":1}";
    d.len() == 13 && d[0] == 0x81 && d[1] == 0x87 && (0..7).all(|i| d[6 + i] ^ d[2 + i % 4] == PING[i])
}

/// [`run_split`] on whole streams: what the unit tests drive (the gateway's tunnels go through
/// [`relay`], which splits them itself).
#[cfg(test)]
pub fn run<'a, C, N>(
    client: C,
    node: N,
    opts: RunOpts,
    kill: &'a CancellationToken,
    shutdown: &'a CancellationToken,
    draw: Option<(&'a Shed, u64)>,
    io: &'a TunnelIo<'a>,
) -> impl Future<Output = TunnelEnd> + Send + 'a
where
    C: AsyncRead + AsyncWrite + Send + 'a,
    N: AsyncRead + AsyncWrite + Send + 'a,
{
    run_split(tokio::io::split(client), tokio::io::split(node), opts, kill, shutdown, draw, io)
}

/// Copy both ways until one side ends, a stop signal fires, or nothing moves for `opts.idle`.
/// `draw`: the node's rebalancing draws and when this tunnel opened (epoch ms); a drawn tunnel
/// closes with [`REBALANCE_CLOSE`]. The streams come split (before the future is made: see
/// [`relay`]).
async fn run_split<C, N>(
    client: (ReadHalf<C>, WriteHalf<C>),
    node: (ReadHalf<N>, WriteHalf<N>),
    opts: RunOpts,
    kill: &CancellationToken,
    shutdown: &CancellationToken,
    draw: Option<(&Shed, u64)>,
    io: &TunnelIo<'_>,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Send,
    N: AsyncRead + AsyncWrite + Send,
{
    let RunOpts { websocket, idle, pings } = opts;
    let (mut cr, mut cw) = client;
    let (mut nr, mut nw) = node;
    // tokio's clock, the one the idle timer runs on (and tests pause).
    let start = tokio::time::Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    // Set by the watcher (same task: no waker needed, the select loop polls the copy again).
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Set with `stop` when the reason is a rebalancing draw.
    let drawn = std::sync::atomic::AtomicBool::new(false);
    let stopped =
        || std::future::poll_fn(|_| if stop.load(Ordering::Relaxed) { Poll::Ready(()) } else { Poll::Pending });
    // SDK heartbeats answered here: counted by the client's side, written by the node's side
    // (the writer of the client's stream), like the gateway's close frames, between two frames.
    // Atomics only because the task must be Send: one task reads and writes them.
    let owed = std::sync::atomic::AtomicU8::new(0);
    // Every byte read from the node is written to the client and that stream is between two
    // frames: a frame of the gateway's own (an answer, a close) may go now. The node's side keeps
    // it (its frame tracker is borrowed by the copy while a read is in progress).
    let between = std::sync::atomic::AtomicBool::new(true);
    // Ready when an answer is owed and may go now; no waker: the client's side wakes this task.
    let pong_due = || {
        std::future::poll_fn(|_| {
            if owed.load(Ordering::Relaxed) > 0 && between.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    };

    let client_to_node = async {
        let mut pump = Pump::default();
        // The client's frames are followed for the access log (its close code) and to find the
        // SDK heartbeats at frame boundaries.
        let mut frames = (websocket && (io.session.is_some() || pings.is_some())).then(FrameTracker::default);
        // When the next heartbeat goes on to the node (one per `pings` period).
        let mut next_forward = tokio::time::Instant::now() + pings.unwrap_or_default();
        loop {
            let mut answered = false;
            let keep = |d: &[u8]| {
                if let (Some(every), Some(f)) = (pings, frames.as_ref()) {
                    if f.at_boundary() && is_sdk_ping(d) && owed.load(Ordering::Relaxed) < MAX_OWED_PONGS {
                        let now = tokio::time::Instant::now();
                        if now < next_forward {
                            owed.store(owed.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                            answered = true;
                            return 0;
                        }
                        next_forward = now + every;
                    }
                }
                if let Some(f) = frames.as_mut() {
                    f.advance(d, false);
                }
                d.len()
            };
            let r = pump.pump(&mut cr, &mut nw, keep).await;
            if answered {
                // The node's side writes the answer: have this task polled again (same task, so
                // no other thread is woken) so that it does at once.
                std::future::poll_fn(|cx| {
                    cx.waker().wake_by_ref();
                    Poll::Ready(())
                })
                .await;
            }
            let n = match r {
                Ok((n, _)) => n,
                Err(e) => {
                    if let Some(s) = &io.session {
                        s.first_close.set(FirstClose::CLIENT, None);
                    }
                    return Err(e);
                }
            };
            if let Some(s) = &io.session {
                if let Some(code) = frames.as_mut().and_then(FrameTracker::take_close) {
                    s.first_close.set(FirstClose::CLIENT, Some(code));
                }
                if n == 0 {
                    s.first_close.set(FirstClose::CLIENT, None);
                }
                s.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            if n == 0 {
                let _ = nw.shutdown().await;
                return Ok::<(), std::io::Error>(());
            }
            touch();
            for a in io.bytes_in {
                a.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    };

    let node_to_client = async {
        let mut pump = Pump::default();
        let mut frames = FrameTracker::default();
        let mut closing: Option<(tokio::time::Instant, (u16, &'static str))> = None;
        loop {
            let is_closing = closing.is_some();
            // Never an answer after the node's close frame, nor while the gateway closes.
            let may_answer = pings.is_some() && !frames.saw_close && !is_closing;
            let keep = |d: &[u8]| {
                between.store(false, Ordering::Relaxed);
                if websocket {
                    frames.advance(d, is_closing)
                } else {
                    d.len()
                }
            };
            let (n, sent) = tokio::select! {
                biased;
                r = pump.pump(&mut nr, &mut cw, keep) => match r {
                    Ok(x) => x,
                    Err(_) => {
                        if let Some(s) = &io.session {
                            s.first_close.set(FirstClose::NODE, None);
                        }
                        return TunnelEnd::Error;
                    }
                },
                _ = stopped(), if closing.is_none() => {
                    let why = if shutdown.is_cancelled() {
                        (1001, "gateway shutting down")
                    } else if drawn.load(Ordering::Relaxed) {
                        REBALANCE_CLOSE
                    } else {
                        (1001, "node going away")
                    };
                    if !websocket || between.load(Ordering::Relaxed) {
                        if websocket {
                            let _ = cw.write_all(&close_frame(why.0, why.1)).await;
                        }
                        let _ = cw.shutdown().await;
                        return stop_reason(kill, shutdown, &drawn);
                    }
                    closing = Some((tokio::time::Instant::now() + CLOSE_WAIT, why));
                    continue;
                }
                _ = pong_due(), if may_answer => {
                    owed.store(owed.load(Ordering::Relaxed) - 1, Ordering::Relaxed);
                    io.pings_answered.fetch_add(1, Ordering::Relaxed);
                    if cw.write_all(SDK_PONG).await.is_err() {
                        return TunnelEnd::Error;
                    }
                    continue;
                }
                // Boxed: only a closing tunnel needs this timer, and inline it would widen every tunnel.
                _ = async { if let Some((d, _)) = closing { Box::pin(tokio::time::sleep_until(d)).await } }, if closing.is_some() => {
                    return stop_reason(kill, shutdown, &drawn);
                }
            };
            if let Some(s) = &io.session {
                if let Some(code) = frames.take_close() {
                    s.first_close.set(FirstClose::NODE, Some(code));
                }
                if n == 0 {
                    s.first_close.set(FirstClose::NODE, None);
                }
                s.bytes_out.fetch_add(sent as u64, Ordering::Relaxed);
            }
            if n == 0 {
                // The node went away without a close frame: tell the client it may reconnect.
                if websocket && frames.at_boundary() && !frames.saw_close {
                    let _ = cw.write_all(&close_frame(1001, "node going away")).await;
                }
                let _ = cw.shutdown().await;
                return TunnelEnd::Closed;
            }
            touch();
            between.store(frames.at_boundary(), Ordering::Relaxed);
            for a in io.bytes_out {
                a.fetch_add(sent as u64, Ordering::Relaxed);
            }
            if let Some((_, why)) = closing {
                if frames.at_boundary() {
                    let _ = cw.write_all(&close_frame(why.0, why.1)).await;
                    let _ = cw.shutdown().await;
                    return stop_reason(kill, shutdown, &drawn);
                }
            }
        }
    };

    // Every wake-up of the tunnel polls each branch: the stop tokens are polled once (to register
    // the task's waker, which stays valid) and then only read, and the idle timer is one Sleep,
    // reset when data moved (polling the tokens' futures on every message cost ~15 % of a relay).
    // The tunnel waits on one token for the node: the node's current rebalancing wave (a child of
    // its kill token, so a kill wakes it too), or the kill token itself without draws. A wave that
    // did not draw this tunnel is replaced by the node's next one.
    let watcher = async {
        let idle_ms = idle.as_millis() as u64;
        let mut wave = draw.map_or_else(|| kill.clone(), |(s, _)| s.wave());
        let mut on_wave = std::pin::pin!(wave.clone().cancelled_owned());
        let mut on_shutdown = std::pin::pin!(shutdown.cancelled());
        let mut sleep = std::pin::pin!(tokio::time::sleep(idle));
        let mut registered = false;
        let was_idle = std::future::poll_fn(|cx| {
            if !registered {
                registered = true;
                let _ = on_wave.as_mut().poll(cx);
                let _ = on_shutdown.as_mut().poll(cx);
                // A kill before the wave was taken (a kill after it cancels the wave too).
                if kill.is_cancelled() {
                    return Poll::Ready(false);
                }
            }
            if shutdown.is_cancelled() {
                return Poll::Ready(false);
            }
            // Bounded: each turn takes the node's newest wave, and a draw replaces it at most once.
            for _ in 0..8 {
                if !wave.is_cancelled() {
                    break;
                }
                if kill.is_cancelled() {
                    return Poll::Ready(false);
                }
                let Some((shed, opened_ms)) = draw else { return Poll::Ready(false) };
                if shed.drawn(opened_ms) {
                    drawn.store(true, Ordering::Relaxed);
                    return Poll::Ready(false);
                }
                wave = shed.wave();
                on_wave.set(wave.clone().cancelled_owned());
                let _ = on_wave.as_mut().poll(cx);
            }
            while sleep.as_mut().poll(cx).is_ready() {
                let since = (start.elapsed().as_millis() as u64).saturating_sub(last.load(Ordering::Relaxed));
                if since >= idle_ms {
                    return Poll::Ready(true);
                }
                sleep.as_mut().reset(tokio::time::Instant::now() + Duration::from_millis(idle_ms - since));
            }
            Poll::Pending
        })
        .await;
        stop.store(true, Ordering::Relaxed);
        was_idle
    };

    tokio::pin!(client_to_node, node_to_client, watcher);
    let mut client_done = false;
    let mut idle_fired = false;
    loop {
        tokio::select! {
            biased;
            end = &mut node_to_client => {
                return if idle_fired { TunnelEnd::Idle } else { end };
            }
            r = &mut client_to_node, if !client_done => {
                client_done = true;
                if r.is_err() {
                    return TunnelEnd::Error;
                }
            }
            was_idle = &mut watcher, if !stop.load(Ordering::Relaxed) => {
                idle_fired = was_idle;
            }
        }
    }
}

fn stop_reason(
    kill: &CancellationToken,
    shutdown: &CancellationToken,
    drawn: &std::sync::atomic::AtomicBool,
) -> TunnelEnd {
    if shutdown.is_cancelled() {
        TunnelEnd::Shutdown
    } else if kill.is_cancelled() {
        TunnelEnd::NodeGone
    } else if drawn.load(Ordering::Relaxed) {
        TunnelEnd::Rebalanced
    } else {
        TunnelEnd::Idle
    }
}

/// An unmasked (server to client) WebSocket close frame.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut f = Vec::with_capacity(4 + reason.len());
    f.push(0x88);
    f.push((2 + reason.len()) as u8);
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(reason);
    f
}

/// Follows WebSocket frame boundaries in one direction of a byte stream, so that the gateway can
/// inject a close frame without cutting a frame in two.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// The frame header read so far (at most 14 bytes: 2, extended length, mask).
    hdr: [u8; 14],
    /// Bytes of `hdr` read so far (0 at a frame boundary).
    have: usize,
    /// Payload bytes of the current frame not consumed yet.
    remaining: u64,
    /// Inside a frame's payload (its header complete).
    in_payload: bool,
    /// The current frame's opcode (0x8: close, whose code is read).
    opcode: u8,
    /// The last complete frame was a close frame.
    pub saw_close: bool,
    /// The current frame's masking key (client frames are masked), to read a close code.
    mask: Option<[u8; 4]>,
    /// Payload bytes of the current frame consumed so far (only counted for close frames, whose
    /// first two are the code).
    offset: u64,
    /// The first two payload bytes of a close frame: its code.
    code: [u8; 2],
    /// A close frame completed and its code was not taken yet ([`FrameTracker::take_close`]);
    /// 1005 ("no status") for one without a code.
    close: Option<u16>,
}

impl FrameTracker {
    pub fn at_boundary(&self) -> bool {
        !self.in_payload && self.have == 0
    }

    /// Consume `data`; with `stop_at_boundary`, stop right after the first frame that completes
    /// (or at once if already at a boundary). Returns how many bytes were consumed.
    pub fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        if stop_at_boundary && self.at_boundary() {
            return 0;
        }
        while i < data.len() {
            if self.in_payload {
                let take = (data.len() - i).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                if self.opcode == 0x8 {
                    // The first two payload bytes of a close frame are its code.
                    let have = usize::try_from(self.offset).unwrap_or(usize::MAX);
                    for (j, b) in data[i..i + take].iter().take(2usize.saturating_sub(have)).enumerate() {
                        self.code[have + j] = b ^ self.mask.map_or(0, |m| m[(have + j) % 4]);
                    }
                    self.offset += take as u64;
                }
                i += take;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.frame_done();
                    if stop_at_boundary {
                        return i;
                    }
                }
                continue;
            }
            self.hdr[self.have] = data[i];
            self.have += 1;
            i += 1;
            if self.have < 2 {
                continue;
            }
            let len7 = self.hdr[1] & 0x7f;
            let ext = match len7 {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
            if self.have < 2 + ext + mask {
                continue;
            }
            let len = match ext {
                2 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
                8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.hdr[2..10]);
                    u64::from_be_bytes(b)
                }
                _ => u64::from(len7),
            };
            self.opcode = self.hdr[0] & 0x0f;
            self.mask = (mask == 4).then(|| {
                let k = 2 + ext;
                [self.hdr[k], self.hdr[k + 1], self.hdr[k + 2], self.hdr[k + 3]]
            });
            self.offset = 0;
            self.have = 0;
            if len == 0 {
                self.frame_done();
                if stop_at_boundary {
                    return i;
                }
            } else {
                self.in_payload = true;
                self.remaining = len;
            }
        }
        i
    }

    fn frame_done(&mut self) {
        self.in_payload = false;
        self.saw_close = self.opcode == 0x8;
        if self.saw_close && self.close.is_none() {
            self.close = Some(if self.offset >= 2 { u16::from_be_bytes(self.code) } else { 1005 });
        }
    }

    /// The code of a close frame completed since the last call (1005 when it had none).
    pub fn take_close(&mut self) -> Option<u16> {
        self.close.take()
    }
}

#[cfg(test)]
mod tests;
