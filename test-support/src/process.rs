//! Child processes: finding tools and built binaries, killing children on drop, reading their ready
//! line, signals, waiting for an exit (the one way the kit does), and a process's resident memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

/// Panics, naming the tool and how to install it, unless `tool --version` runs and succeeds.
pub fn need(tool: &str) {
    let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !found.is_ok_and(|s| s.success()) {
        let package = match tool {
            "redis-server" | "redis-cli" => "redis-server redis-tools",
            "node" | "npm" => "nodejs npm",
            other => other,
        };
        panic!(
            "this test needs `{tool}` on PATH and it is missing \
             (apt-get install {package}, or run scripts/test which installs it)"
        );
    }
}

/// Path of a binary built in this workspace (`kuzzle-gateway`, `kuzzle-node-sim`).
///
/// Cargo gives an integration test `CARGO_BIN_EXE_<name>` for its own package's binaries; any
/// other test finds the binary next to its own executable (`target/<profile>/deps/..`).
pub fn bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("CARGO_BIN_EXE_{name}")) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the running test executable");
    let dir = exe.parent().map(|d| if d.ends_with("deps") { d.parent().unwrap_or(d) } else { d });
    match dir.map(|d| d.join(name)) {
        Some(p) if p.is_file() => p,
        p => panic!(
            "binary `{name}` not found (no CARGO_BIN_EXE_{name}, nothing at {p:?}): \
             build it first with `cargo build --workspace --bins`"
        ),
    }
}

/// A child process killed (and reaped) on drop, so that a failed assertion leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Read the child's stdout until a line satisfies `f`, within `timeout`; returns `f`'s value.
/// The reader thread keeps draining stdout afterwards so the child never blocks on a full pipe.
pub fn wait_line(
    child: &mut Child,
    timeout: Duration,
    what: &str,
    f: impl Fn(&str) -> Option<String> + Send + 'static,
) -> String {
    let stdout = child.stdout.take().expect("child stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Ends at the child's EOF (its exit or kill).
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(v) = f(&line) {
                    let _ = tx.send(v);
                    sent = true;
                }
            }
        }
    });
    rx.recv_timeout(timeout).unwrap_or_else(|_| panic!("{what}: not ready within {timeout:?}"))
}

/// Send `signal` to process `pid` (e.g. `Signal::TERM`, `Signal::HUP`); panics when it cannot be
/// delivered (the process is gone, or never was).
pub fn signal(pid: u32, signal: Signal) {
    let p = i32::try_from(pid).ok().and_then(Pid::from_raw).unwrap_or_else(|| panic!("no such pid {pid}"));
    kill_process(p, signal).unwrap_or_else(|e| panic!("cannot send {signal:?} to process {pid}: {e}"));
}

/// Wait at most `limit` for `child` to exit (checked every 20 ms); `None` when it still runs.
/// Inside a multi-thread tokio runtime the wait leaves the worker to the other tasks.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    blocking(|| {
        let deadline = Instant::now() + limit;
        for _ in 0..(limit.as_millis() / 20 + 2) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

/// Run a blocking step (a process start, a wait for a line or an exit) from a test: inside a
/// multi-thread tokio runtime through `block_in_place`, so the runtime's other tasks (load
/// clients) keep running; elsewhere (a plain `#[test]`, a current-thread runtime) as is.
pub fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Resident set size of process `pid` in KiB (`VmRSS` in `/proc/PID/status`, Linux); `None` when
/// it cannot be read (the process is gone).
pub fn try_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// Resident set size of process `pid` in KiB; panics when it cannot be read.
pub fn rss_kib(pid: u32) -> u64 {
    try_rss_kib(pid).unwrap_or_else(|| panic!("cannot read VmRSS of process {pid} (/proc/{pid}/status)"))
}
