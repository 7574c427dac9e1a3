//! `kuzzle-gateway demo`: the gateway on 7512/7575 in front of 3 simulated nodes, on one machine.
//! The nodes are separate `kuzzle-node-sim` processes, as a real cluster runs separate nodes, so
//! the gateway binary does not link the simulator.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::control::config::Config;

/// Options of the demo command.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Use this Redis for membership (nodes register and leave by themselves).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Client listener.
    #[arg(long, default_value = "127.0.0.1:7512")]
    pub listen: SocketAddr,
    /// Ops listener (stats, metrics).
    #[arg(long, default_value = "127.0.0.1:7575")]
    pub stats: SocketAddr,
    /// First port of the simulated nodes (they take three in a row).
    #[arg(long, default_value_t = 17601)]
    pub node_port: u16,
    /// The `kuzzle-node-sim` binary (default: beside this one, built with cargo when missing).
    #[arg(long, value_name = "FILE")]
    pub sim: Option<PathBuf>,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Start(#[from] crate::control::listeners::StartError),
    #[error("cannot start simulated node {name} on {addr}: {err}")]
    Node {
        /// The node's name.
        name: String,
        /// Where it was to listen.
        addr: SocketAddr,
        /// Why it did not come up.
        err: String,
    },
    #[error("cannot find kuzzle-node-sim: {0}")]
    NoSim(String),
    #[error("cannot write the demo configuration {0}: {1}")]
    Write(String, std::io::Error),
    #[error("demo configuration: {0}")]
    Config(#[from] crate::control::config::ConfigErrors),
}

/// Demo credentials of the ops listener (printed with the URLs).
const USER: &str = "kuzzle";
const PASSWORD: &str = "kuzzle";

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let sim = find_sim(args.sim.as_deref())?;
    let mut toml = format!(
        "[gateway]\nlisten = \"{}\"\nshutdown_grace = \"2s\"\n[health]\ninterval = \"2s\"\n\
         [stats]\nlisten = \"{}\"\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n",
        args.listen, args.stats
    );
    if let Some(r) = &args.redis {
        toml.push_str(&format!("[cluster]\nredis = \"{r}\"\nheartbeat_timeout = \"4s\"\n"));
    }
    let mut nodes = Vec::new();
    for i in 1..=3u16 {
        let name = format!("cluster_kuzzle_{i}");
        let addr = SocketAddr::from(([127, 0, 0, 1], args.node_port + i - 1));
        nodes.push(spawn_node(&sim, &name, addr, args.redis.as_deref()).await?);
        if args.redis.is_none() {
            toml.push_str(&format!("[[node]]\nname = \"{name}\"\naddress = \"{addr}\"\n"));
        }
    }
    // A real file, so that editing it shows the hot reload at work.
    let path = std::env::temp_dir().join(format!("kuzzle-gateway-demo-{}.toml", args.listen.port()));
    std::fs::write(&path, &toml).map_err(|e| DemoError::Write(path.display().to_string(), e))?;
    let config = Config::load(&path)?;
    let gw = crate::app::bind_and_start(config)?;
    println!("{}", banner(gw.http_addr, gw.stats_addr, args.redis.is_some(), &path));
    crate::app::wait_for_stop_signal().await;
    gw.shutdown().await;
    for mut n in nodes {
        stop_node(&mut n).await;
    }
    Ok(())
}

fn banner(g: SocketAddr, s: SocketAddr, redis: bool, cfg: &Path) -> String {
    let edit = if redis {
        "nodes come and go through Redis: stop one (kill its kuzzle-node-sim process) and watch /hastats"
    } else {
        "edit it (e.g. remove a [[node]]) and the gateway reloads it live"
    };
    format!(
        "\nkuzzle-gateway demo: gateway on http://{g} in front of cluster_kuzzle_1..3{}\n\n\
         Try:\n\
         \x20 curl -i http://{g}/_now                          # balanced (see the x-kuzzle-node header)\n\
         \x20 curl -i http://{g}/cluster_kuzzle_2/_now         # node 2 only (prefix stripped)\n\
         \x20 curl -i http://{g}/cluster_kuzzle_3/_serverInfo  # node 3 only\n\
         \x20 cargo run --release --example ws_call -- ws://{g}/ '{{\"controller\":\"server\",\"action\":\"now\"}}'\n\
         \x20 curl -u {USER}:{PASSWORD} 'http://{s}/hastats;csv'  # stats (browser: http://{s}/hastats, user {USER}, password {PASSWORD})\n\
         \x20 curl -u {USER}:{PASSWORD} -XPOST -H 'content-type: application/json' http://{s}/nodes/cluster_kuzzle_2/state -d '{{\"state\":\"drain\"}}'\n\n\
         The configuration is {cfg}: {edit}.\n\
         Ctrl-C stops everything.\n",
        if redis { " (membership from Redis)" } else { "" },
        cfg = cfg.display(),
    )
}

/// The simulator binary: given, or beside this executable; under `cargo run`, built on first use.
fn find_sim(given: Option<&Path>) -> Result<PathBuf, DemoError> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(DemoError::NoSim(format!("{} is not a file", p.display())))
        };
    }
    let exe = std::env::current_exe().map_err(|e| DemoError::NoSim(e.to_string()))?;
    let dir = exe.parent().ok_or_else(|| DemoError::NoSim("no directory for this executable".into()))?;
    let sim = dir.join("kuzzle-node-sim");
    if sim.is_file() {
        return Ok(sim);
    }
    // `cargo run` sets CARGO: build the simulator with the same profile as this binary.
    let cargo = std::env::var_os("CARGO").ok_or_else(|| {
        DemoError::NoSim(format!(
            "{} is missing; build it with `cargo build --release --workspace --bins`",
            sim.display()
        ))
    })?;
    let release = dir.file_name().is_some_and(|n| n == "release");
    println!("kuzzle-gateway demo: building kuzzle-node-sim (first run only)...");
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "-p", "kuzzle-node-sim", "--bin", "kuzzle-node-sim"]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().map(|s| s.success()).unwrap_or(false);
    if ok && sim.is_file() {
        Ok(sim)
    } else {
        Err(DemoError::NoSim(format!(
            "building it failed; try `cargo build --release --workspace --bins` ({})",
            sim.display()
        )))
    }
}

/// Start one node process and wait until it answers its health route (bounded: 20 s).
async fn spawn_node(
    sim: &Path,
    name: &str,
    addr: SocketAddr,
    redis: Option<&str>,
) -> Result<tokio::process::Child, DemoError> {
    let err = |e: String| DemoError::Node { name: name.to_string(), addr, err: e };
    let mut cmd = tokio::process::Command::new(sim);
    cmd.arg("--listen").arg(addr.to_string()).arg("--name").arg(name).arg("--heartbeat").arg("1s");
    if let Some(r) = redis {
        cmd.arg("--redis").arg(r);
    }
    // The node goes with the demo, even if the demo is killed.
    cmd.kill_on_drop(true).stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().map_err(|e| err(e.to_string()))?;
    for _ in 0..200 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(err(format!("exited at start ({status}); is {addr} free?")));
        }
        if healthy(addr).await {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(err("did not answer within 20 s".into()))
}

/// One `GET /_healthCheck` answered 200.
async fn healthy(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await else {
        return false;
    };
    let req = format!("GET /_healthCheck HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut head)).await, Ok(Ok(_)))
        && head.starts_with(b"HTTP/1.1 200")
}

/// SIGTERM (the node leaves Redis cleanly), then kill after 5 s.
async fn stop_node(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_lines_are_shell_safe_and_fit_the_mode() {
        let g: SocketAddr = "127.0.0.1:7512".parse().expect("addr");
        let s: SocketAddr = "127.0.0.1:7575".parse().expect("addr");
        let b = banner(g, s, false, Path::new("/tmp/x.toml"));
        for line in b.lines().filter(|l| l.contains(';')) {
            // A `;` outside quotes would end the shell command there.
            let unquoted: String = line.split('\'').step_by(2).collect();
            assert!(!unquoted.split('#').next().unwrap_or("").contains(';'), "unquoted ';' in {line:?}");
        }
        assert!(!b.contains("websocat") && !b.contains(" open "), "tools a fresh Debian lacks: {b}");
        assert!(b.contains("remove a [[node]]"));
        let r = banner(g, s, true, Path::new("/tmp/x.toml"));
        assert!(!r.contains("[[node]]"), "the Redis demo's config has no [[node]]: {r}");
    }
}
