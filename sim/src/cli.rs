//! The `kuzzle-node-sim` command line: flags, logging, runtime, ready line, signals.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::config::SimConfig;

/// One simulated Kuzzle node (cluster plugin 3.x behaviour, or Kuzzle 2 with --kuzzle2).
#[derive(Debug, Parser)]
#[command(name = "kuzzle-node-sim", version, about)]
struct Cli {
    /// Address to serve HTTP and WebSocket on (port 0: any free port; the ready line tells).
    #[arg(long, value_name = "ADDR")]
    listen: String,
    /// Node name (URL prefix on the gateway, `node` of every answer, Kuzzle 2 node id).
    #[arg(long)]
    name: String,
    /// Redis URL for the cluster behaviour (e.g. redis://127.0.0.1:6379/0).
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    redis: Option<String>,
    /// Redis Cluster seed URLs, comma-separated.
    #[arg(long, value_name = "URL,URL,...", value_delimiter = ',')]
    redis_cluster: Option<Vec<String>>,
    /// Behave as a Kuzzle 2.11+ node (ID card in Redis) instead of a cluster-plugin node.
    #[arg(long)]
    kuzzle2: bool,
    /// Heartbeat period (ID card refresh in --kuzzle2 mode; its TTL is twice this).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    heartbeat: Duration,
    /// Start not ready (health routes answer ko / 503 until POST /_sim/ready/true).
    #[arg(long)]
    not_ready: bool,
    /// Latency added before every HTTP answer but the health and /_sim control routes.
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    latency: Duration,
    /// Percentage of HTTP requests (health and control routes aside) answering 500.
    #[arg(long, value_name = "PERCENT", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    errors: u8,
    /// `http` address published in the descriptor (default: http://<listen ip>:<port>).
    #[arg(long, value_name = "http://IP:PORT")]
    advertise_http: Option<String>,
    /// `pub` (identity) published in the descriptor (default: tcp://<listen ip>:<port>).
    #[arg(long = "pub", value_name = "tcp://IP:PORT")]
    pub_addr: Option<String>,
    /// Keep HTTP connections open between requests (benchmarks, pooling tests). Without it every
    /// response says `Connection: close` and the connection closes, as real Kuzzle 2 does.
    #[arg(long)]
    keep_alive: bool,
    /// On SIGTERM, how long new requests are answered 503 (api.process.shutting_down) before the
    /// node closes its WebSockets and exits (real Kuzzle: about 0.1 to 3 s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    shutdown_window: Duration,
    /// How long after start GET /_ready answers 503 (Kuzzle's starting state).
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = parse_duration)]
    start_delay: Duration,
    /// Run as NAME-NNNNN (random digits, new at every start), as real Kuzzle 2 picks a new node id
    /// at every start; the ready line names it.
    #[arg(long)]
    fresh_id: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 5s)"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

impl Cli {
    fn into_config(self) -> (String, SimConfig) {
        let mut cfg = SimConfig::new(self.name);
        match (self.redis, self.redis_cluster) {
            (Some(url), _) => cfg.redis = Some(url),
            (None, Some(seeds)) => {
                cfg.redis = Some(seeds.join(","));
                cfg.redis_cluster = true;
            }
            (None, None) => {}
        }
        cfg.kuzzle2 = self.kuzzle2;
        cfg.heartbeat = self.heartbeat;
        cfg.ready = !self.not_ready;
        cfg.latency = self.latency;
        cfg.error_percent = self.errors;
        cfg.advertise_http = self.advertise_http;
        cfg.pub_addr = self.pub_addr;
        cfg.keep_alive = self.keep_alive;
        cfg.shutdown_window = self.shutdown_window;
        cfg.start_delay = self.start_delay;
        cfg.fresh_id = self.fresh_id;
        (self.listen, cfg)
    }
}

/// Entry point of the `kuzzle-node-sim` binary: exit 0 after a graceful shutdown on
/// SIGTERM/SIGINT (see [`crate::SimHandle::shutdown`]), 1 when the node cannot start, 2 on bad
/// flags.
pub fn cli_main() -> ExitCode {
    let cli = Cli::parse(); // prints clap's message and exits 2 on bad flags
    let (listen, cfg) = cli.into_config();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr) // stdout carries only the ready line
        // Colour codes only where a person reads them, not in files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kuzzle-node-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(listen, cfg))
}

async fn run(listen: String, cfg: SimConfig) -> ExitCode {
    let name = cfg.name.clone();
    // Signal handlers first, so a SIGTERM right after the ready line is never missed.
    let signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kuzzle-node-sim: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kuzzle-node-sim {name}: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match crate::start(cfg, listener).await {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kuzzle-node-sim {name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // With --fresh-id the node runs under a new name.
    let name = handle.name().to_owned();
    {
        let mut out = std::io::stdout().lock();
        let printed = writeln!(out, "kuzzle-node-sim {name} listening on {}", handle.addr).and_then(|()| out.flush());
        if let Err(e) = printed {
            eprintln!("kuzzle-node-sim {name}: cannot write the ready line: {e}");
        }
    }
    let why = signals.wait().await;
    tracing::info!(node = %name, "caught {why}: graceful shutdown");
    handle.shutdown().await;
    tracing::debug!(node = %name, "stopped");
    ExitCode::SUCCESS
}

#[cfg(unix)]
struct Signals {
    /// SIGTERM: what stops a Kuzzle node gracefully.
    term: tokio::signal::unix::Signal,
    /// SIGINT (Ctrl-C at a terminal): the same graceful shutdown.
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn wait(self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(String, SimConfig), clap::Error> {
        let mut v = vec!["kuzzle-node-sim"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(Cli::into_config)
    }

    #[test]
    fn defaults() {
        let (listen, cfg) = parse(&["--listen", "127.0.0.1:0", "--name", "n1"]).unwrap();
        assert_eq!(listen, "127.0.0.1:0");
        assert_eq!(cfg.name, "n1");
        assert_eq!(cfg.heartbeat, Duration::from_secs(5));
        assert!(cfg.ready && !cfg.kuzzle2 && cfg.redis.is_none() && !cfg.redis_cluster);
        assert_eq!(cfg.latency, Duration::ZERO);
        assert_eq!(cfg.error_percent, 0);
        assert!(!cfg.keep_alive, "Connection: close by default, as Kuzzle 2");
        assert_eq!(cfg.shutdown_window, Duration::from_secs(1));
        assert_eq!(cfg.start_delay, Duration::ZERO);
        assert!(!cfg.fresh_id);
        assert_eq!(cfg.running_name(), "n1");
    }

    #[test]
    fn every_flag() {
        let (_, cfg) = parse(&[
            "--listen",
            "0.0.0.0:7512",
            "--name",
            "n2",
            "--redis-cluster",
            "redis://a:1,redis://b:2",
            "--kuzzle2",
            "--heartbeat",
            "500ms",
            "--not-ready",
            "--latency",
            "20ms",
            "--errors",
            "30",
            "--advertise-http",
            "http://10.0.0.1:7512",
            "--pub",
            "tcp://10.0.0.1:7511",
            "--keep-alive",
            "--shutdown-window",
            "250ms",
            "--start-delay",
            "2s",
            "--fresh-id",
        ])
        .unwrap();
        assert_eq!(cfg.redis.as_deref(), Some("redis://a:1,redis://b:2"));
        assert!(cfg.redis_cluster && cfg.kuzzle2 && !cfg.ready);
        assert_eq!(cfg.heartbeat, Duration::from_millis(500));
        assert_eq!(cfg.latency, Duration::from_millis(20));
        assert_eq!(cfg.error_percent, 30);
        assert_eq!(cfg.advertise_http.as_deref(), Some("http://10.0.0.1:7512"));
        assert_eq!(cfg.pub_addr.as_deref(), Some("tcp://10.0.0.1:7511"));
        assert!(cfg.keep_alive);
        assert_eq!(cfg.shutdown_window, Duration::from_millis(250));
        assert_eq!(cfg.start_delay, Duration::from_secs(2));
        assert!(cfg.fresh_id);
        let (a, b) = (cfg.running_name(), cfg.running_name());
        assert!(a.starts_with("n2-") && a.len() == "n2-".len() + 5, "{a}");
        assert!(a[3..].bytes().all(|c| c.is_ascii_digit()), "{a}");
        assert!(a != b || cfg.running_name() != a, "a new id at every start");
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["--name", "n"][..],
            &["--listen", "x", "--name", "n", "--errors", "101"],
            &["--listen", "x", "--name", "n", "--heartbeat", "0s"],
            &["--listen", "x", "--name", "n", "--heartbeat", "soon"],
            &["--listen", "x", "--name", "n", "--redis", "redis://a", "--redis-cluster", "redis://b"],
            &["--listen", "x", "--name", "n", "--bogus"],
            &["--listen", "x", "--name", "n", "--shutdown-window", "later"],
        ] {
            let e = parse(args).expect_err("must be refused");
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
    }
}
