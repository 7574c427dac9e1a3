//! Data plane (and one writer thread): the access log, one line per HTTP request and one per
//! WebSocket session, in JSON (field names are a contract) or haproxy-like text.
//!
//! Cheap on the request path: a line is formatted into its worker's own buffer (a thread-local:
//! no lock, no syscall); a full buffer (or, once a second, any buffer) is handed whole to the
//! writer thread through a bounded channel, one hand-over per [`BATCH`] bytes. The writer owns
//! the file: it appends, reopens it on SIGUSR1 (logrotate's `postrotate`) and when `[access_log]
//! path` changes, and never makes a worker wait: a batch that finds the channel full is dropped
//! and counted, a write that fails is counted and warned about once.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method, Uri};
use tokio_util::sync::CancellationToken;

use crate::control::config::{Config, LogFormat};
use crate::core::backend::Backend;
use crate::core::counters::{AccessLogCounters, FrontendCounters};
use crate::core::Lifecycle;
use crate::util::push_decimal as num;

/// A worker's buffer is handed to the writer once it holds this much.
pub const BATCH: usize = 64 * 1024;
/// Batches waiting for the writer at most (4 MiB): past that, lines are dropped, not queued.
const QUEUE: usize = 64;
/// Written buffers kept for the workers to fill again (a fresh 68 KB allocation per batch cost
/// more than formatting its lines).
const SPARE: usize = 16;
/// A worker's buffer is handed over at least this often, so lines show within about a second.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What the writer thread is told.
enum Msg {
    /// Append these lines to `target` ("stdout" or a file path).
    Lines {
        /// "stdout" or the file's path.
        target: Arc<str>,
        /// Whole lines, newline-terminated.
        bytes: Vec<u8>,
    },
    /// Reopen the file (SIGUSR1).
    Reopen,
    /// Write out what came before, then answer.
    Sync(std::sync::mpsc::SyncSender<()>),
}

/// The access log of one gateway: the writer thread (started with the first batch) and what the
/// workers share to reach it.
pub struct AccessLog {
    /// To the writer thread; None until the first batch starts it.
    tx: Mutex<Option<SyncSender<Msg>>>,
    /// Buffers the writer wrote out, emptied, for the workers' next batches.
    spare: Arc<crossbeam_queue::ArrayQueue<Vec<u8>>>,
    /// The frontend's counters (the log's own are `access_log`).
    frontend: Arc<FrontendCounters>,
    /// Flushers run on its background tracker (and end with the last call).
    life: Lifecycle,
    /// Cancelled once the gateway's connections are done: every worker's flusher hands over its
    /// last lines and ends.
    last_call: CancellationToken,
    /// Flushers running (one per worker that wrote a line).
    flushers: AtomicUsize,
    /// Told when a flusher ends.
    flusher_done: tokio::sync::Notify,
}

/// One worker's lines not yet handed over.
struct Local {
    /// Lines formatted and not handed over yet.
    buf: String,
    /// Lines in `buf` (counted as dropped if the batch is).
    lines: u64,
    /// Where `buf`'s lines go (a path change hands over what was for the old one first).
    target: Option<Arc<str>>,
    /// This thread runs a flusher.
    flusher: bool,
    /// Lines are handed over one by one: a thread of a multi-thread runtime (tests, the demo)
    /// cannot be sure a flusher task runs on it. Workers are current-thread runtimes: buffered.
    direct: Option<bool>,
    /// Wall-clock time of lines, without a clock read per line.
    clock: Clock,
}

thread_local! {
    static LOCAL: RefCell<Local> = const { RefCell::new(Local {
        buf: String::new(),
        lines: 0,
        target: None,
        flusher: false,
        direct: None,
        clock: Clock { anchor: None, second: u64::MAX, text: String::new() },
    }) };
}

/// Who ended a request, and why: haproxy's two-letter termination state. First letter: `C` the
/// client, `S` the node, `P` the gateway (`c`, `s`: their timeouts); `-` nobody (it ended
/// normally). Second: `R` while the request came in, `C` connecting to a node, `H` waiting for
/// the node's head, `D` during the body; `-` normally.
pub type Termination = &'static str;

/// One HTTP request, filled in on its way and written when its response ends.
pub struct HttpRecord {
    /// Format, mask and destination as they were when the request came.
    pub config: Arc<Config>,
    /// Where the line goes when the response ends.
    pub log: Arc<AccessLog>,
    /// Durations are measured from here; the line's `time` too (when the request came).
    pub start: Instant,
    /// The PROXY protocol's address when there is one.
    pub client: SocketAddr,
    /// `client` formatted once for its connection ([`label`]; None: formatted here).
    pub client_label: Option<Arc<str>>,
    /// The client's method.
    pub method: Method,
    /// The target as the client sent it (the node may have got it without its prefix).
    pub target: Target,
    /// The status sent to the client (set with the response).
    pub status: u16,
    /// The node that answered; None when the gateway answered itself.
    pub node: Option<Arc<Backend>>,
    /// Getting a connection to the node (0 for a pooled one), of the attempt that answered.
    pub connect: Option<Duration>,
    /// From sending the request to the node's response head.
    pub wait: Option<Duration>,
    /// Attempts beyond the first.
    pub retries: u32,
    /// Who ended it and why.
    pub termination: Termination,
    /// Kuzzle's `X-Kuzzle-Request-Id`, when the node sent one.
    pub request_id: Option<HeaderValue>,
    /// Body bytes from the client: known (small bodies read whole), or counted as they stream.
    pub bytes_in: BytesIn,
}

/// A request's target as its line shows it.
#[derive(Debug)]
pub enum Target {
    /// As hyper's path parsed it.
    Uri(Uri),
    /// The fast lane's origin-form target, as sent: `lane::wire` lets no byte through that JSON
    /// would escape, so it is copied as it is (parsing it into a `Uri` cost a tenth of a line).
    Plain(String),
}

/// `addr` as lines show it (`ip:port`), made once per connection.
pub fn label(addr: SocketAddr) -> Arc<str> {
    let mut s = String::with_capacity(24);
    self::addr(&mut s, addr);
    Arc::from(s)
}

impl HttpRecord {
    /// A request's record as it comes in (`start`: now).
    pub fn new(
        config: Arc<Config>,
        log: Arc<AccessLog>,
        client: (SocketAddr, Option<Arc<str>>),
        method: Method,
        target: Target,
    ) -> HttpRecord {
        HttpRecord {
            config,
            log,
            start: Instant::now(),
            client: client.0,
            client_label: client.1,
            method,
            target,
            status: 0,
            node: None,
            connect: None,
            wait: None,
            retries: 0,
            termination: "--",
            request_id: None,
            bytes_in: BytesIn::None,
        }
    }

    /// The record of an upgrade the node accepted: the session gets its own line when it ends,
    /// in place of the request's.
    pub fn into_websocket(self, node: Arc<Backend>) -> WsRecord {
        WsRecord {
            config: self.config,
            log: self.log,
            start: self.start,
            client: self.client,
            uri: self.target.into_uri(),
            node,
        }
    }
}

impl Target {
    /// As a `Uri` (a WebSocket session's line keeps one).
    pub fn into_uri(self) -> Uri {
        match self {
            Target::Uri(u) => u,
            Target::Plain(s) => Uri::try_from(s).unwrap_or_default(),
        }
    }
}

/// Body bytes of a request.
#[derive(Debug, Default)]
pub enum BytesIn {
    #[default]
    None,
    Known(u64),
    /// Counted by the streamed body.
    Counted(Arc<AtomicU64>),
}

impl BytesIn {
    fn get(&self) -> u64 {
        match self {
            BytesIn::None => 0,
            BytesIn::Known(n) => *n,
            BytesIn::Counted(c) => c.load(Ordering::Relaxed),
        }
    }
}

/// One WebSocket session, written when it ends.
pub struct WsRecord {
    /// Format, mask and destination as they were when the upgrade came.
    pub config: Arc<Config>,
    /// Where the line goes when the session ends.
    pub log: Arc<AccessLog>,
    /// The session's duration is measured from here (the upgrade request); the line's `time` too.
    pub start: Instant,
    /// The client (the PROXY protocol's address when there is one).
    pub client: SocketAddr,
    /// The target of the upgrade request, as the client sent it.
    pub uri: Uri,
    /// The node at the other end of the tunnel.
    pub node: Arc<Backend>,
}

impl WsRecord {
    /// The line of a session accepted by its node that never opened (the client or the upgrade
    /// failed before the tunnel began).
    pub fn never_opened(&self) {
        let end = WsEnd { bytes_in: 0, bytes_out: 0, close_code: None, closed_by: "error" };
        self.log.websocket(self, end);
    }
}

/// How a WebSocket session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsEnd {
    /// Tunnel bytes from the client.
    pub bytes_in: u64,
    /// Tunnel bytes to the client.
    pub bytes_out: u64,
    /// The code of the first close frame (1005 when it had none), the gateway's 1001, or None
    /// when the connection closed without one.
    pub close_code: Option<u16>,
    /// `client`, `node`, `gateway` (idle timeout, node DOWN or in maintenance, shutdown), or
    /// `error` (the upgrade itself failed).
    pub closed_by: &'static str,
}

impl AccessLog {
    pub fn new(life: Lifecycle, frontend: Arc<FrontendCounters>) -> AccessLog {
        AccessLog {
            tx: Mutex::new(None),
            spare: Arc::new(crossbeam_queue::ArrayQueue::new(SPARE)),
            frontend,
            life,
            last_call: CancellationToken::new(),
            flushers: AtomicUsize::new(0),
            flusher_done: tokio::sync::Notify::new(),
        }
    }

    /// Write one HTTP line (`bytes_out`: body bytes sent to the client). Formatted by hand (no
    /// `fmt` machinery: it cost most of a line's instructions).
    pub fn http(self: &Arc<Self>, r: &HttpRecord, bytes_out: u64) {
        let Some(a) = r.config.access_log.as_ref() else { return };
        let dur = r.start.elapsed();
        self.append(&a.path, |line, clock| {
            let node = r.node.as_ref().map(|n| n.name.as_str());
            let rid = r.request_id.as_ref().and_then(|v| v.to_str().ok());
            match a.format {
                LogFormat::Json => {
                    line.push_str("{\"type\":\"http\",\"time\":");
                    time_json(line, clock, r.start);
                    line.push_str(",\"client\":\"");
                    client(line, r);
                    // A method is a token: nothing in it to escape.
                    line.push_str("\",\"method\":\"");
                    line.push_str(r.method.as_str());
                    line.push_str("\",\"path\":\"");
                    target(line, &r.target, &a.mask, true);
                    line.push_str("\",\"status\":");
                    num(line, u64::from(r.status));
                    line.push_str(",\"node\":");
                    json_opt(line, node);
                    line.push_str(",\"duration_ms\":");
                    ms(line, Some(dur));
                    line.push_str(",\"bytes_in\":");
                    num(line, r.bytes_in.get());
                    line.push_str(",\"bytes_out\":");
                    num(line, bytes_out);
                    line.push_str(",\"connect_ms\":");
                    ms(line, r.connect);
                    line.push_str(",\"wait_ms\":");
                    ms(line, r.wait);
                    line.push_str(",\"retries\":");
                    num(line, u64::from(r.retries));
                    line.push_str(",\"termination\":\"");
                    line.push_str(r.termination);
                    line.push_str("\",\"request_id\":");
                    json_opt(line, rid);
                    line.push_str("}\n");
                }
                LogFormat::Text => {
                    // client [time] node connect/wait/total status in/out retries termination id "METHOD path"
                    client(line, r);
                    line.push_str(" [");
                    time_text(line, clock, r.start);
                    line.push_str("] ");
                    line.push_str(node.unwrap_or("-"));
                    line.push(' ');
                    ms_text(line, r.connect);
                    line.push('/');
                    ms_text(line, r.wait);
                    line.push('/');
                    ms_text(line, Some(dur));
                    line.push(' ');
                    num(line, u64::from(r.status));
                    line.push(' ');
                    num(line, r.bytes_in.get());
                    line.push('/');
                    num(line, bytes_out);
                    line.push(' ');
                    num(line, u64::from(r.retries));
                    line.push(' ');
                    line.push_str(r.termination);
                    line.push(' ');
                    line.push_str(rid.unwrap_or("-"));
                    line.push_str(" \"");
                    line.push_str(r.method.as_str());
                    line.push(' ');
                    target(line, &r.target, &a.mask, false);
                    line.push_str("\"\n");
                }
            }
        });
    }

    /// Write one WebSocket line.
    pub fn websocket(self: &Arc<Self>, r: &WsRecord, end: WsEnd) {
        let Some(a) = r.config.access_log.as_ref() else { return };
        let dur = r.start.elapsed();
        self.append(&a.path, |line, clock| match a.format {
            LogFormat::Json => {
                line.push_str("{\"type\":\"websocket\",\"time\":");
                time_json(line, clock, r.start);
                line.push_str(",\"client\":\"");
                addr(line, r.client);
                line.push_str("\",\"path\":\"");
                path(line, &r.uri, &a.mask, true);
                line.push_str("\",\"node\":");
                json_str(line, &r.node.name);
                line.push_str(",\"duration_ms\":");
                ms(line, Some(dur));
                let _ = write!(line, ",\"bytes_in\":{},\"bytes_out\":{},\"close_code\":", end.bytes_in, end.bytes_out);
                match end.close_code {
                    Some(c) => {
                        let _ = write!(line, "{c}");
                    }
                    None => line.push_str("null"),
                }
                let _ = writeln!(line, ",\"closed_by\":\"{}\"}}", end.closed_by);
            }
            LogFormat::Text => {
                addr(line, r.client);
                line.push_str(" [");
                time_text(line, clock, r.start);
                let _ = write!(line, "] {} websocket ", r.node.name);
                ms_text(line, Some(dur));
                let code = end.close_code.map_or("-".to_string(), |c| c.to_string());
                let _ = write!(line, " {code} {} {}/{} \"GET ", end.closed_by, end.bytes_in, end.bytes_out);
                path(line, &r.uri, &a.mask, false);
                line.push_str("\"\n");
            }
        });
    }

    /// Format a line into this worker's buffer; hand the buffer over when it is full.
    fn append(self: &Arc<Self>, target: &str, f: impl FnOnce(&mut String, &mut Clock)) {
        LOCAL.with_borrow_mut(|l| {
            if l.target.as_deref() != Some(target) {
                self.hand_over(l);
                l.target = Some(Arc::from(target));
            }
            if l.buf.capacity() == 0 {
                l.buf.reserve(BATCH + 4096);
            }
            f(&mut l.buf, &mut l.clock);
            l.lines += 1;
            let direct = *l.direct.get_or_insert_with(|| {
                tokio::runtime::Handle::try_current()
                    .map_or(true, |h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
            });
            if direct || l.buf.len() >= BATCH {
                self.hand_over(l);
            } else if !l.flusher {
                l.flusher = self.spawn_flusher();
            }
        });
    }

    /// Give this worker's buffer to the writer (never waiting: a full queue drops it).
    fn hand_over(&self, l: &mut Local) {
        if l.buf.is_empty() {
            return;
        }
        let Some(target) = l.target.clone() else { return };
        let fresh = match self.spare.pop() {
            // Emptied by the writer: the check of its (no) bytes is free, its capacity kept.
            Some(v) => String::from_utf8(v).unwrap_or_default(),
            None => String::with_capacity(BATCH + 4096),
        };
        let bytes = std::mem::replace(&mut l.buf, fresh).into_bytes();
        let lines = std::mem::take(&mut l.lines);
        // Counted per batch, not per line: no shared cache line written per request.
        self.frontend.access_log.lines.fetch_add(lines, Ordering::Relaxed);
        if !self.send(Msg::Lines { target, bytes }) {
            self.frontend.access_log.dropped.fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// Hand this worker's buffer over now (the flusher, and tests).
    pub fn flush_local(&self) {
        LOCAL.with_borrow_mut(|l| self.hand_over(l));
    }

    /// Send to the writer, starting it first if need be; false if the message was dropped.
    fn send(&self, m: Msg) -> bool {
        let mut tx = crate::util::lock(&self.tx);
        if tx.is_none() {
            match self.start_writer() {
                Ok(t) => *tx = Some(t),
                Err(e) => {
                    self.frontend.access_log.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "access log: cannot start its writer thread");
                    return false;
                }
            }
        }
        match tx.as_ref().map(|t| t.try_send(m)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_))) => false,
            Some(Err(TrySendError::Disconnected(_))) | None => {
                *tx = None;
                false
            }
        }
    }

    fn start_writer(&self) -> std::io::Result<SyncSender<Msg>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE);
        let (frontend, spare) = (self.frontend.clone(), self.spare.clone());
        std::thread::Builder::new()
            .name("kg-access-log".into())
            .spawn(move || writer(rx, &frontend.access_log, &spare))?;
        Ok(tx)
    }

    /// This worker's flusher: hands its buffer over every [`FLUSH_EVERY`] until the last call.
    /// Spawned from the worker onto its own current-thread runtime: it runs on this thread.
    fn spawn_flusher(self: &Arc<Self>) -> bool {
        self.flushers.fetch_add(1, Ordering::AcqRel);
        let me = self.clone();
        self.life.background.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + FLUSH_EVERY, FLUSH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.flush_local(),
                    _ = me.last_call.cancelled() => break,
                }
            }
            me.flush_local();
            LOCAL.with_borrow_mut(|l| l.flusher = false);
            me.flushers.fetch_sub(1, Ordering::AcqRel);
            me.flusher_done.notify_waiters();
        });
        true
    }

    /// SIGUSR1: the file is reopened before the next write (logrotate moved it away).
    pub fn reopen(&self) {
        if crate::util::lock(&self.tx).is_some() && !self.send(Msg::Reopen) {
            tracing::warn!("access log: reopen request dropped (writer busy); the next SIGUSR1 will do");
        }
    }

    /// The last lines: every worker hands its buffer over, and the writer writes everything out
    /// (each wait bounded).
    pub async fn finish(&self) {
        self.last_call.cancel();
        let waited = async {
            while self.flushers.load(Ordering::Acquire) > 0 {
                let n = self.flusher_done.notified();
                if self.flushers.load(Ordering::Acquire) == 0 {
                    break;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), waited).await;
        self.flush_local();
        self.sync(Duration::from_secs(3)).await;
        // The writer thread ends once it has no sender (a line after this starts a new one).
        *crate::util::lock(&self.tx) = None;
    }

    /// Wait (at most `limit`) until the writer wrote everything handed over so far.
    pub async fn sync(&self, limit: Duration) {
        if crate::util::lock(&self.tx).is_none() {
            return;
        }
        let (ack, done) = std::sync::mpsc::sync_channel(1);
        if !self.send(Msg::Sync(ack)) {
            return;
        }
        let _ = tokio::time::timeout(limit, tokio::task::spawn_blocking(move || done.recv())).await;
    }
}

/// The writer thread: owns the open file; ends when its sender is gone (at [`AccessLog::finish`],
/// or with the gateway).
fn writer(rx: Receiver<Msg>, counters: &AccessLogCounters, spare: &crossbeam_queue::ArrayQueue<Vec<u8>>) {
    let mut out = Output { target: None, file: None, failing: false };
    while let Ok(m) = rx.recv() {
        match m {
            Msg::Lines { target, mut bytes } => {
                out.write(&target, &bytes, counters);
                if bytes.capacity() >= BATCH {
                    bytes.clear();
                    let _ = spare.push(bytes);
                }
            }
            Msg::Reopen => {
                out.file = None;
                tracing::info!(path = out.target.as_deref().unwrap_or("-"), "access log reopened (SIGUSR1)");
            }
            Msg::Sync(ack) => {
                if let Some(f) = out.file.as_mut() {
                    let _ = f.flush();
                }
                let _ = std::io::stdout().flush();
                let _ = ack.send(());
            }
        }
    }
}

/// The writer's destination.
struct Output {
    /// The path `file` was opened from.
    target: Option<Arc<str>>,
    /// Open file; None for stdout, or when it must be (re)opened.
    file: Option<std::fs::File>,
    /// The last open or write failed: warned once, until one succeeds.
    failing: bool,
}

impl Output {
    fn write(&mut self, target: &Arc<str>, bytes: &[u8], counters: &AccessLogCounters) {
        if self.target.as_deref() != Some(target) {
            self.target = Some(target.clone());
            self.file = None;
        }
        let r = if &**target == "stdout" {
            std::io::stdout().lock().write_all(bytes)
        } else {
            if self.file.is_none() {
                match std::fs::OpenOptions::new().create(true).append(true).open(&**target) {
                    Ok(f) => self.file = Some(f),
                    Err(e) => return self.failed(counters, &format!("cannot open {target}: {e}")),
                }
            }
            match self.file.as_mut() {
                Some(f) => f.write_all(bytes),
                None => Ok(()),
            }
        };
        match r {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(path = %target, "access log: writing again");
                }
            }
            Err(e) => {
                // Reopen next time: the file may have been removed, the disk remounted.
                self.file = None;
                self.failed(counters, &format!("cannot write {target}: {e}"));
            }
        }
    }

    fn failed(&mut self, counters: &AccessLogCounters, what: &str) {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        if !self.failing {
            self.failing = true;
            tracing::warn!("access log: {what}; lines are dropped until it works again (traffic goes on)");
        }
    }
}

/// A worker's wall clock for its lines: an anchor (a monotonic instant and the wall-clock time
/// then) read once a second, and the text of the current second.
struct Clock {
    /// (instant, wall-clock time at that instant since the epoch); None before the first line.
    anchor: Option<(Instant, Duration)>,
    /// The second `text` is (epoch seconds).
    second: u64,
    /// `"2026-12-02T10:11:12"`.
    text: String,
}

impl Clock {
    /// The wall-clock time of the monotonic instant `at`, since the epoch (read from the anchor,
    /// renewed when it is a second old: one subtraction a line).
    fn since_epoch(&mut self, at: Instant) -> Duration {
        if let Some(w) = self.anchor.and_then(|a| Self::read(a, at)) {
            return w;
        }
        let a = (Instant::now(), SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        self.anchor = Some(a);
        Self::read(a, at).unwrap_or(a.1)
    }

    /// `at` read from the anchor `(i, w)`, unless it is a second or more after it.
    fn read((i, w): (Instant, Duration), at: Instant) -> Option<Duration> {
        match at.checked_duration_since(i) {
            Some(d) if d < Duration::from_secs(1) => Some(w + d),
            Some(_) => None,
            // A request that began before the anchor was read.
            None => Some(w.saturating_sub(i.saturating_duration_since(at))),
        }
    }
}

/// `"2026-12-02T10:11:12.345Z"`: the second is formatted once per second per worker.
fn time_json(line: &mut String, clock: &mut Clock, at: Instant) {
    line.push('"');
    time_text(line, clock, at);
    line.push('"');
}

fn time_text(line: &mut String, clock: &mut Clock, at: Instant) {
    let d = clock.since_epoch(at);
    let secs = d.as_secs();
    if clock.second != secs {
        let t = UNIX_EPOCH + Duration::from_secs(secs);
        // "2026-12-02T10:11:12Z" without its Z.
        let s = humantime::format_rfc3339_seconds(t).to_string();
        clock.text = s.trim_end_matches('Z').to_string();
        clock.second = secs;
    }
    line.push_str(&clock.text);
    line.push('.');
    pad3(line, d.subsec_millis());
    line.push('Z');
}

/// The request's client, formatted once per connection when it could be.
fn client(line: &mut String, r: &HttpRecord) {
    match r.client_label.as_deref() {
        Some(l) => line.push_str(l),
        None => addr(line, r.client),
    }
}

/// 0..=999 as three digits.
fn pad3(line: &mut String, n: u32) {
    for d in [n / 100 % 10, n / 10 % 10, n % 10] {
        line.push(char::from(b'0' + d as u8));
    }
}

/// `ip:port` (`[ip]:port` for IPv6); IPv4, the common case, without `fmt`.
fn addr(line: &mut String, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            crate::util::push_ipv4(line, *v4.ip());
            line.push(':');
            num(line, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(line, "{a}");
        }
    }
}

/// Milliseconds with microseconds (`0.213`), or `null`.
fn ms(line: &mut String, d: Option<Duration>) {
    match d {
        Some(d) => {
            // In u64 (`as_micros` is a u128): a duration over 584,000 years saturates.
            let us = d.as_secs().saturating_mul(1_000_000).saturating_add(u64::from(d.subsec_micros()));
            num(line, us / 1000);
            line.push('.');
            pad3(line, (us % 1000) as u32);
        }
        None => line.push_str("null"),
    }
}

fn ms_text(line: &mut String, d: Option<Duration>) {
    match d {
        Some(_) => ms(line, d),
        None => line.push('-'),
    }
}

fn json_opt(line: &mut String, v: Option<&str>) {
    match v {
        Some(s) => json_str(line, s),
        None => line.push_str("null"),
    }
}

fn json_str(line: &mut String, s: &str) {
    line.push('"');
    json_escape(line, s);
    line.push('"');
}

/// JSON string escaping (quotes, backslashes, control characters).
fn json_escape(line: &mut String, s: &str) {
    // Nearly always nothing to escape: one scan, one copy. The scan has no early exit, so the
    // compiler does it 16 bytes at a time (`any` went byte by byte).
    if !s.bytes().fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\')) {
        line.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
}

/// A request's target with the values of masked query parameters as `***`.
fn target(line: &mut String, t: &Target, mask: &[String], json: bool) {
    match t {
        Target::Uri(uri) => path(line, uri, mask, json),
        Target::Plain(s) => {
            let (p, q) = match s.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (s.as_str(), None),
            };
            // Nothing in it to escape (`Target::Plain`).
            path_and_query(line, p, q, mask, false);
        }
    }
}

/// The request target with the values of masked query parameters as `***`.
fn path(line: &mut String, uri: &Uri, mask: &[String], json: bool) {
    path_and_query(line, uri.path(), uri.query(), mask, json);
}

fn path_and_query(line: &mut String, path: &str, query: Option<&str>, mask: &[String], json: bool) {
    let push = |line: &mut String, s: &str| if json { json_escape(line, s) } else { line.push_str(s) };
    push(line, path);
    let Some(q) = query else { return };
    line.push('?');
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            line.push('&');
        }
        match pair.split_once('=') {
            Some((k, _)) if mask.iter().any(|m| m == k) => {
                push(line, k);
                line.push_str("=***");
            }
            _ => push(line, pair),
        }
    }
}

/// The first close frame's sender and code, set once by whichever side closes first (both
/// directions of a tunnel run in one task; atomics keep its future `Send`).
#[derive(Debug, Default)]
pub struct FirstClose {
    /// 0 nobody yet, then 1 client, 2 node, 3 gateway, 4 error.
    who: AtomicU32,
    /// The close code + 1 (0: none).
    code: AtomicU32,
    /// A close frame was seen (not only an end of stream).
    framed: AtomicBool,
}

impl FirstClose {
    pub const CLIENT: u32 = 1;
    pub const NODE: u32 = 2;
    pub const GATEWAY: u32 = 3;
    pub const ERROR: u32 = 4;

    /// `who` closed (a close frame with `code`, or the end of its stream when None); only the
    /// first call counts.
    pub fn set(&self, who: u32, code: Option<u16>) {
        if self.who.compare_exchange(0, who, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            if let Some(c) = code {
                self.code.store(u32::from(c) + 1, Ordering::Relaxed);
                self.framed.store(true, Ordering::Relaxed);
            }
        } else if code.is_some() && !self.framed.load(Ordering::Relaxed) && self.who.load(Ordering::Relaxed) == who {
            // Its end of stream came first, then its close frame arrives: keep the code.
            self.code.store(u32::from(code.unwrap_or(0)) + 1, Ordering::Relaxed);
            self.framed.store(true, Ordering::Relaxed);
        }
    }

    /// (closed_by, close code).
    pub fn get(&self) -> (&'static str, Option<u16>) {
        let who = match self.who.load(Ordering::Acquire) {
            Self::CLIENT => "client",
            Self::NODE => "node",
            Self::GATEWAY => "gateway",
            _ => "error",
        };
        let code = self.code.load(Ordering::Relaxed).checked_sub(1).and_then(|c| u16::try_from(c).ok());
        (who, code)
    }
}

#[cfg(test)]
mod tests;
