//! The `kuzzle-gateway` binary as a process, for every test that runs the binary: started with a
//! configuration (text or file) and arguments, ready on its "kuzzle-gateway serving" log line (or
//! another line), its addresses read from that line, its output kept, signals, one way to wait
//! for its exit; SIGKILLed on drop. One-shot runs (`--check`) go through `Gateway::run`.
//!
//! ```text
//! let mut gw = Gateway::start(&format!("[gateway]\nlisten = \"127.0.0.1:0\"\n[stats]\nlisten = \"127.0.0.1:0\"\n{nodes}"));
//! assert_eq!(get(gw.http(), "/_now").await.status, 200);
//! assert!(gw.stop().success());
//! ```

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output as ProcessOutput, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::process::{bin, blocking, signal, wait_exit, Signal};
use crate::scratch::scratch_dir;
use crate::wait::READY_TIMEOUT;

/// The message of the line the gateway logs (at info) once its listeners are bound: it carries
/// `http_addr`, `stats_addr` and `tls_addr`.
pub const SERVING: &str = "kuzzle-gateway serving";

/// Bound of an exit after SIGTERM (`shutdown_grace` and the drain of the tests' configurations
/// are far shorter).
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the configuration comes from.
#[derive(Clone, Debug)]
enum ConfigSource {
    /// Written to `gateway.toml` in the gateway's scratch directory.
    Text(String),
    /// The caller's file, as is.
    File(PathBuf),
}

/// How to start a [`Gateway`]: `Gateway::builder().config(&text).arg("--upgrade").start()`.
#[must_use]
#[derive(Clone, Debug)]
pub struct GatewayBuilder {
    config: Option<ConfigSource>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    nofile: Option<u64>,
    /// The line that says "ready"; `None`: `start` returns once the process is spawned.
    ready: Option<String>,
    name: String,
}

impl GatewayBuilder {
    /// Configuration text, written to `gateway.toml` in a scratch directory (`--config` points at it).
    pub fn config(mut self, text: &str) -> Self {
        self.config = Some(ConfigSource::Text(text.to_string()));
        self
    }

    /// A configuration file of the test's own (`--config FILE`).
    pub fn config_file(mut self, path: impl AsRef<Path>) -> Self {
        self.config = Some(ConfigSource::File(path.as_ref().to_path_buf()));
        self
    }

    /// More command-line arguments (`--upgrade`, `--log-format json`, `demo ...`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable of the process (`RUST_LOG` is `info` unless `GATEWAY_LOG` or this says otherwise).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Start it under `ulimit -n N` (soft and hard: it cannot raise it).
    pub fn open_files_limit(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// Ready when a line contains `needle` (default: [`SERVING`]).
    pub fn ready_on(mut self, needle: &str) -> Self {
        self.ready = Some(needle.to_string());
        self
    }

    /// Return as soon as the process is spawned (a test that watches it start, or an upgrade
    /// that waits for its own line).
    pub fn no_wait(mut self) -> Self {
        self.ready = None;
        self
    }

    /// Name of the process in the echoed output and its scratch directory (default `gateway`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Spawn `kuzzle-gateway [--config FILE] ARGS...` and wait for its ready line (at most
    /// `READY_TIMEOUT`); panics with its output if it exits or stays silent.
    pub fn start(self) -> Gateway {
        let dir = scratch_dir(&format!("gw-{}", self.name));
        let config = match &self.config {
            Some(ConfigSource::Text(text)) => {
                let path = dir.join("gateway.toml");
                std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
                Some(path)
            }
            Some(ConfigSource::File(path)) => Some(path.clone()),
            None => None,
        };
        let mut g = Gateway { spec: self, dir, config, child: None, pid: 0, out: Arc::default() };
        g.spawn();
        g
    }
}

/// What the process printed (stdout and stderr, a line each, in the order read), shared with
/// the reader threads.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

#[derive(Default)]
struct OutputState {
    lines: Vec<String>,
    /// Streams at their end (2: the process is gone, or closed both).
    closed: usize,
    /// Standard output at its end: the process exited (the gateway logs there).
    stdout_closed: bool,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, OutputState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(self: &Arc<Self>, stream: impl Read + Send + 'static, is_stdout: bool, tag: String) {
        let out = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                // Shown with the test's output (on failure, or with --nocapture).
                eprintln!("[{tag}] {line}");
                out.lock().lines.push(line);
                out.changed.notify_all();
            }
            let mut s = out.lock();
            s.closed += 1;
            s.stdout_closed |= is_stdout;
            drop(s);
            out.changed.notify_all();
        });
    }
}

/// A `kuzzle-gateway` process (see the module's documentation); SIGKILLed and reaped on drop,
/// its scratch directory removed.
pub struct Gateway {
    spec: GatewayBuilder,
    dir: PathBuf,
    config: Option<PathBuf>,
    child: Option<Child>,
    pid: u32,
    out: Arc<Output>,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder {
            config: None,
            args: Vec::new(),
            env: Vec::new(),
            nofile: None,
            ready: Some(SERVING.to_string()),
            name: "gateway".to_string(),
        }
    }

    /// Start the binary with this configuration text and wait until it serves.
    pub fn start(config: &str) -> Gateway {
        Gateway::builder().config(config).start()
    }

    /// Run `kuzzle-gateway ARGS...` to its end (`--check`, `--version`): its output and status.
    pub fn run(args: &[&str]) -> ProcessOutput {
        Gateway::run_in(Path::new("."), args)
    }

    /// The same in directory `dir` (where a relative `--config` is looked for).
    pub fn run_in(dir: &Path, args: &[&str]) -> ProcessOutput {
        let gateway = bin("kuzzle-gateway");
        Command::new(&gateway)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", gateway.display()))
    }

    fn spawn(&mut self) {
        let s = &self.spec;
        let gateway = bin("kuzzle-gateway");
        let mut argv: Vec<String> = Vec::new();
        if let Some(c) = &self.config {
            argv.extend(["--config".to_string(), c.display().to_string()]);
        }
        argv.extend(s.args.iter().cloned());
        let mut cmd = match s.nofile {
            // `exec` keeps the pid: signals reach the gateway itself.
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")]).arg(&gateway).args(&argv);
                c
            }
            None => {
                let mut c = Command::new(&gateway);
                c.args(&argv);
                c
            }
        };
        cmd.env("RUST_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()));
        for (k, v) in &s.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", gateway.display()));
        self.pid = child.id();
        self.out = Arc::default();
        let tag = format!("{} {}", s.name, self.pid);
        self.out.read(child.stdout.take().expect("stdout piped"), true, tag.clone());
        self.out.read(child.stderr.take().expect("stderr piped"), false, tag);
        self.child = Some(child);
        if let Some(needle) = self.spec.ready.clone() {
            self.wait_line(&needle, READY_TIMEOUT);
        }
    }

    /// The process id (of the last start).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The configuration file it runs with (`None` without `--config`).
    pub fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }

    /// Its scratch directory (where a configuration text was written): a place for more files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last "serving" line.
    fn serving(&self) -> String {
        let s = self.out.lock();
        s.lines.iter().rev().find(|l| l.contains(SERVING)).cloned().unwrap_or_else(|| {
            panic!("{}: no {SERVING:?} line yet (RUST_LOG below info?)\n{}", self.spec.name, s.lines.join("\n"))
        })
    }

    fn addr_of(&self, key: &str) -> Option<SocketAddr> {
        let line = self.serving();
        let v = field(&line, key).unwrap_or_else(|| panic!("no {key} in {line:?}"));
        if v == "None" {
            return None;
        }
        let v = v.strip_prefix("Some(").and_then(|v| v.strip_suffix(')')).unwrap_or(&v);
        Some(v.parse().unwrap_or_else(|_| panic!("{key} is no address in {line:?}")))
    }

    /// The client listener's address, from the "serving" line.
    pub fn http(&self) -> SocketAddr {
        self.addr_of("http_addr").expect("http_addr")
    }

    /// The ops (stats) listener's address, from the "serving" line.
    pub fn ops(&self) -> SocketAddr {
        self.addr_of("stats_addr").expect("stats_addr")
    }

    /// The TLS listener's address, from the "serving" line (`None` without `[tls]`).
    pub fn tls(&self) -> Option<SocketAddr> {
        self.addr_of("tls_addr")
    }

    /// Every line printed so far (stdout and stderr); still readable after the exit.
    pub fn lines(&self) -> Vec<String> {
        self.out.lock().lines.clone()
    }

    /// Every line so far, one string.
    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// How many lines were printed so far: a mark for [`Gateway::wait_line_after`].
    pub fn mark(&self) -> usize {
        self.out.lock().lines.len()
    }

    /// The first line containing `needle`, waiting at most `limit` for it; panics with the
    /// output when it does not come (or the process exits first).
    pub fn wait_line(&self, needle: &str, limit: Duration) -> String {
        self.wait_line_after(0, needle, limit)
    }

    /// The first line after the first `mark` lines containing `needle` (see [`Gateway::mark`]).
    pub fn wait_line_after(&self, mark: usize, needle: &str, limit: Duration) -> String {
        let at = self.wait_for(mark, needle, limit);
        self.out.lock().lines[at].clone()
    }

    /// The lines up to the first containing `needle`, that one included.
    pub fn lines_until(&self, needle: &str, limit: Duration) -> Vec<String> {
        let at = self.wait_for(0, needle, limit);
        self.out.lock().lines[..=at].to_vec()
    }

    /// Index of the first line at or after `from` containing `needle`.
    fn wait_for(&self, from: usize, needle: &str, limit: Duration) -> usize {
        blocking(|| {
            let deadline = Instant::now() + limit;
            let mut s = self.out.lock();
            loop {
                if let Some(i) = s.lines.iter().skip(from).position(|l| l.contains(needle)) {
                    return from + i;
                }
                let now = Instant::now();
                if s.stdout_closed || now >= deadline {
                    let exited = s.stdout_closed;
                    // Its last words on stderr (a configuration error) come with the panic.
                    let until = now + Duration::from_secs(1);
                    while exited && s.closed < 2 && Instant::now() < until {
                        s = self
                            .out
                            .changed
                            .wait_timeout(s, Duration::from_millis(50))
                            .map_or_else(|e| e.into_inner().0, |r| r.0);
                    }
                    panic!(
                        "{} (pid {}): no line containing {needle:?} {}; its output:\n{}",
                        self.spec.name,
                        self.pid,
                        if exited { "before it exited".to_string() } else { format!("within {limit:?}") },
                        s.lines.join("\n")
                    );
                }
                s = self.out.changed.wait_timeout(s, deadline - now).map_or_else(|e| e.into_inner().0, |r| r.0);
            }
        })
    }

    /// Send `sig` to the process.
    pub fn signal(&self, sig: Signal) {
        assert!(self.child.is_some(), "{}: not running", self.spec.name);
        signal(self.pid, sig);
    }

    /// SIGTERM: a graceful stop (see [`Gateway::stop`] to wait for it).
    pub fn sigterm(&self) {
        self.signal(Signal::TERM);
    }

    /// SIGHUP: reload the configuration file.
    pub fn sighup(&self) {
        self.signal(Signal::HUP);
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Wait at most `limit` for the process to exit; its status. Panics (after a SIGKILL) with
    /// its output when it does not exit in time.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().unwrap_or_else(|| panic!("{}: not started or killed", self.spec.name));
        if let Some(status) = wait_exit(child, limit) {
            return status;
        }
        self.kill();
        panic!("{} (pid {}) did not exit within {limit:?}; its output:\n{}", self.spec.name, self.pid, self.output());
    }

    /// SIGTERM, then its exit status (within `EXIT_TIMEOUT`).
    pub fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit(EXIT_TIMEOUT)
    }

    /// SIGKILL and reap (a crash); nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }

    /// SIGKILL, then start again with the same arguments (its configuration file read again)
    /// and wait until ready.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Write a new configuration text to its file (a watching gateway reloads it; a restart
    /// starts with it).
    pub fn set_config(&mut self, text: &str) {
        let path = self.config.clone().unwrap_or_else(|| panic!("{}: started without --config", self.spec.name));
        self.spec.config = Some(ConfigSource::Text(text.to_string()));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The configuration text it runs with (`None` for a file of the test's own).
    pub fn config_text(&self) -> Option<&str> {
        match &self.spec.config {
            Some(ConfigSource::Text(t)) => Some(t),
            _ => None,
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A field of a log line: `key=value` (text format) or `"key":"value"` (JSON format).
fn field(line: &str, key: &str) -> Option<String> {
    if let Some(at) = line.find(&format!(" {key}=")) {
        let v = &line[at + key.len() + 2..];
        return Some(v.split_whitespace().next().unwrap_or_default().to_string());
    }
    let at = line.find(&format!("\"{key}\":\""))?;
    let v = &line[at + key.len() + 4..];
    v.split('"').next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn fields_of_text_and_json_lines() {
        let text = "2025-01-01T00:00:00Z  INFO kuzzle-gateway serving http_addr=127.0.0.1:1 stats_addr=127.0.0.1:2 tls_addr=Some(127.0.0.1:3) nodes=1";
        assert_eq!(field(text, "http_addr").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(field(text, "stats_addr").as_deref(), Some("127.0.0.1:2"));
        assert_eq!(field(text, "tls_addr").as_deref(), Some("Some(127.0.0.1:3)"));
        let json = r#"{"level":"INFO","fields":{"message":"kuzzle-gateway serving","http_addr":"127.0.0.1:1","stats_addr":"127.0.0.1:2","tls_addr":"None"}}"#;
        assert_eq!(field(json, "http_addr").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(field(json, "tls_addr").as_deref(), Some("None"));
    }
}
