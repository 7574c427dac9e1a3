//! `kuzzle-gateway` binary: command line, runtime, signals.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// mimalloc: ~7% less CPU per proxied request than glibc's malloc under load (bench/compare-builds.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use kuzzle_gateway::control::config::{Config, DEFAULT_CONFIG_PATH};

#[derive(Parser, Debug)]
#[command(
    name = "kuzzle-gateway",
    version,
    about = "Cluster gateway for Kuzzle: HTTP/WebSocket balancing, health checks, hot reload, Redis membership"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the configuration and exit (0 = valid, 1 = invalid), like `nginx -t`.
    #[arg(long)]
    check: bool,
    /// Take over the listening sockets of the gateway running with this configuration (binary
    /// upgrade: no connection refused; the old process drains and exits).
    #[arg(long, conflicts_with = "check")]
    upgrade: bool,
    /// Log format: `text` (coloured only on a terminal) or `json` (one object a line, for log shippers).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// A subcommand (`demo`); None runs the gateway.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway in front of 3 simulated Kuzzle nodes on this machine.
    Demo(kuzzle_gateway::demo::DemoArgs),
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    match format {
        LogFormat::Json => fmt.json().init(),
        // Colour codes only where a person reads them, not in files or pipes.
        LogFormat::Text => fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).init(),
    }
}

/// The demo's runtime: tokio's multi-thread one (the demo also drives its node processes).
fn demo_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    if let Some(Cmd::Demo(args)) = cli.cmd {
        let rt = match demo_runtime() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("kuzzle-gateway: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return match rt.block_on(kuzzle_gateway::demo::run(args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kuzzle-gateway demo: {e}");
                ExitCode::FAILURE
            }
        };
    }

    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            // Every mistake of the file, one per line, as `haproxy -c` lists them.
            for e in errors.all() {
                eprintln!("kuzzle-gateway: configuration error: {e}");
            }
            if cli.config == std::path::Path::new(DEFAULT_CONFIG_PATH) && !cli.config.exists() {
                // The default is relative: say where it was looked for.
                let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
                eprintln!(
                    "kuzzle-gateway: no --config given, so {DEFAULT_CONFIG_PATH} was read relative to the current directory ({cwd}); pass --config FILE"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        // A name that does not resolve is no error (the node stays DOWN until it does): a warning.
        let resolved = kuzzle_gateway::control::resolve::resolve_blocking(&config);
        for n in &config.nodes {
            if let kuzzle_gateway::control::config::NodeTarget::Host(h) = &n.target {
                if resolved.get(h).copied().flatten().is_none() {
                    eprintln!(
                        "kuzzle-gateway: warning: {}: node {}: DNS: no address for {h} (the gateway starts; the node stays DOWN until it resolves)",
                        cli.config.display(),
                        n.name
                    );
                }
            }
        }
        // CA bundles of TLS to nodes, and certificate files: loaded as the gateway would, and dated.
        let mut failed = false;
        if let Err(errors) = kuzzle_gateway::core::node_tls::NodeTlsSet::build(&config) {
            for e in errors.all() {
                eprintln!("kuzzle-gateway: configuration error: {e}");
            }
            failed = true;
        }
        let findings = kuzzle_gateway::control::tls::check::check(&config, kuzzle_gateway::util::epoch_secs());
        for f in &findings {
            let what = if f.error { "configuration error" } else { "warning" };
            eprintln!("kuzzle-gateway: {what}: {}", f.message);
        }
        if failed || findings.iter().any(|f| f.error) {
            return ExitCode::FAILURE;
        }
        println!("kuzzle-gateway: configuration file {} is valid", cli.config.display());
        return ExitCode::SUCCESS;
    }
    // A current-thread runtime per worker (this thread is worker 0 and also runs the control
    // plane): a connection and all it wakes stay on one thread, where tokio's work-stealing
    // runtime moved tasks and woke other threads, a cost that grows with workers.
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kuzzle-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let threads = match config.gateway.threads {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    };
    let result = rt.block_on(async {
        let workers = kuzzle_gateway::data::workers::Workers::spawn(threads)
            .map_err(|e| format!("cannot start {threads} worker threads: {e}"))?;
        let workers = std::sync::Arc::new(workers);
        let r = kuzzle_gateway::app::run_process(config, cli.upgrade, workers.clone()).await.map_err(|e| e.to_string());
        workers.stop();
        r
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kuzzle-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}
