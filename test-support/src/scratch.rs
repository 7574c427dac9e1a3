//! Scratch directories: unique per call under the system temp dir, for configs, certificates, Redis data.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

/// A new, empty, unique directory `kuzzle-test-{tag}-{pid}-{n}` under the system temp dir.
/// Its owner removes it (tests that keep it let the OS clean the temp dir).
pub fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "kuzzle-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of an earlier run with the same pid would not be empty.
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create scratch dir {}: {e}", d.display()));
    d
}
