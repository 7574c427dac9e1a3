//! Control plane: WebSocket rebalancing, pure (time and randomness passed in). When the fleet's
//! WebSockets per node are uneven, each gateway closes its share of its own tunnels on the
//! over-loaded nodes, a few a second with jitter, in rounds: close, let the clients come back
//! (fleet-wide leastconn sends them to the emptier nodes), look again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Rounds of one rebalancing before giving up (clients that do not come back, a node that fills
/// up with newcomers that may not be moved again...).
pub const MAX_ROUNDS: u32 = 8;
/// After giving up, no new rebalancing for this long.
pub const COOLDOWN: Duration = Duration::from_secs(60);

/// One node as the rebalancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInput {
    /// The node's name.
    pub name: String,
    /// WebSockets on the node in the whole fleet (this gateway's live count plus the others' last
    /// heartbeats).
    pub fleet: u64,
    /// This gateway's WebSockets on it.
    pub own: u64,
    /// Takes part: a member in the READY operator state (a drained node keeps its WebSockets, as
    /// DRAIN promises, and counts for nothing).
    pub participant: bool,
    /// UP by its health checks (and not leaving).
    pub healthy: bool,
}

/// How even the fleet is.
#[derive(Debug, Clone, PartialEq)]
pub enum Assessment {
    /// Every participating node within the tolerance of the mean (or nothing to spread).
    Balanced,
    /// A participating node is not healthy: no rebalancing now.
    Paused(String),
    /// Uneven: what this gateway should close on each over-loaded node (its share of the excess).
    Uneven {
        /// WebSockets per participating node on average.
        mean: f64,
        /// This gateway's closes per over-loaded node.
        quotas: BTreeMap<String, u64>,
    },
}

/// Assess the nodes: balanced when every participating node is within `tolerance_pct` percent of
/// the mean (at least one WebSocket either way); else each node above the mean has an excess
/// (down to the mean), of which this gateway takes the part its own WebSockets there are of the
/// node's.
pub fn assess(nodes: &[NodeInput], tolerance_pct: u32) -> Assessment {
    let part: Vec<&NodeInput> = nodes.iter().filter(|n| n.participant).collect();
    if let Some(n) = part.iter().find(|n| !n.healthy) {
        return Assessment::Paused(format!("node {} is not healthy", n.name));
    }
    let total: u64 = part.iter().map(|n| n.fleet).sum();
    if part.len() < 2 || total == 0 {
        return Assessment::Balanced;
    }
    let mean = total as f64 / part.len() as f64;
    let band = (mean * f64::from(tolerance_pct) / 100.0).max(1.0);
    if part.iter().all(|n| (n.fleet as f64 - mean).abs() <= band) {
        return Assessment::Balanced;
    }
    let mut quotas = BTreeMap::new();
    for n in part.iter().filter(|n| n.fleet as f64 > mean) {
        let excess = (n.fleet as f64 - mean).floor();
        let share = (excess * n.own as f64 / n.fleet as f64).round() as u64;
        quotas.insert(n.name.clone(), share.min(n.own));
    }
    Assessment::Uneven { mean, quotas }
}

/// Settings of one tick.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `[fleet] rebalance_websockets`.
    pub enabled: bool,
    /// Most closes a second (this gateway).
    pub rate: u32,
    /// Percent from the mean that counts as balanced.
    pub tolerance: u32,
    /// Wait after a round's last close before looking again: the clients' reconnection delay and
    /// a few heartbeats.
    pub settle: Duration,
    /// How long the fleet must look uneven before a rebalancing starts: counts of other gateways
    /// are a heartbeat old, and a burst of connections is uneven for a moment.
    pub confirm: Duration,
}

/// What one tick sees.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Every node with its counts.
    pub nodes: &'a [NodeInput],
    /// The fleet's Redis answers (else the others' counts are unknown).
    pub connected: bool,
    /// The earliest start of the rebalancings the other gateways report (epoch ms).
    pub peers_since: Option<u64>,
    /// Monotonic now (pace, rounds).
    pub now: Instant,
    /// Wall-clock now, epoch ms (the start the fleet shares).
    pub now_ms: u64,
    /// In [0, 1): spreads the closes.
    pub jitter: f64,
}

/// Where a rebalancing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Idle,
    /// Closing this round's share, paced.
    Closing,
    /// Waiting for the clients to come back before looking again.
    Settling(Instant),
    /// Stopped for now (a node not healthy, Redis unreachable); resumes with the same start.
    Paused,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Closing => "closing",
            Phase::Settling(_) => "settling",
            Phase::Paused => "paused",
        }
    }
}

/// One gateway's rebalancing.
#[derive(Debug)]
pub struct Rebalancer {
    /// Where it stands.
    pub phase: Phase,
    /// Epoch ms when the current rebalancing began (tunnels opened later are never drawn); the
    /// earliest of the fleet's.
    pub since_ms: Option<u64>,
    /// Round of the current rebalancing (1-based).
    pub round: u32,
    /// Closes left in this round, per node.
    remaining: BTreeMap<String, u64>,
    /// Not before this, the next close (the pace, with jitter).
    next_close: Instant,
    /// WebSockets this gateway closed in the current rebalancing, and since start.
    pub moved: u64,
    /// WebSockets this gateway closed since start.
    pub moved_total: u64,
    /// How the last rebalancing ended.
    pub outcome: Option<String>,
    /// Why it is paused (or, idle, why it would not start).
    pub reason: Option<String>,
    /// After giving up: no new rebalancing before this.
    cooldown_until: Option<Instant>,
    /// Since when the fleet has looked uneven without interruption (idle only).
    uneven_since: Option<Instant>,
}

impl Rebalancer {
    pub fn new(now: Instant) -> Rebalancer {
        Rebalancer {
            phase: Phase::Idle,
            since_ms: None,
            round: 0,
            remaining: BTreeMap::new(),
            next_close: now,
            moved: 0,
            moved_total: 0,
            outcome: None,
            reason: None,
            cooldown_until: None,
            uneven_since: None,
        }
    }

    /// A rebalancing is under way (closing, settling or paused).
    pub fn active(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Closes left in this round, all nodes.
    pub fn left(&self) -> u64 {
        self.remaining.values().sum()
    }

    fn end(&mut self, outcome: String) {
        tracing::info!(outcome = %outcome, "fleet: rebalancing over");
        self.outcome = Some(outcome);
        self.phase = Phase::Idle;
        self.since_ms = None;
        self.round = 0;
        self.remaining.clear();
    }

    /// A draw on `node` closed nothing (no WebSocket opened before the rebalancing began left
    /// there): no more draws on it this round.
    pub fn exhausted(&mut self, node: &str) {
        self.remaining.remove(node);
    }

    /// A draw closed a WebSocket.
    pub fn moved_one(&mut self) {
        self.moved += 1;
        self.moved_total += 1;
    }

    /// One step: returns the node to draw one tunnel from now, if any. The jitter spreads the
    /// closes (clients come back a fixed delay after their close: closes sent together would come
    /// back together).
    pub fn tick(&mut self, s: &Settings, i: &Inputs<'_>) -> Option<String> {
        let Inputs { nodes, connected, peers_since, now, now_ms, jitter } = *i;
        if !s.enabled {
            if self.active() {
                self.end("turned off".into());
            }
            self.reason = None;
            return None;
        }
        if !connected {
            if self.active() {
                self.phase = Phase::Paused;
                self.remaining.clear();
            }
            self.reason = Some("Redis unreachable: the fleet's counts are unknown".into());
            return None;
        }
        let assessment = assess(nodes, s.tolerance);
        if !matches!(assessment, Assessment::Uneven { .. }) {
            self.uneven_since = None;
        }
        let quotas = match assessment {
            Assessment::Paused(r) => {
                if self.active() {
                    self.phase = Phase::Paused;
                    self.remaining.clear();
                }
                self.reason = Some(r);
                return None;
            }
            Assessment::Balanced => {
                if self.active() {
                    let (r, m) = (self.round, self.moved);
                    self.end(format!("balanced after {r} round(s), {m} WebSocket(s) moved by this gateway"));
                }
                self.reason = None;
                return None;
            }
            Assessment::Uneven { quotas, .. } => quotas,
        };
        self.reason = None;
        match self.phase {
            Phase::Idle => {
                if self.cooldown_until.is_some_and(|c| now < c) {
                    self.reason = Some("uneven, but the last rebalancing gave up: waiting".into());
                    return None;
                }
                self.cooldown_until = None;
                let since = *self.uneven_since.get_or_insert(now);
                if now.saturating_duration_since(since) < s.confirm && peers_since.is_none() {
                    self.reason = Some("uneven: confirming".into());
                    return None;
                }
                self.uneven_since = None;
                self.since_ms = Some(peers_since.map_or(now_ms, |p| p.min(now_ms)));
                self.round = 1;
                self.moved = 0;
                self.remaining = quotas;
                self.phase = Phase::Closing;
                self.next_close = now;
                tracing::info!(since_ms = ?self.since_ms, share = self.left(), "fleet: WebSockets uneven: rebalancing");
            }
            Phase::Paused => {
                self.round += 1;
                self.remaining = quotas;
                self.phase = Phase::Closing;
                self.next_close = now;
            }
            Phase::Settling(until) => {
                if now < until {
                    return None;
                }
                self.round += 1;
                if self.round > MAX_ROUNDS {
                    let m = self.moved;
                    self.end(format!("gave up after {MAX_ROUNDS} rounds ({m} WebSocket(s) moved by this gateway)"));
                    self.cooldown_until = Some(now + COOLDOWN);
                    return None;
                }
                self.remaining = quotas;
                self.phase = Phase::Closing;
                self.next_close = now;
            }
            Phase::Closing => {}
        }
        // The earliest start in the fleet: a client moved by any gateway is spared by all.
        if let (Some(mine), Some(p)) = (self.since_ms, peers_since) {
            self.since_ms = Some(mine.min(p));
        }
        self.remaining.retain(|_, n| *n > 0);
        let Some(node) =
            self.remaining.iter().max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(n, _)| n.clone())
        else {
            self.phase = Phase::Settling(now + s.settle);
            return None;
        };
        if now < self.next_close {
            return None;
        }
        if let Some(n) = self.remaining.get_mut(&node) {
            *n -= 1;
        }
        let gap = (0.5 + jitter.clamp(0.0, 1.0)) / f64::from(s.rate.max(1));
        self.next_close = now + Duration::from_secs_f64(gap);
        Some(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str, fleet: u64, own: u64) -> NodeInput {
        NodeInput { name: name.into(), fleet, own, participant: true, healthy: true }
    }

    #[test]
    fn a_new_node_makes_the_others_over_loaded_and_each_gateway_takes_its_share() {
        // 240 WebSockets on 3 nodes through 2 gateways (half each), a 4th node joins.
        let nodes = [n("a", 80, 40), n("b", 80, 40), n("c", 80, 40), n("d", 0, 0)];
        let Assessment::Uneven { mean, quotas } = assess(&nodes, 10) else { panic!("uneven") };
        assert_eq!(mean, 60.0);
        assert_eq!(quotas, [("a".to_string(), 10), ("b".to_string(), 10), ("c".to_string(), 10)].into());
        let even = [n("a", 60, 30), n("b", 58, 29), n("c", 63, 31), n("d", 59, 30)];
        assert_eq!(assess(&even, 10), Assessment::Balanced, "within 10 %");
        assert_eq!(assess(&[n("a", 2, 2), n("b", 1, 1)], 10), Assessment::Balanced, "one either way is even");
        let mut sick = nodes.clone();
        sick[3].healthy = false;
        assert_eq!(assess(&sick, 10), Assessment::Paused("node d is not healthy".into()));
        let mut drained = nodes.clone();
        drained[3].participant = false;
        drained[3].healthy = false;
        assert_eq!(assess(&drained, 10), Assessment::Balanced, "a drained node takes no part");
    }

    fn inp(
        nodes: &[NodeInput],
        connected: bool,
        peers_since: Option<u64>,
        now: Instant,
        now_ms: u64,
        jitter: f64,
    ) -> Inputs<'_> {
        Inputs { nodes, connected, peers_since, now, now_ms, jitter }
    }

    fn settings() -> Settings {
        Settings { enabled: true, rate: 10, tolerance: 10, settle: Duration::from_secs(2), confirm: Duration::ZERO }
    }

    #[test]
    fn a_moment_of_unevenness_starts_nothing() {
        let t0 = Instant::now();
        let mut r = Rebalancer::new(t0);
        let s = Settings { confirm: Duration::from_secs(1), ..settings() };
        let uneven = [n("a", 80, 40), n("b", 40, 20)];
        let even = [n("a", 60, 30), n("b", 60, 30)];
        assert_eq!(r.tick(&s, &inp(&uneven, true, None, t0, 1, 0.0)), None);
        assert_eq!(r.tick(&s, &inp(&even, true, None, t0 + Duration::from_millis(500), 1, 0.0)), None);
        assert_eq!(r.tick(&s, &inp(&uneven, true, None, t0 + Duration::from_millis(600), 1, 0.0)), None);
        assert_eq!(r.tick(&s, &inp(&uneven, true, None, t0 + Duration::from_millis(1500), 1, 0.0)), None);
        assert_eq!(r.phase, Phase::Idle, "uneven for 0.9 s only (the even look in between reset it)");
        assert!(r.tick(&s, &inp(&uneven, true, None, t0 + Duration::from_millis(1700), 1, 0.0)).is_some());
        let mut joined = Rebalancer::new(t0);
        assert!(
            joined.tick(&s, &inp(&uneven, true, Some(1), t0, 5, 0.0)).is_some(),
            "another gateway is rebalancing already: no need to confirm"
        );
    }

    #[test]
    fn closes_are_paced_with_jitter_then_the_round_settles() {
        let t0 = Instant::now();
        let mut r = Rebalancer::new(t0);
        let nodes = [n("a", 80, 40), n("b", 80, 40), n("c", 80, 40), n("d", 0, 0)];
        let s = settings();
        let mut draws = Vec::new();
        let mut now = t0;
        // 30 closes at 10 a second: about 3 s; ticks every 20 ms, bounded.
        for i in 0..400 {
            if let Some(node) = r.tick(&s, &inp(&nodes, true, None, now, 1_000, (i % 7) as f64 / 7.0)) {
                draws.push((now - t0, node));
                r.moved_one();
            }
            if matches!(r.phase, Phase::Settling(_)) {
                break;
            }
            now += Duration::from_millis(20);
        }
        assert_eq!(draws.len(), 30, "this gateway's share");
        assert_eq!(r.since_ms, Some(1_000));
        for w in draws.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(gap >= Duration::from_millis(40) && gap <= Duration::from_millis(160), "gap {gap:?}");
        }
        let per: BTreeMap<&str, usize> = draws.iter().fold(BTreeMap::new(), |mut m, (_, n)| {
            *m.entry(n.as_str()).or_default() += 1;
            m
        });
        assert_eq!(per, [("a", 10), ("b", 10), ("c", 10)].into());
        // Settled and even: over.
        let even = [n("a", 60, 30), n("b", 60, 30), n("c", 60, 30), n("d", 60, 30)];
        assert_eq!(r.tick(&s, &inp(&even, true, None, now + Duration::from_secs(3), 5_000, 0.5)), None);
        assert_eq!(r.phase, Phase::Idle);
        assert!(r.outcome.as_deref().is_some_and(|o| o.starts_with("balanced after 1 round")), "{:?}", r.outcome);
        assert_eq!(r.since_ms, None);
    }

    #[test]
    fn it_pauses_for_a_sick_node_or_no_redis_and_resumes_with_the_same_start() {
        let t0 = Instant::now();
        let mut r = Rebalancer::new(t0);
        let s = settings();
        let mut nodes = vec![n("a", 80, 80), n("b", 0, 0)];
        assert!(r.tick(&s, &inp(&nodes, true, Some(500), t0, 1_000, 0.0)).is_some());
        assert_eq!(r.since_ms, Some(500), "the fleet's earliest start");
        nodes[1].healthy = false;
        assert_eq!(r.tick(&s, &inp(&nodes, true, None, t0, 2_000, 0.0)), None);
        assert_eq!((r.phase, r.reason.as_deref()), (Phase::Paused, Some("node b is not healthy")));
        nodes[1].healthy = true;
        assert_eq!(r.tick(&s, &inp(&nodes, false, None, t0, 2_000, 0.0)), None, "no Redis: no counts");
        assert_eq!(r.phase, Phase::Paused);
        assert!(r.tick(&s, &inp(&nodes, true, None, t0 + Duration::from_secs(1), 3_000, 0.0)).is_some());
        assert_eq!(r.since_ms, Some(500), "resumed: the same start, so nobody moved is moved again");
        let off = Settings { enabled: false, ..s };
        assert_eq!(r.tick(&off, &inp(&nodes, true, None, t0, 3_000, 0.0)), None);
        assert_eq!(r.phase, Phase::Idle);
    }

    #[test]
    fn it_gives_up_after_max_rounds_then_cools_down() {
        let t0 = Instant::now();
        let mut r = Rebalancer::new(t0);
        let s = Settings { settle: Duration::from_millis(10), ..settings() };
        // Uneven, but this gateway holds nothing to close (another gateway's clients stay put).
        let nodes = [n("a", 80, 0), n("b", 0, 0)];
        let mut now = t0;
        for _ in 0..200 {
            assert_eq!(r.tick(&s, &inp(&nodes, true, None, now, 1, 0.0)), None);
            now += Duration::from_millis(20);
            if r.outcome.is_some() {
                break;
            }
        }
        assert!(r.outcome.as_deref().is_some_and(|o| o.starts_with("gave up")), "{:?}", r.outcome);
        assert_eq!(r.tick(&s, &inp(&nodes, true, None, now, 1, 0.0)), None);
        assert_eq!(r.phase, Phase::Idle, "cooling down");
        assert!(r.reason.is_some());
        r.tick(&s, &inp(&nodes, true, None, now + COOLDOWN, 1, 0.0));
        assert!(r.active() && r.round == 1, "tries again after the cool-down: {:?}", r.phase);
    }
}
