//! Control plane: the fleet's Redis task: heartbeats, reading the peers and the shared operator
//! states, writing this gateway's changes, rebalancing ticks; reconnects with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kuzzle_redis_link::{CallError, Commands, Target};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::*;

/// The fleet task's own state.
pub(super) struct Task {
    /// The shared half: the view, the states, the core.
    pub(super) fleet: Arc<Fleet>,
    /// `[fleet]` follows reloads through it.
    pub(super) settings: watch::Receiver<Arc<Config>>,
    /// The gateway's shutdown: the task says goodbye and ends.
    pub(super) stop: tokio_util::sync::CancellationToken,
    /// State changes from the ops API.
    pub(super) writes: mpsc::Receiver<Write>,
    /// Where this gateway listens (for its heartbeat).
    pub(super) addrs: Addrs,
    /// This gateway's rebalancing.
    pub(super) rebalancer: Rebalancer,
    /// Nodes drawn from at the last tick: did a tunnel take the draw?
    pub(super) drawn: Vec<String>,
    /// This gateway's heartbeat counter.
    pub(super) beat_no: u64,
}

/// Why a session ended.
enum End {
    Shutdown,
    /// `[fleet]` changed: start over.
    Reconfigured,
    /// Redis went away: back off, reconnect.
    Lost(CallError),
}

impl Task {
    fn section(&self) -> Option<FleetSection> {
        self.settings.borrow().fleet.clone()
    }

    /// A state to apply from the fleet.
    fn apply(&self, node: &str, state: AdminState) {
        self.fleet.core.remember_admin(node, state);
        self.fleet.metrics.applied.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node, state = state.as_str(), "fleet: operator state applied");
    }

    /// This gateway's heartbeat now.
    fn beat(&mut self, f: &FleetSection) -> Beat {
        self.beat_no += 1;
        let snap = self.fleet.core.snapshot();
        let (client, ops) = (self.addrs)();
        let nodes = snap
            .nodes
            .iter()
            .take(wire::MAX_NODES)
            .map(|b| {
                (b.name.clone(), NodeCount { tunnels: b.counters.tunnels.load(Ordering::Relaxed), active: b.active() })
            })
            .collect();
        let fr = &self.fleet.core.frontend;
        let tunnels = fr.tunnels.load(Ordering::Relaxed);
        Beat {
            name: f.name().to_string(),
            instance: self.fleet.instance.clone(),
            host: host_name(),
            address: client.map(|a| a.to_string()).unwrap_or_default(),
            ops: ops.map(|a| a.to_string()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started_ms: self.fleet.started_ms,
            at_ms: epoch_ms(),
            beat: self.beat_no,
            fingerprint: snap.config.fingerprint.clone(),
            connections: fr.connections.load(Ordering::Relaxed) + tunnels,
            tunnels,
            nodes,
            rebalance_since_ms: self.rebalancer.since_ms,
        }
    }

    /// A heartbeat of another gateway (a message, or read with ours).
    fn on_beat(&self, st: &mut Shared, me: &str, b: Beat, now: Instant) {
        if b.name == me {
            if b.instance != self.fleet.instance {
                if st.clash.as_ref().is_none_or(|(i, _, _)| *i != b.instance) {
                    tracing::warn!(
                        name = me,
                        other = %b.instance,
                        address = %b.address,
                        "fleet: another gateway heartbeats under this gateway's name; fleet names must be unique"
                    );
                }
                st.clash = Some((b.instance.clone(), b.address.clone(), now));
            }
            return;
        }
        match st.peers.get_mut(&b.name) {
            Some(p) if p.beat.instance == b.instance && p.beat.beat >= b.beat => {}
            Some(p) => {
                p.beat = b;
                p.seen = now;
            }
            None => {
                tracing::info!(gateway = %b.name, address = %b.address, "fleet: a gateway joined the view");
                st.peers.insert(b.name.clone(), Peer { beat: b, seen: now });
            }
        }
    }

    /// Peers silent for `ttl` leave the view (and a name clash not heard of since is forgotten).
    fn expire(&self, ttl: Duration, now: Instant) {
        let mut st = lock(&self.fleet.shared);
        if st.clash.as_ref().is_some_and(|(_, _, at)| now.saturating_duration_since(*at) > ttl) {
            st.clash = None;
        }
        st.peers.retain(|name, p| {
            let keep = now.saturating_duration_since(p.seen) <= ttl;
            if !keep {
                tracing::info!(gateway = %name, "fleet: a gateway left the view (no heartbeat within ttl)");
            }
            keep
        });
    }

    /// Every node's count of the others' tunnels, for leastconn (0 for all without a fleet).
    fn refresh_remote(&self) {
        let st = lock(&self.fleet.shared);
        let mut remote: HashMap<&str, u64> = HashMap::new();
        for p in st.peers.values() {
            for (n, c) in &p.beat.nodes {
                *remote.entry(n.as_str()).or_default() += c.tunnels;
            }
        }
        for b in &self.fleet.core.snapshot().nodes {
            b.set_remote(remote.get(b.name.as_str()).copied().unwrap_or(0));
        }
    }

    fn on_push(&self, f: &FleetSection, keys: &Keys, p: PushInfo) {
        if p.kind != PushKind::Message {
            return;
        }
        let fleet = &self.fleet;
        fleet.metrics.messages.fetch_add(1, Ordering::Relaxed);
        let (Some(Value::BulkString(chan)), Some(Value::BulkString(payload))) = (p.data.first(), p.data.get(1)) else {
            return;
        };
        let chan = String::from_utf8_lossy(chan);
        if chan == keys.states_channel() {
            match wire::parse_state(payload) {
                Ok(r) => {
                    let node = r.node.clone();
                    let applied = lock(&fleet.shared).states.on_record(r, epoch_ms());
                    if let Some(s) = applied {
                        self.apply(&node, s);
                    }
                }
                Err(r) => fleet.dropped(&chan, &r),
            }
        } else if chan == keys.gateways_channel() {
            match wire::parse_gateway_msg(payload) {
                Ok(GatewayMsg::Beat(b)) => {
                    let mut st = lock(&fleet.shared);
                    self.on_beat(&mut st, f.name(), *b, Instant::now());
                }
                Ok(GatewayMsg::Bye { name, instance }) => {
                    let mut st = lock(&fleet.shared);
                    if st.peers.get(&name).is_some_and(|p| p.beat.instance == instance) {
                        st.peers.remove(&name);
                        tracing::info!(gateway = %name, "fleet: a gateway stopped");
                    }
                }
                Err(r) => fleet.dropped(&chan, &r),
            }
        }
    }

    /// Heartbeat and read (one script), then reconcile the states.
    async fn beat_and_read(&mut self, f: &FleetSection, keys: &Keys, cmds: &Commands) -> Result<(), CallError> {
        let started = Instant::now();
        let beat = self.beat(f);
        let msg = serde_json::to_string(&GatewayMsg::Beat(Box::new(beat.clone()))).unwrap_or_default();
        let ttl_ms = f.ttl.0.as_millis() as u64;
        let state_ttl_ms = f.state_ttl.0.as_millis() as u64;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(wire::BEAT_SCRIPT)
            .arg(4)
            .arg(keys.gateway(f.name()))
            .arg(keys.index())
            .arg(keys.states())
            .arg(keys.seq())
            .arg(f.name())
            .arg(&msg)
            .arg(ttl_ms)
            .arg(state_ttl_ms)
            .arg(keys.gateways_channel())
            .arg(keys.gateway_prefix())
            .arg(wire::MAX_GATEWAYS)
            .arg(wire::MAX_STATES);
        let (beats, hash, seq, len): (Vec<Vec<u8>>, Vec<Vec<u8>>, String, u64) =
            cmds.query("fleet heartbeat", &cmd).await?;
        let fleet = self.fleet.clone();
        // Peers read now; those missing from the index expired (or left) unless heard of since.
        let mut live = Vec::new();
        {
            let mut st = lock(&fleet.shared);
            st.me = Some(beat);
            for raw in &beats {
                match wire::parse_gateway_msg(raw) {
                    Ok(GatewayMsg::Beat(b)) => {
                        live.push(b.name.clone());
                        self.on_beat(&mut st, f.name(), *b, Instant::now());
                    }
                    Ok(GatewayMsg::Bye { .. }) => {}
                    Err(r) => {
                        drop(st);
                        fleet.dropped("gateway key", &r);
                        st = lock(&fleet.shared);
                    }
                }
            }
            st.peers.retain(|n, p| live.contains(n) || p.seen > started);
        }
        if len as usize > wire::MAX_STATES {
            fleet.dropped("states hash", &Reject::TooMany(len as usize));
        }
        let mut records = Vec::with_capacity(hash.len() / 2);
        for pair in hash.chunks(2) {
            let [field, raw] = pair else { continue };
            let field = String::from_utf8_lossy(field);
            match wire::parse_state(raw) {
                Ok(r) if r.node == field => records.push((r, String::from_utf8_lossy(raw).into_owned())),
                Ok(r) => fleet.dropped("states hash", &Reject::Mismatch(field.into_owned(), r.node)),
                Err(r) => fleet.dropped("states hash", &r),
            }
        }
        let redis_seq: u64 = seq.trim().parse().unwrap_or(0);
        let snap = fleet.core.snapshot_full();
        let plan = lock(&fleet.shared)
            .states
            .reconcile(records, redis_seq, epoch_ms(), state_ttl_ms, |n| snap.node(n).is_some());
        for (node, s) in &plan.apply {
            self.apply(node, *s);
        }
        if let Some((max, records)) = plan.reseed {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(wire::RESEED_SCRIPT).arg(2).arg(keys.states()).arg(keys.seq()).arg(max).arg(state_ttl_ms);
            for r in &records {
                cmd.arg(&r.node).arg(r.to_json());
            }
            let done: u64 = cmds.query("fleet reseed", &cmd).await?;
            if done == 1 {
                tracing::warn!(
                    states = records.len(),
                    seq = max,
                    "fleet: Redis had lost the operator states (restarted empty?): put back what this gateway knew"
                );
            }
        }
        for r in plan.write {
            tracing::info!(node = %r.node, state = r.state.as_str(), "fleet: sharing a state change taken while Redis was away");
            self.write_state(f, keys, cmds, r).await?;
        }
        for (node, raw) in plan.prune {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(wire::PRUNE_SCRIPT).arg(1).arg(keys.states()).arg(&node).arg(raw);
            cmds.query::<u64>("fleet prune", &cmd).await?;
        }
        Ok(())
    }

    /// Write one state change (seq from Redis, stored, published); returns its seq.
    async fn write_state(
        &self,
        f: &FleetSection,
        keys: &Keys,
        cmds: &Commands,
        r: StateRecord,
    ) -> Result<u64, CallError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(wire::SET_STATE_SCRIPT)
            .arg(2)
            .arg(keys.states())
            .arg(keys.seq())
            .arg(&r.node)
            .arg(r.tail())
            .arg(keys.states_channel())
            .arg(f.state_ttl.0.as_millis() as u64)
            .arg(wire::MAX_STATES);
        let (seq, _stored): (u64, String) = cmds.query("fleet state change", &cmd).await?;
        self.fleet.metrics.written.fetch_add(1, Ordering::Relaxed);
        lock(&self.fleet.shared).states.confirmed(StateRecord { seq, ..r }, epoch_ms());
        Ok(seq)
    }

    /// One housekeeping step: silent peers leave, remote loads follow, rebalancing steps.
    fn tick(&mut self, f: Option<&FleetSection>, connected: bool) {
        let now = Instant::now();
        if let Some(f) = f {
            self.expire(f.ttl.0, now);
        }
        self.refresh_remote();
        let snap = self.fleet.core.snapshot_full();
        // Did the draws of the last tick close something?
        for node in std::mem::take(&mut self.drawn) {
            let Some(b) = snap.node(&node) else { continue };
            if b.shed.budget() > 0 {
                b.shed.cancel_draw();
                self.rebalancer.exhausted(&node);
            } else {
                self.rebalancer.moved_one();
                self.fleet.metrics.draws.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some(f) = f else { return };
        let peers_since;
        let inputs: Vec<NodeInput> = {
            let st = lock(&self.fleet.shared);
            peers_since = st.peers.values().filter_map(|p| p.beat.rebalance_since_ms).min();
            snap.nodes
                .iter()
                .filter(|b| !b.unresolved)
                .map(|b| {
                    let own = b.counters.tunnels.load(Ordering::Relaxed);
                    let others: u64 =
                        st.peers.values().filter_map(|p| p.beat.nodes.get(&b.name)).map(|c| c.tunnels).sum();
                    NodeInput {
                        name: b.name.clone(),
                        fleet: own + others,
                        own,
                        participant: b.membership() == Membership::Active && b.admin() == AdminState::Ready,
                        healthy: b.health.is_up(),
                    }
                })
                .collect()
        };
        let s = rebalance::Settings {
            enabled: f.rebalance_websockets,
            rate: f.rebalance_rate,
            tolerance: f.rebalance_tolerance,
            settle: RECONNECT_DELAY + Duration::from_millis(500) + 3 * beat_period(f, true),
            confirm: (2 * f.heartbeat.0).max(RECONNECT_DELAY) + Duration::from_millis(500),
        };
        let i = rebalance::Inputs {
            nodes: &inputs,
            connected,
            peers_since,
            now: std::time::Instant::now(),
            now_ms: epoch_ms(),
            jitter: rand::random::<f64>(),
        };
        let draw = self.rebalancer.tick(&s, &i);
        if let (Some(node), Some(since)) = (draw, self.rebalancer.since_ms) {
            if let Some(b) = snap.node(&node) {
                // Never a WebSocket opened after the rebalancing began, nor a brand new one (a
                // client still subscribing).
                b.draw_tunnels(1, since.min(epoch_ms().saturating_sub(MIN_TUNNEL_AGE_MS)));
                self.drawn.push(node);
            }
        }
        let r = &self.rebalancer;
        lock(&self.fleet.shared).rebalance = RebalanceView {
            enabled: f.rebalance_websockets,
            rate: f.rebalance_rate,
            tolerance_pct: f.rebalance_tolerance,
            phase: r.phase.as_str(),
            since_ms: r.since_ms,
            round: r.round,
            moved: r.moved,
            moved_total: r.moved_total,
            left: r.left(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
        };
    }
}

/// The heartbeat period: `[fleet] heartbeat`, shorter while rebalancing.
fn beat_period(f: &FleetSection, rebalancing: bool) -> Duration {
    if rebalancing {
        f.heartbeat.0.min(FAST_BEAT)
    } else {
        f.heartbeat.0
    }
}

fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The fleet task: connect, follow, reconnect with backoff, until shutdown.
pub(super) async fn run(mut t: Task) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let section = t.section();
        {
            let mut st = lock(&t.fleet.shared);
            if section.is_none() && st.section.is_some() {
                st.peers.clear();
                st.me = None;
                st.rebalance = RebalanceView::default();
            }
            st.section = section.clone();
        }
        let Some(f) = section else {
            t.rebalancer = Rebalancer::new(std::time::Instant::now());
            t.tick(None, false);
            if wait(&mut t, None, None).await {
                return;
            }
            continue;
        };
        let target = target_of(&f);
        lock(&t.fleet.shared).link.target = Some(describe(&target));
        let end = match Commands::connect(&target).await {
            Ok(cmds) => session(&mut t, &f, &target, &cmds, &mut backoff).await,
            Err(e) => End::Lost(e),
        };
        t.fleet.metrics.connected.store(0, Ordering::Relaxed);
        lock(&t.fleet.shared).link.since_ms = None;
        match end {
            End::Shutdown => return,
            End::Reconfigured => continue,
            End::Lost(e) => {
                t.fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                lock(&t.fleet.shared).link.last_error = Some(e.to_string());
                tracing::warn!(error = %e, retry_in = ?backoff, "fleet: Redis unavailable; keeping the last known operator states");
                let delay = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if wait(&mut t, Some(&f), Some(delay)).await {
                    return;
                }
            }
        }
    }
}

/// Between sessions: wait `d` (forever with None) or until `[fleet]` changes, still answering ops
/// (changes stay pending) and keeping the view honest (silent peers leave). True on shutdown.
async fn wait(t: &mut Task, f: Option<&FleetSection>, d: Option<Duration>) -> bool {
    let sleep = async {
        match d {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Bounded: each turn awaits one event; the sleep ends it at the latest.
    loop {
        tokio::select! {
            _ = t.stop.cancelled() => return true,
            _ = &mut sleep => return false,
            r = t.settings.changed() => {
                if r.is_err() {
                    return true;
                }
                if t.section().as_ref() != f {
                    return false;
                }
            }
            w = t.writes.recv() => match w {
                Some(w) => {
                    let _ = w.reply.send(Err("Redis unreachable: applied on this gateway; shared when Redis answers again".into()));
                }
                None => return true,
            },
            _ = tick.tick(), if f.is_some() => t.tick(f, false),
        }
    }
}

/// One connected period: subscribe, heartbeat and read, follow messages, rebalance.
async fn session(t: &mut Task, f: &FleetSection, target: &Target, cmds: &Commands, backoff: &mut Duration) -> End {
    let keys = Keys::new(&f.namespace);
    let mut f = f.clone();
    let fleet = t.fleet.clone();
    let (tx, mut rx) = mpsc::channel::<PushInfo>(PUSH_QUEUE);
    let flood = fleet.clone();
    let push = move |p: PushInfo| match tx.try_send(p) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => {
            if let Some(i) = REJECT_LABELS.iter().position(|l| *l == "overflow") {
                flood.metrics.dropped[i].fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
    };
    let channels = [keys.gateways_channel(), keys.states_channel()];
    let mut sub = match Subscription::open(target, &channels, Arc::new(push)).await {
        Ok(s) => s,
        Err(e) => return End::Lost(e),
    };
    if let Err(e) = t.beat_and_read(&f, &keys, cmds).await {
        return End::Lost(e);
    }
    *backoff = BACKOFF_MIN;
    fleet.metrics.connects.fetch_add(1, Ordering::Relaxed);
    fleet.metrics.connected.store(1, Ordering::Relaxed);
    {
        let mut st = lock(&fleet.shared);
        st.link.since_ms = Some(epoch_ms());
        st.link.last_error = None;
    }
    tracing::info!(redis = %describe(target), name = f.name(), namespace = %f.namespace, "fleet: connected");
    t.refresh_remote();

    let mut next_beat = Instant::now() + beat_period(&f, t.rebalancer.active());
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.reset();
    let mut failures = 0u32;
    let end = loop {
        tokio::select! {
            _ = t.stop.cancelled() => break End::Shutdown,
            r = t.settings.changed() => {
                if r.is_err() {
                    break End::Shutdown;
                }
                match t.section() {
                    Some(n) if link_part(&n) == link_part(&f) => f = n,
                    _ => break End::Reconfigured,
                }
            }
            p = rx.recv() => match p {
                None => break End::Lost(CallError::Closed),
                Some(p) if sub.ends(&p) => break End::Lost(CallError::Closed),
                Some(p) => t.on_push(&f, &keys, p),
            },
            w = t.writes.recv() => match w {
                None => break End::Shutdown,
                Some(w) => {
                    let r = t.write_state(&f, &keys, cmds, w.record).await.map_err(|e| {
                        fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        format!("{e}: applied on this gateway; shared when Redis answers again")
                    });
                    let _ = w.reply.send(r);
                }
            },
            _ = tokio::time::sleep_until(next_beat) => {
                next_beat = Instant::now() + beat_period(&f, t.rebalancer.active());
                match t.beat_and_read(&f, &keys, cmds).await {
                    Ok(()) => failures = 0,
                    Err(e) => {
                        fleet.metrics.errors.fetch_add(1, Ordering::Relaxed);
                        lock(&fleet.shared).link.last_error = Some(e.to_string());
                        failures += 1;
                        if failures >= 2 {
                            break End::Lost(e);
                        }
                    }
                }
            }
            _ = tick.tick() => t.tick(Some(&f), true),
            _ = ping.tick() => {
                if let Err(e) = sub.ping().await {
                    break End::Lost(e);
                }
            }
        }
    };
    if matches!(end, End::Shutdown | End::Reconfigured) {
        bye(t, &f, &keys, cmds).await;
    }
    end
}

/// Leave the fleet cleanly (bounded): the key goes if it is still ours, and a goodbye is published.
async fn bye(t: &Task, f: &FleetSection, keys: &Keys, cmds: &Commands) {
    let msg = serde_json::to_string(&GatewayMsg::Bye { name: f.name().into(), instance: t.fleet.instance.clone() })
        .unwrap_or_default();
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(wire::BYE_SCRIPT)
        .arg(2)
        .arg(keys.gateway(f.name()))
        .arg(keys.index())
        .arg(f.name())
        .arg(format!("\"instance\":\"{}\"", t.fleet.instance))
        .arg(msg)
        .arg(keys.gateways_channel());
    match cmds.query::<u64>("fleet goodbye", &cmd).await {
        Ok(_) => tracing::info!(name = f.name(), "fleet: left"),
        Err(e) => tracing::warn!(error = %e, "fleet: could not say goodbye (the key expires with its ttl)"),
    }
}
