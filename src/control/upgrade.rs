//! Control plane: binary upgrade without refused connections or requests the new process cannot
//! route. The running gateway hands its listening sockets and its state ([`crate::control::handover`]) to a
//! new process over a unix socket (SCM_RIGHTS), keeps accepting until the new one can route, then
//! stops, finishes its requests and keeps its WebSocket tunnels until they close or
//! `hard_stop_after`. The process lifecycle around it is in [`crate::app`].
//!
//! Exchange on the upgrade socket (the new process connects):
//! 1. old -> new: one JSON line `{"pid", "listeners": [{"kind", "addr"}...], "state"}`, the
//!    listening sockets attached in the same order (SCM_RIGHTS);
//! 2. new -> old: `READY\n` once it can route: at once with a usable state, otherwise after its
//!    own first membership read and checks (at most `[cluster] ready_timeout`); it accepts nothing
//!    before, and the old process serves meanwhile;
//! 3. old -> new: `DONE\n` after it stopped accepting and removed the socket file; the new process
//!    then accepts (connections arriving in between wait in the kernel's queue, which both share:
//!    nothing is refused) and listens on the socket itself, ready for the next upgrade.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use crate::control::config::{Config, MAX_READY_TIMEOUT};
use crate::control::listeners::{ListenerKind, Listeners, LiveListeners, StartError};
use crate::core::Lifecycle;

/// How long each step of the exchange may take before the upgrade is abandoned.
const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many sockets are passed (client, stats, TLS).
const MAX_FDS: usize = 8;

/// Errors of a binary upgrade (the old process keeps serving if the exchange fails).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("no upgrade socket: set [gateway] upgrade_socket, or a fixed [gateway] listen port")]
    NoSocket,
    #[error("cannot reach the running gateway at {path}: {source}")]
    Connect {
        /// The upgrade socket.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    #[error("upgrade exchange on {path} failed: {message}")]
    Exchange {
        /// The upgrade socket.
        path: String,
        /// What went wrong in the exchange.
        message: String,
    },
    #[error(transparent)]
    Start(#[from] StartError),
}

/// One listening socket as described in the hand-over message.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Passed {
    /// Which listener it is: client, ops or TLS.
    kind: ListenerKind,
    /// The configured address it serves (the new process matches its own configuration on it).
    addr: SocketAddr,
}

/// The old process's hand-over message.
#[derive(Debug, Serialize, Deserialize)]
struct Hello {
    /// The old process (logs).
    pid: u32,
    /// The sockets attached, in order.
    listeners: Vec<Passed>,
    /// What it knew ([`crate::control::handover::State`] as JSON; absent from older versions, and read only
    /// when its version is understood).
    #[serde(default)]
    state: Option<serde_json::Value>,
}

/// Makes the state to hand over, at the moment a new process asks for it.
pub type StateFn = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The upgrade socket of a configuration: `[gateway] upgrade_socket`, else
/// `/tmp/kuzzle-gateway-<client port>.sock` (none when the client port is 0, as in tests).
pub fn socket_path(config: &Config) -> Option<PathBuf> {
    match &config.gateway.upgrade_socket {
        Some(p) => Some(p.clone()),
        None if config.gateway.listen.port() != 0 => {
            Some(std::env::temp_dir().join(format!("kuzzle-gateway-{}.sock", config.gateway.listen.port())))
        }
        None => None,
    }
}

/// The exchange with the old process, to finish once this process can route.
pub struct Handover {
    /// The connection to the old process (READY and DONE go over it).
    stream: StdUnixStream,
    /// The upgrade socket (logs).
    path: PathBuf,
    /// The old process's state, until taken.
    state: Option<serde_json::Value>,
}

impl Handover {
    /// What the old process handed over besides the sockets (None once taken, or from an older
    /// version that sends none).
    pub fn take_state(&mut self) -> Option<serde_json::Value> {
        self.state.take()
    }

    /// Tell the old process we can route; it stops accepting and answers DONE. This process must
    /// accept only after that.
    pub async fn finish(self) -> Result<(), UpgradeError> {
        let Handover { stream, path, state: _ } = self;
        let p = path.clone();
        tokio::task::spawn_blocking(move || finish(stream, &p))
            .await
            .map_err(|e| exchange(&path, format!("task failed: {e}")))??;
        tracing::info!(socket = %path.display(), "upgrade complete: the old process no longer accepts");
        Ok(())
    }
}

/// New process: receive the running gateway's sockets and state (start on them without
/// accepting, call [`Handover::finish`] once able to route, then accept).
pub async fn take_over(config: &Config) -> Result<(Listeners, Handover), UpgradeError> {
    let path = socket_path(config).ok_or(UpgradeError::NoSocket)?;
    let p = path.clone();
    let (hello, fds, stream) = tokio::task::spawn_blocking(move || receive(&p))
        .await
        .map_err(|e| exchange(&path, format!("task failed: {e}")))??;
    tracing::info!(old_pid = hello.pid, sockets = fds.len(), "received the listening sockets");
    let state = hello.state;
    let mut inherited: Vec<(Passed, OwnedFd)> = hello.listeners.into_iter().zip(fds).collect();
    let mut take = |kind: ListenerKind, addr: SocketAddr| -> Result<std::net::TcpListener, StartError> {
        match inherited.iter().position(|(p, _)| p.kind == kind && p.addr == addr) {
            Some(i) => Ok(std::net::TcpListener::from(inherited.swap_remove(i).1)),
            None => {
                tracing::info!(listener = kind.what(), %addr, "address changed: binding anew");
                crate::control::listeners::bind_std(kind.what(), addr)
            }
        }
    };
    let listeners = Listeners {
        http: take(ListenerKind::Http, config.gateway.listen)?,
        stats: take(ListenerKind::Stats, config.stats.listen)?,
        tls: match config.tls.as_ref().map(|t| t.listen) {
            Some(a) => Some(take(ListenerKind::Tls, a)?),
            None => None,
        },
    };
    // Sockets the new configuration no longer uses close here; the old process closes its copies.
    drop(inherited);
    Ok((listeners, Handover { stream, path, state }))
}

fn exchange(path: &Path, message: String) -> UpgradeError {
    UpgradeError::Exchange { path: path.display().to_string(), message }
}

/// New side, step 1 (blocking).
fn receive(path: &Path) -> Result<(Hello, Vec<OwnedFd>, StdUnixStream), UpgradeError> {
    let stream = StdUnixStream::connect(path)
        .map_err(|source| UpgradeError::Connect { path: path.display().to_string(), source })?;
    stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(|e| exchange(path, e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(&stream, &mut [IoSliceMut::new(&mut buf)], &mut control, RecvFlags::CMSG_CLOEXEC)
        .map_err(|e| exchange(path, format!("recvmsg: {e}")))?;
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    let mut line = buf.get(..got.bytes).unwrap_or_default().to_vec();
    // The JSON line may in theory arrive in pieces; the descriptors came with the first byte.
    let mut reader = BufReader::new(&stream);
    while !line.ends_with(b"\n") {
        let mut more = Vec::new();
        let n = reader.read_until(b'\n', &mut more).map_err(|e| exchange(path, e.to_string()))?;
        if n == 0 {
            return Err(exchange(path, "the running gateway closed the connection".into()));
        }
        line.extend(more);
    }
    let hello: Hello =
        serde_json::from_slice(&line).map_err(|e| exchange(path, format!("bad hand-over message: {e}")))?;
    if hello.listeners.len() != fds.len() {
        return Err(exchange(path, format!("{} sockets announced, {} received", hello.listeners.len(), fds.len())));
    }
    Ok((hello, fds, stream))
}

/// New side, step 2 (blocking): we can route; wait until the old process stopped accepting.
fn finish(mut stream: StdUnixStream, path: &Path) -> Result<(), UpgradeError> {
    stream.write_all(b"READY\n").map_err(|e| exchange(path, e.to_string()))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| exchange(path, e.to_string()))?;
    if line.trim() != "DONE" {
        return Err(exchange(path, format!("expected DONE, got {:?}", line.trim())));
    }
    Ok(())
}

/// Old side: listen on the upgrade socket until shutdown or a completed hand-over; `state` makes
/// what is handed over with the sockets. A failure to listen is logged; the gateway serves on
/// without upgrades.
pub fn listen(cfg: &Config, listeners: Arc<LiveListeners>, life: &Lifecycle, state: StateFn) {
    let Some(path) = socket_path(cfg) else {
        tracing::debug!("no upgrade socket (client port 0 and no [gateway] upgrade_socket)");
        return;
    };
    let listener = match bind_private(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "binary upgrade unavailable: cannot listen on the upgrade socket");
            return;
        }
    };
    tracing::info!(socket = %path.display(), "upgrade socket ready (kuzzle-gateway --config FILE --upgrade)");
    let (stop, handed_over) = (life.shutdown.clone(), life.handed_over.clone());
    life.background.spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "upgrade socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.cancelled() => break,
            };
            let std_stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "upgrade connection unusable");
                    continue;
                }
            };
            let l = listeners.clone();
            let p = path.clone();
            // Taken now, on the async side: what the new process continues from.
            let st = state();
            let done = tokio::task::spawn_blocking(move || hand_over(&l, std_stream, &p, st)).await;
            match done {
                Ok(Ok(())) => {
                    handed_over.cancel();
                    return;
                }
                Ok(Err(e)) => tracing::error!(error = %e, "upgrade abandoned; still serving"),
                Err(e) => tracing::error!(error = %e, "upgrade task failed; still serving"),
            }
        }
        let _ = std::fs::remove_file(&path);
    });
}

/// Bind the unix socket owner-only (bound under a temporary name, restricted, then renamed in
/// place so no one else can connect in between); a stale file from a dead process is replaced.
fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if path.exists() {
        if StdUnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another gateway listens there"));
        }
        std::fs::remove_file(path)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let l = std::os::unix::net::UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)?;
    l.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(l)
}

/// Old side (blocking): send the sockets and the state, wait for READY (the new process may wait
/// for its first membership read and checks first: up to `MAX_READY_TIMEOUT`), stop accepting,
/// answer DONE.
fn hand_over(
    listeners: &LiveListeners,
    mut stream: StdUnixStream,
    path: &Path,
    state: serde_json::Value,
) -> Result<(), UpgradeError> {
    let err = |m: String| exchange(path, m);
    stream.set_nonblocking(false).map_err(|e| err(e.to_string()))?;
    stream.set_read_timeout(Some(STEP_TIMEOUT)).map_err(|e| err(e.to_string()))?;
    // Only the same user (or root) may take the sockets.
    let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| err(format!("peer credentials: {e}")))?;
    let me = rustix::process::getuid();
    if peer.uid != me && !peer.uid.is_root() {
        return Err(err(format!("refused: peer uid {} is not ours", peer.uid.as_raw())));
    }
    tracing::info!(new_pid = peer.pid.as_raw_nonzero().get(), "upgrade requested: handing over the listening sockets");
    listeners.with_fds(|fds: &[(ListenerKind, SocketAddr, BorrowedFd<'_>)]| {
        let hello = Hello {
            pid: std::process::id(),
            listeners: fds.iter().map(|(kind, addr, _)| Passed { kind: *kind, addr: *addr }).collect(),
            state: Some(state),
        };
        let mut line = serde_json::to_vec(&hello).map_err(|e| err(e.to_string()))?;
        line.push(b'\n');
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, _, fd)| fd.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
            return Err(err("too many sockets to pass".into()));
        }
        let sent = rustix::net::sendmsg(&stream, &[IoSlice::new(&line)], &mut control, SendFlags::empty())
            .map_err(|e| err(format!("sendmsg: {e}")))?;
        if sent < line.len() {
            stream.write_all(&line[sent..]).map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    })?;
    // Serving on meanwhile: this thread only waits.
    stream.set_read_timeout(Some(STEP_TIMEOUT + MAX_READY_TIMEOUT)).map_err(|e| err(e.to_string()))?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(|e| err(e.to_string()))?;
    if reply.trim() != "READY" {
        return Err(err(format!("the new process did not start serving (said {:?})", reply.trim())));
    }
    // The new process accepts on the same sockets: stop our accept loops, free the path for it.
    listeners.stop_all();
    let _ = std::fs::remove_file(path);
    stream.write_all(b"DONE\n").map_err(|e| err(e.to_string()))?;
    tracing::info!("handed over: this process no longer accepts connections");
    Ok(())
}
