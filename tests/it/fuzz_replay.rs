//! Replays the committed fuzz corpora (fuzz/corpus/<target>/) through the same checks as the fuzz targets.

use crate::fuzz_checks;

use std::path::{Path, PathBuf};

/// Run every file of `fuzz/corpus/<target>` through `check`; name the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "fuzz corpus directory {} is missing ({e}): it is committed with the fuzz targets; \
             restore it (git checkout fuzz/corpus) or regenerate it (docs/fuzzing.md)",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> =
        entries.map(|e| e.expect("readable corpus directory entry").path()).filter(|p| p.is_file()).collect();
    files.sort();
    assert!(!files.is_empty(), "fuzz corpus directory {} is empty", dir.display());
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read corpus file {}: {e}", f.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("fuzz check `{target}` fails on corpus file {} (the panic is printed above)", f.display());
        }
    }
    eprintln!("{target}: {} corpus files replayed clean", files.len());
}

#[test]
fn route_corpus() {
    replay("route", fuzz_checks::route);
}

#[test]
fn config_corpus() {
    replay("config", fuzz_checks::config);
}

#[test]
fn cluster_message_corpus() {
    replay("cluster_message", fuzz_checks::cluster_message);
}

#[test]
fn ws_frames_corpus() {
    replay("ws_frames", fuzz_checks::ws_frames);
}

#[test]
fn lane_wire_corpus() {
    replay("lane_wire", fuzz_checks::lane_wire);
}
