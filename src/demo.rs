//! `kuzzle-gateway demo`: the gateway on 7512/7575 in front of 3 simulated nodes, on one machine.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;

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
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Start(#[from] crate::server::StartError),
    #[error("cannot start simulated node {name} on {addr}: {err}")]
    Node { name: String, addr: SocketAddr, err: String },
    #[error("cannot write the demo configuration {0}: {1}")]
    Write(String, std::io::Error),
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let mut sims = Vec::new();
    let mut toml = format!(
        "[gateway]\nlisten = \"{}\"\nshutdown_grace = \"2s\"\n[health]\ninterval = \"2s\"\n[stats]\nlisten = \"{}\"\n",
        args.listen, args.stats
    );
    if let Some(r) = &args.redis {
        toml.push_str(&format!("[cluster]\nredis = \"{r}\"\nheartbeat_timeout = \"4s\"\n"));
    }
    for i in 1..=3u16 {
        let name = format!("cluster_kuzzle_{i}");
        let addr = SocketAddr::from(([127, 0, 0, 1], args.node_port + i - 1));
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| DemoError::Node {
            name: name.clone(),
            addr,
            err: e.to_string(),
        })?;
        let mut cfg = kuzzle_node_sim::SimConfig::new(name.clone());
        cfg.redis = args.redis.clone();
        cfg.heartbeat = Duration::from_secs(1);
        let h = kuzzle_node_sim::start(cfg, listener).await.map_err(|e| DemoError::Node {
            name: name.clone(),
            addr,
            err: e.to_string(),
        })?;
        if args.redis.is_none() {
            toml.push_str(&format!("[[node]]\nname = \"{name}\"\naddress = \"{addr}\"\n"));
        }
        sims.push(h);
    }
    // A real file, so that editing it shows the hot reload at work.
    let path = std::env::temp_dir().join(format!("kuzzle-gateway-demo-{}.toml", args.listen.port()));
    std::fs::write(&path, &toml).map_err(|e| DemoError::Write(path.display().to_string(), e))?;
    let config = Config::load(&path)?;
    let gw = crate::server::start(config).await?;
    let g = gw.http_addr;
    let s = gw.stats_addr;
    println!(
        "\nkuzzle-gateway demo: gateway on http://{g} in front of cluster_kuzzle_1..3{}\n\n\
         Try:\n\
         \x20 curl -i http://{g}/_now                          # balanced (see the x-kuzzle-node header)\n\
         \x20 curl -i http://{g}/cluster_kuzzle_2/_now         # node 2 only (prefix stripped)\n\
         \x20 curl -i http://{g}/cluster_kuzzle_3/_serverInfo  # node 3 only\n\
         \x20 websocat ws://{g}/                               # then send: {{\"controller\":\"server\",\"action\":\"now\",\"requestId\":\"1\"}}\n\
         \x20 websocat ws://{g}/cluster_kuzzle_1/              # a WebSocket to node 1 only\n\
         \x20 open http://kuzzle:kuzzle@{s}/hastats            # stats page (also /hastats;csv, /hastats;json, /metrics)\n\
         \x20 curl -u kuzzle:kuzzle -XPOST http://{s}/nodes/cluster_kuzzle_2/state -d drain\n\n\
         The configuration is {cfg}: edit it (e.g. remove a [[node]]) and the gateway reloads it live.\n\
         Ctrl-C stops everything.\n",
        if args.redis.is_some() { " (membership from Redis)" } else { "" },
        cfg = path.display(),
    );
    crate::run::wait_for_stop_signal().await;
    gw.shutdown().await;
    for h in sims {
        h.shutdown().await;
    }
    Ok(())
}
