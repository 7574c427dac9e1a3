//! Control plane: watch the directories of the certificate files and load renewed pairs, with no
//! reload and no restart (certbot and cert-manager replace files by rename or symlink swap, so
//! directories are watched, not files; a periodic re-read covers filesystems without events).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use super::Tls;
use crate::core::Lifecycle;

/// Quiet time after the last event before the files are read: a renewal writes a certificate and
/// a key, usually within this; a pair caught half-written is refused and the old one kept.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Files are read again this often even without events (NFS, some container mounts).
pub const POLL: Duration = Duration::from_secs(60);

type Watcher = Debouncer<RecommendedWatcher, RecommendedCache>;

/// Watch the certificate directories until `life.shutdown`; follows the directories that reloads
/// commit.
pub fn start(tls: Arc<Tls>, life: &Lifecycle) {
    let stop = life.shutdown.clone();
    let mut dirs = tls.watched_dirs();
    life.background.spawn(async move {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        // Owned here: replacing or dropping it stops its thread.
        let mut _watcher: Option<Watcher> = None;
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rebuild = true;
        // Nothing to watch (no [tls], or `watch = false`): no polling either.
        let mut watching = false;
        loop {
            if rebuild {
                rebuild = false;
                let now: Vec<PathBuf> = dirs.borrow_and_update().clone();
                watching = !now.is_empty();
                _watcher = if watching { watch(&now, tx.clone()) } else { None };
                // Files changed after they were loaded but before the watch was in place made no
                // event we could see: compare them now.
                if watching {
                    refresh(&tls).await;
                }
            }
            tokio::select! {
                r = rx.recv() => if r.is_none() { return },
                _ = poll.tick() => {}
                r = dirs.changed() => {
                    if r.is_err() { return }
                    // A reload committed other pairs: watch their directories.
                    rebuild = true;
                    continue;
                }
                _ = stop.cancelled() => return,
            }
            while rx.try_recv().is_ok() {}
            if watching {
                refresh(&tls).await;
            }
        }
    });
}

/// Read and parse the files off the async threads (worker 0 also serves clients); awaited, so
/// the blocking task ends before the watcher does.
async fn refresh(tls: &Arc<Tls>) {
    let tls = tls.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || tls.refresh()).await {
        tracing::warn!(error = %e, "certificate refresh failed");
    }
}

fn watch(dirs: &[PathBuf], tx: tokio::sync::mpsc::UnboundedSender<()>) -> Option<Watcher> {
    let handler = move |res: DebounceEventResult| match res {
        // Any change in these directories: a Kubernetes secret mount swaps a `..data` symlink,
        // not the files the configuration names; the fingerprints tell what really changed.
        Ok(events) => {
            if events.iter().any(|e| relevant(&e.kind)) {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "certificate watcher error");
            }
        }
    };
    let mut d = match new_debouncer(DEBOUNCE, None, handler) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the certificate files; they are read again every {POLL:?}");
            return None;
        }
    };
    for dir in dirs {
        match d.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => tracing::info!(dir = %dir.display(), "watching TLS certificates"),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "cannot watch this certificate directory; its files are read again every {POLL:?}"
            ),
        }
    }
    Some(d)
}

/// Writes, creates, renames, removals; not reads (loading the pair reads the files).
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
