//! Control plane: watch the configuration file and reload it when it changes on disk (debounced;
//! the directory is watched so that editors and config-management tools that replace the file by
//! rename are seen too).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::time::Duration;

use notify_debouncer_full::notify::event::{AccessKind, AccessMode, EventKind};
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};

use crate::control::config::Config;
use crate::control::reload::ReloadHandle;
use crate::core::Lifecycle;

/// Quiet time after the last change before reloading: an editor's save is several events.
pub const DEBOUNCE: Duration = Duration::from_millis(250);

/// Errors starting the watcher (the gateway runs on without it; SIGHUP and `POST /reload` remain).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir}: {source}")]
    Watch {
        /// The directory of the configuration file.
        dir: String,
        /// What the file watcher said.
        source: notify_debouncer_full::notify::Error,
    },
    #[error("configuration {0} is not a file on disk")]
    NotAFile(String),
}

/// Start watching the file the configuration came from, if `[gateway] watch` (default true).
/// The watcher thread and its task stop with `life.shutdown`; a change sends a reload request.
pub fn start(cfg: &Config, reload: ReloadHandle, life: &Lifecycle) {
    if !cfg.gateway.watch {
        tracing::info!("configuration file watch disabled ([gateway] watch = false)");
        return;
    }
    match spawn(reload, life, Path::new(&cfg.source)) {
        Ok(()) => {}
        // Configurations built in memory (tests, the demo) have no file to watch.
        Err(e @ WatchError::NotAFile(_)) => tracing::debug!(error = %e, "not watching"),
        Err(e) => tracing::warn!(error = %e, "not watching the configuration file; reload with SIGHUP or POST /reload"),
    }
}

fn spawn(reload: ReloadHandle, life: &Lifecycle, file: &Path) -> Result<(), WatchError> {
    if !file.is_file() {
        return Err(WatchError::NotAFile(file.display().to_string()));
    }
    let abs = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let (Some(dir), Some(name)) = (abs.parent().map(Path::to_path_buf), abs.file_name().map(|n| n.to_owned())) else {
        return Err(WatchError::NotAFile(file.display().to_string()));
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let handler = move |res: DebounceEventResult| match res {
        Ok(events) => {
            let ours = events.iter().any(|e| relevant(&e.kind) && e.paths.iter().any(|p| p.file_name() == Some(&name)));
            if ours {
                let _ = tx.send(());
            }
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "configuration file watcher error");
            }
        }
    };
    let mut debouncer = new_debouncer(DEBOUNCE, None, handler)
        .map_err(|source| WatchError::Watch { dir: dir.display().to_string(), source })?;
    debouncer
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Watch { dir: dir.display().to_string(), source })?;
    tracing::info!(file = %abs.display(), "watching the configuration file");

    let stop = life.shutdown.clone();
    let mut last = fingerprint(&abs);
    life.background.spawn(async move {
        // Owned here: dropping it at the end stops the watcher thread.
        let _debouncer = debouncer;
        loop {
            tokio::select! {
                r = rx.recv() => if r.is_none() { return },
                _ = stop.cancelled() => return,
            }
            while rx.try_recv().is_ok() {}
            // The file is read off the async threads (worker 0 also serves clients).
            let (file, seen) = (abs.clone(), last);
            let Ok((is_new, now)) = tokio::task::spawn_blocking(move || {
                let mut now = seen;
                (changed(&file, &mut now), now)
            })
            .await
            else {
                return;
            };
            last = now;
            if is_new {
                // The outcome is logged and recorded by the reload task.
                let _ = reload.reload().await;
            }
        }
    });
    Ok(())
}

/// A write, a create, a rename or a removal; not reads (our own reload reads the file).
fn relevant(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Did the file's content change since the last reload it triggered?
fn changed(file: &Path, last: &mut Option<u64>) -> bool {
    let now = fingerprint(file);
    match now {
        // Mid-replace (removed, not yet renamed in): the next event brings the new file.
        None if !file.exists() => {
            tracing::info!(file = %file.display(), "configuration file gone; keeping the running configuration");
            return false;
        }
        Some(_) if now == *last => {
            tracing::debug!(file = %file.display(), "configuration file touched, content unchanged");
            return false;
        }
        _ => {}
    }
    *last = now;
    true
}

fn fingerprint(file: &Path) -> Option<u64> {
    let bytes = std::fs::read(file).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}
