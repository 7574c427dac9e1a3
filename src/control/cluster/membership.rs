//! Control plane: the membership table. Turns checked Redis events (messages, discovery set, ID cards,
//! heartbeat expiry) into registry changes, which the caller applies as one batch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::message::{Candidate, Kind, Reject};
use crate::core::backend::Origin;
use crate::core::registry::{Change, DynamicNode};
use crate::core::snapshot::Snapshot;

/// How many departed nodes the status keeps showing as "gone".
const GONE_HISTORY: usize = 64;

/// One node learned from Redis.
#[derive(Debug, Clone)]
pub struct Member {
    /// Identity in Redis (`pub` address, discovery member or ID card key): the table's key.
    pub key: String,
    /// Node name (URL prefix); one member per name.
    pub name: String,
    /// HTTP address requests go to.
    pub addr: std::net::SocketAddr,
    /// Which source announced it (a source turned off takes its members away).
    pub origin: Origin,
    /// Said ready in Redis: shown on the status page only, traffic waits for a passing check.
    pub ready: bool,
    /// Last heartbeat / ready message (control-plane clock, for expiry).
    pub last_seen: Option<Instant>,
    /// The same as wall-clock epoch milliseconds, for the status page.
    pub last_seen_ms: Option<u64>,
    /// Heard on pub/sub: the heartbeat timeout applies. Otherwise (plugin 3.x member or ID card)
    /// its presence in Redis and health checks decide.
    pub heartbeats: bool,
    /// Epoch milliseconds of the join.
    pub joined_ms: u64,
    /// Has been UP since it joined (status shows "joining" before).
    pub up_seen: bool,
}

/// A member as a binary upgrade hands it to the new process (its clock readings stay behind: a
/// heartbeating member gets a full `heartbeat_timeout` from the new process's connection).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberState {
    /// Identity in Redis (`pub` address, discovery member or ID card key).
    pub key: String,
    /// Node name (URL prefix).
    pub name: String,
    /// HTTP address.
    pub addr: std::net::SocketAddr,
    /// Which source announced it.
    pub origin: Origin,
    /// Said ready in Redis (status page only).
    pub ready: bool,
    /// Heard on pub/sub: the heartbeat timeout applies.
    pub heartbeats: bool,
    /// Epoch milliseconds of the last heartbeat (status page).
    pub last_seen_ms: Option<u64>,
    /// Epoch milliseconds of the join.
    pub joined_ms: u64,
    /// Has been UP since it joined.
    pub up_seen: bool,
}

impl Member {
    /// What a binary upgrade hands over.
    pub fn export(&self) -> MemberState {
        MemberState {
            key: self.key.clone(),
            name: self.name.clone(),
            addr: self.addr,
            origin: self.origin,
            ready: self.ready,
            heartbeats: self.heartbeats,
            last_seen_ms: self.last_seen_ms,
            joined_ms: self.joined_ms,
            up_seen: self.up_seen,
        }
    }

    /// A member handed over by the old process.
    pub fn restore(s: MemberState) -> Member {
        Member {
            key: s.key,
            name: s.name,
            addr: s.addr,
            origin: s.origin,
            ready: s.ready,
            last_seen: None,
            last_seen_ms: s.last_seen_ms,
            heartbeats: s.heartbeats,
            joined_ms: s.joined_ms,
            up_seen: s.up_seen,
        }
    }
}

/// A node that left, for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Gone {
    /// Node name it had.
    pub name: String,
    /// HTTP address it had.
    pub address: String,
    /// Which source had announced it.
    pub origin: Origin,
    /// Why it left: "remove", "heartbeat timeout", "ID card expired", ...
    pub reason: &'static str,
    /// Epoch milliseconds.
    pub at: u64,
}

/// How many nodes Redis may add, and how fast (from `[cluster]`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `[cluster] max_nodes`: members beyond it are refused.
    max_nodes: usize,
    /// `[cluster] join_rate`: joins a second once the burst is spent.
    rate: u32,
    /// `[cluster] join_burst`: joins allowed at once.
    burst: u32,
}

/// Token bucket for joins: `burst` at once, then `rate` a second.
#[derive(Debug, Default)]
struct Bucket {
    /// Joins allowed now (refilled on each `take`).
    tokens: f64,
    /// When `tokens` was last refilled; None before the first join (a full burst).
    at: Option<Instant>,
}

impl Bucket {
    fn take(&mut self, l: Limits, now: Instant) -> bool {
        let burst = f64::from(l.burst.max(1));
        self.tokens = match self.at {
            None => burst,
            Some(at) => (self.tokens + now.saturating_duration_since(at).as_secs_f64() * f64::from(l.rate)).min(burst),
        };
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Nodes known from Redis, by identity (`pub` address or card key).
pub struct Table {
    /// Join and leave counters, shared with the metrics and status pages.
    pub metrics: Arc<super::ClusterMetrics>,
    /// Members by identity (`Member::key`).
    pub members: HashMap<String, Member>,
    /// Identities that left (remove, heartbeat timeout): a stale discovery member of theirs is
    /// not a rejoin; only a new message is.
    left: HashSet<String>,
    /// The last `GONE_HISTORY` departures, oldest first, for the status page.
    pub gone: VecDeque<Gone>,
    /// Caps on joins from `[cluster]` (`set_limits`).
    limits: Limits,
    /// Paces new joins at `limits.rate`, `limits.burst` at once.
    joins: Bucket,
    /// The gateway's own listeners: a node announced there would make a loop.
    own: super::OwnAddrs,
    /// Joins refused since the caller last took them (it counts and logs them).
    pub refused: Vec<Reject>,
}

impl Table {
    pub fn new(metrics: Arc<super::ClusterMetrics>) -> Table {
        let d = crate::control::config::ClusterSection::default();
        Table {
            metrics,
            members: HashMap::new(),
            left: HashSet::new(),
            gone: VecDeque::new(),
            limits: Limits { max_nodes: d.max_nodes, rate: d.join_rate, burst: d.join_burst },
            joins: Bucket::default(),
            own: Arc::new(Vec::new),
            refused: Vec::new(),
        }
    }

    /// The gateway's listener addresses, for refusing nodes announced at the gateway itself.
    pub fn with_own(mut self, own: super::OwnAddrs) -> Table {
        self.own = own;
        self
    }

    /// `[cluster] max_nodes`, `join_rate`, `join_burst` (members beyond a lowered cap stay until
    /// they leave; only new joins are refused).
    pub fn set_limits(&mut self, max_nodes: usize, rate: u32, burst: u32) {
        self.limits = Limits { max_nodes, rate, burst };
    }

    /// Why a new member must be refused, if it must: at the gateway's own address, over the cap
    /// (`replacing` members go away with it), or over the join rate.
    fn refuse_join(&mut self, addr: std::net::SocketAddr, replacing: usize, now: Instant) -> Option<Reject> {
        if is_own(addr, &(self.own)()) {
            return Some(Reject::OwnAddress(addr));
        }
        if self.members.len().saturating_sub(replacing) >= self.limits.max_nodes {
            return Some(Reject::MaxNodes(self.limits.max_nodes));
        }
        if !self.joins.take(self.limits, now) {
            return Some(Reject::JoinRate(self.limits.rate));
        }
        None
    }

    /// Members handed over by the old process on a binary upgrade (the registry got the same
    /// nodes): Redis confirms them as it is read, and what it no longer has leaves as usual.
    pub fn restore(&mut self, members: Vec<MemberState>) {
        for m in members {
            self.members.insert(m.key.clone(), Member::restore(m));
        }
    }

    /// A membership source was turned off (or `[cluster]` removed): its nodes leave.
    pub fn drop_origin(&mut self, out: &mut Vec<Change>, origin: Origin) {
        let keys: Vec<String> = self.members.values().filter(|m| m.origin == origin).map(|m| m.key.clone()).collect();
        for k in keys {
            if let Some(m) = self.members.remove(&k) {
                self.leave(out, m, "membership source turned off");
            }
        }
    }

    /// Note nodes that passed a health check since they joined (status: "joining" until then).
    pub fn note_up(&mut self, snap: &Snapshot) {
        for m in self.members.values_mut().filter(|m| !m.up_seen) {
            m.up_seen = snap.node(&m.name).is_some_and(|b| b.health.is_up());
        }
    }
    /// A ready / heartbeat / remove message.
    pub fn on_message(&mut self, out: &mut Vec<Change>, kind: Kind, c: Candidate, now: Instant) {
        if kind == Kind::Remove {
            if let Some(m) = self.members.remove(&c.key) {
                self.leave(out, m, "remove");
                self.remember_left(c.key);
            }
            return;
        }
        self.left.remove(&c.key);
        self.join_or_update(out, c, Origin::Plugin, true, now);
    }

    /// The full `cluster:discovery` set (already parsed; bad members dropped). `may_remove` is
    /// false right after a (re)connection, when Redis may have lost its data and nodes have not
    /// re-registered yet.
    pub fn on_discovery(&mut self, out: &mut Vec<Change>, set: Vec<Candidate>, may_remove: bool, now: Instant) {
        let keys: HashSet<String> = set.iter().map(|c| c.key.clone()).collect();
        // Forget departures whose member is gone too: keeps `left` bounded.
        self.left.retain(|k| keys.contains(k));
        for c in set {
            if self.left.contains(&c.key) {
                continue;
            }
            match self.members.get(&c.key) {
                // Heartbeating nodes are governed by their messages.
                Some(m) if m.heartbeats => {}
                _ => self.join_or_update(out, c, Origin::Plugin, false, now),
            }
        }
        if may_remove {
            let stale: Vec<String> = self
                .members
                .values()
                .filter(|m| m.origin == Origin::Plugin && !m.heartbeats && !keys.contains(&m.key))
                .map(|m| m.key.clone())
                .collect();
            for k in stale {
                if let Some(m) = self.members.remove(&k) {
                    self.leave(out, m, "discovery member removed");
                }
            }
        }
    }

    /// Every live Kuzzle 2 ID card (parsed); a card absent from `cards` has expired.
    pub fn on_cards(&mut self, out: &mut Vec<Change>, cards: Vec<Candidate>, may_remove: bool, now: Instant) {
        let keys: HashSet<String> = cards.iter().map(|c| c.key.clone()).collect();
        for c in cards {
            self.join_or_update(out, c, Origin::Kuzzle2, false, now);
        }
        if may_remove {
            let stale: Vec<String> = self
                .members
                .values()
                .filter(|m| m.origin == Origin::Kuzzle2 && !keys.contains(&m.key))
                .map(|m| m.key.clone())
                .collect();
            for k in stale {
                if let Some(m) = self.members.remove(&k) {
                    self.leave(out, m, "ID card expired");
                }
            }
        }
    }

    /// Drop heartbeating nodes silent for `timeout`. `since` is when the subscription last
    /// became healthy: silence while Redis was unreachable is not the node's fault.
    pub fn expire(&mut self, out: &mut Vec<Change>, timeout: Duration, since: Instant, now: Instant) {
        let dead: Vec<String> = self
            .members
            .values()
            .filter(|m| m.heartbeats)
            .filter(|m| {
                let last = m.last_seen.map_or(since, |l| l.max(since));
                now.saturating_duration_since(last) >= timeout
            })
            .map(|m| m.key.clone())
            .collect();
        for k in dead {
            if let Some(m) = self.members.remove(&k) {
                self.remember_left(k);
                self.leave(out, m, "heartbeat timeout");
            }
        }
    }

    fn join_or_update(&mut self, out: &mut Vec<Change>, c: Candidate, origin: Origin, message: bool, now: Instant) {
        // One name, one member: a node that restarts with a new identity but the same name
        // replaces its old record (the registry keeps the name's counters).
        let clash: Vec<String> =
            self.members.values().filter(|m| m.name == c.name && m.key != c.key).map(|m| m.key.clone()).collect();
        // Refreshes of known members are never limited; new identities and address changes are
        // judged before anything changes.
        let refusal = match self.members.get(&c.key) {
            None => self.refuse_join(c.addr, clash.len(), now),
            Some(m) if m.addr != c.addr && is_own(c.addr, &(self.own)()) => Some(Reject::OwnAddress(c.addr)),
            Some(_) => None,
        };
        if let Some(r) = refusal {
            self.refused.push(r);
            return;
        }
        for k in clash {
            self.members.remove(&k);
        }
        let ready_now = c.ready == Some(true);
        match self.members.get_mut(&c.key) {
            Some(m) => {
                if message {
                    m.last_seen = Some(now);
                    m.last_seen_ms = Some(crate::util::epoch_ms());
                    m.heartbeats = true;
                }
                // Ready is only shown on the status page: traffic waits for the node's own
                // passing check, so it changes nothing in the registry.
                m.ready = m.ready || ready_now;
                let renamed = m.name != c.name;
                if renamed {
                    out.push(Change::Remove(m.name.clone()));
                }
                if renamed || m.addr != c.addr {
                    m.name = c.name.clone();
                    m.addr = c.addr;
                    out.push(Change::Upsert(DynamicNode { name: c.name.clone(), addr: c.addr, origin }));
                }
            }
            None => {
                tracing::info!(node = %c.name, addr = %c.addr, ?origin, ready = ready_now, "cluster: node joined");
                self.metrics.joins.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.gone.retain(|g| g.name != c.name);
                out.push(Change::Upsert(DynamicNode { name: c.name.clone(), addr: c.addr, origin }));
                self.members.insert(
                    c.key.clone(),
                    Member {
                        key: c.key,
                        name: c.name,
                        addr: c.addr,
                        origin,
                        ready: ready_now,
                        last_seen: message.then_some(now),
                        last_seen_ms: message.then(crate::util::epoch_ms),
                        heartbeats: message,
                        joined_ms: crate::util::epoch_ms(),
                        up_seen: false,
                    },
                );
            }
        }
    }

    fn remember_left(&mut self, key: String) {
        // Bounded even when the discovery set (which prunes it) is not read.
        if self.left.len() >= 4096 {
            self.left.clear();
        }
        self.left.insert(key);
    }

    fn leave(&mut self, out: &mut Vec<Change>, m: Member, reason: &'static str) {
        tracing::info!(node = %m.name, addr = %m.addr, reason, "cluster: node left (draining)");
        self.metrics.leaves.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        out.push(Change::Remove(m.name.clone()));
        self.gone.retain(|g| g.name != m.name);
        self.gone.push_back(Gone {
            name: m.name,
            address: m.addr.to_string(),
            origin: m.origin,
            reason,
            at: crate::util::epoch_ms(),
        });
        while self.gone.len() > GONE_HISTORY {
            self.gone.pop_front();
        }
    }
}

/// True when `addr` reaches one of the gateway's `listeners`: the same address, or the port of a
/// wildcard listener (0.0.0.0, ::) on an address of this host.
pub fn is_own(addr: std::net::SocketAddr, listeners: &[std::net::SocketAddr]) -> bool {
    listeners.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip() == addr.ip() || addr.ip().is_unspecified() || (l.ip().is_unspecified() && is_local(addr.ip())))
    })
}

/// An address of this host: loopback, or one a socket can be bound to (no interface listing
/// needed; only asked for a join at a wildcard listener's port).
fn is_local(ip: std::net::IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use crate::core::backend::Membership;
    use crate::core::registry::Registry;

    fn cand(key: &str, name: &str, port: u16, ready: Option<bool>) -> Candidate {
        Candidate { key: key.into(), name: name.into(), addr: ([127, 0, 0, 1], port).into(), ready }
    }

    /// The table's changes applied to a registry, as the membership task does (no gateway).
    struct Net {
        /// The registry the changes go to.
        reg: Registry,
        /// Its latest snapshot.
        snap: Snapshot,
        /// Changes made by the table, not applied yet (`flush`).
        out: Vec<Change>,
    }

    impl Net {
        fn flush(&mut self) {
            if let Some(s) = self.reg.apply(self.out.drain(..), 0).snapshot {
                self.snap = s;
            }
        }
    }

    fn setup() -> (Net, Table) {
        let mut reg = Registry::new(Arc::new(Config::default()), 1);
        let snap = reg.apply([], 0).snapshot.expect("first snapshot");
        (Net { reg, snap, out: Vec::new() }, Table::new(Arc::default()))
    }

    fn eligible(n: &Net, name: &str) -> Option<bool> {
        n.snap.node(name).map(|b| b.eligible())
    }

    fn dynamic_names(n: &Net, origin: Origin) -> Vec<String> {
        n.snap
            .nodes
            .iter()
            .filter(|b| b.origin == origin && b.membership() == Membership::Active)
            .map(|b| b.name.clone())
            .collect()
    }

    /// What the node's checker does when its first check passes.
    fn pass_check(n: &Net, name: &str) {
        n.snap.node(name).expect("node").health.set_up(true);
    }

    #[test]
    fn ready_waits_for_a_check_and_remove_drains() {
        let (mut net, mut t) = setup();
        let now = Instant::now();
        t.on_message(&mut net.out, Kind::Heartbeat, cand("p1", "a", 1, Some(false)), now);
        net.flush();
        assert_eq!(eligible(&net, "a"), Some(false), "not ready: waits for a health check");
        t.on_message(&mut net.out, Kind::Ready, cand("p1", "a", 1, Some(true)), now);
        net.flush();
        assert_eq!(eligible(&net, "a"), Some(false), "ready in Redis is not a passing check");
        assert!(t.members["p1"].ready, "ready is still shown");
        pass_check(&net, "a");
        assert_eq!(eligible(&net, "a"), Some(true), "its first passing check lets it in");
        t.on_message(&mut net.out, Kind::Remove, cand("p1", "a", 1, None), now);
        net.flush();
        assert_eq!(net.snap.node("a").map(|b| b.membership()), Some(Membership::Draining));
        assert_eq!(t.gone.back().map(|g| g.reason), Some("remove"));
        assert_eq!(t.metrics.joins.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(t.metrics.leaves.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn heartbeat_timeout_counts_from_the_last_healthy_subscription() {
        let (mut net, mut t) = setup();
        let t0 = Instant::now();
        t.on_message(&mut net.out, Kind::Ready, cand("p1", "a", 1, Some(true)), t0);
        net.flush();
        pass_check(&net, "a");
        let timeout = Duration::from_secs(10);
        // Redis was down and came back at t0+9s: the node gets a full timeout from there.
        t.expire(&mut net.out, timeout, t0 + Duration::from_secs(9), t0 + Duration::from_secs(15));
        net.flush();
        assert_eq!(eligible(&net, "a"), Some(true));
        t.expire(&mut net.out, timeout, t0 + Duration::from_secs(9), t0 + Duration::from_secs(19));
        net.flush();
        assert_eq!(eligible(&net, "a"), Some(false));
        // Its stale discovery member is not a rejoin; a new message is.
        t.on_discovery(&mut net.out, vec![cand("p1", "a", 1, None)], true, t0 + Duration::from_secs(20));
        net.flush();
        assert!(!t.members.contains_key("p1"));
        t.on_message(&mut net.out, Kind::Heartbeat, cand("p1", "a", 1, Some(true)), t0 + Duration::from_secs(21));
        net.flush();
        assert!(t.members.contains_key("p1"), "a new message is a rejoin");
    }

    #[test]
    fn joins_are_capped_and_rate_limited_refreshes_are_not() {
        let (mut net, mut t) = setup();
        t.set_limits(5, 2, 3);
        let t0 = Instant::now();
        for i in 0..10u16 {
            t.on_message(&mut net.out, Kind::Ready, cand(&format!("p{i}"), &format!("n{i}"), 100 + i, Some(true)), t0);
        }
        net.flush();
        assert_eq!(t.members.len(), 3, "a burst of 3");
        let labels = |t: &mut Table| std::mem::take(&mut t.refused).iter().map(|r| r.label()).collect::<Vec<_>>();
        assert_eq!(labels(&mut t), vec!["join_rate"; 7]);
        // Known members heartbeat as often as they like.
        for _ in 0..100 {
            t.on_message(&mut net.out, Kind::Heartbeat, cand("p0", "n0", 100, Some(true)), t0);
        }
        assert!(t.refused.is_empty(), "refreshes are never limited");
        // Two tokens a second: after 10 s the bucket is full again, but the cap is 5.
        let t1 = t0 + Duration::from_secs(10);
        for i in 10..20u16 {
            t.on_message(&mut net.out, Kind::Ready, cand(&format!("p{i}"), &format!("n{i}"), 100 + i, Some(true)), t1);
        }
        net.flush();
        assert_eq!(t.members.len(), 5);
        let l = labels(&mut t);
        assert_eq!(l, vec!["max_nodes"; 8], "the cap is judged first");
        assert_eq!(dynamic_names(&net, Origin::Plugin).len(), 5);
    }

    #[test]
    fn a_node_at_the_gateways_own_address_is_refused() {
        let (mut net, t) = setup();
        let own: crate::control::cluster::OwnAddrs =
            Arc::new(|| vec!["127.0.0.1:7512".parse().expect("addr"), "0.0.0.0:7575".parse().expect("addr")]);
        let mut t = t.with_own(own);
        let now = Instant::now();
        t.on_message(&mut net.out, Kind::Ready, cand("p1", "me", 7512, Some(true)), now);
        t.on_message(&mut net.out, Kind::Ready, cand("p2", "ops", 7575, Some(true)), now);
        t.on_message(&mut net.out, Kind::Ready, cand("p3", "other", 7513, Some(true)), now);
        // A known member cannot move onto the gateway either.
        t.on_message(&mut net.out, Kind::Ready, cand("p3", "other", 7512, Some(true)), now);
        net.flush();
        assert_eq!(t.refused.iter().map(|r| r.label()).collect::<Vec<_>>(), vec!["self"; 3]);
        assert_eq!(dynamic_names(&net, Origin::Plugin), vec!["other".to_string()]);
        assert_eq!(net.snap.node("other").map(|b| b.addr.port()), Some(7513));
        assert!(is_own("127.0.0.9:7575".parse().expect("addr"), &(t.own)()), "wildcard: any local address");
        assert!(!is_own("127.0.0.9:7512".parse().expect("addr"), &(t.own)()), "another address, same port");
    }

    #[test]
    fn discovery_and_cards_leave_only_outside_the_grace() {
        let (mut net, mut t) = setup();
        let now = Instant::now();
        t.on_discovery(&mut net.out, vec![cand("tcp://10.0.0.5:7511", "10_0_0_5", 7512, None)], true, now);
        net.flush();
        t.on_cards(&mut net.out, vec![cand("{cluster/node}/k1", "k1", 2, None)], true, now);
        net.flush();
        assert_eq!(dynamic_names(&net, Origin::Plugin), vec!["10_0_0_5".to_string()]);
        assert_eq!(dynamic_names(&net, Origin::Kuzzle2), vec!["k1".to_string()]);
        // Empty Redis right after a reconnection: nobody leaves yet.
        t.on_discovery(&mut net.out, vec![], false, now);
        net.flush();
        t.on_cards(&mut net.out, vec![], false, now);
        net.flush();
        assert_eq!(t.members.len(), 2);
        t.on_discovery(&mut net.out, vec![], true, now);
        net.flush();
        t.on_cards(&mut net.out, vec![], true, now);
        net.flush();
        assert!(t.members.is_empty());
        assert!(dynamic_names(&net, Origin::Plugin).is_empty() && dynamic_names(&net, Origin::Kuzzle2).is_empty());
    }

    #[test]
    fn handed_over_members_are_confirmed_by_redis_or_leave() {
        let (mut old_net, mut old) = setup();
        let now = Instant::now();
        old.on_cards(&mut old_net.out, vec![cand("{cluster/node}/k1", "k1", 2, None)], true, now);
        old.on_message(&mut old_net.out, Kind::Ready, cand("p1", "a", 1, Some(true)), now);
        old_net.flush();
        let mut handed: Vec<MemberState> = old.members.values().map(Member::export).collect();
        handed.sort_by(|a, b| a.key.cmp(&b.key));
        let json = serde_json::to_string(&handed).expect("json");

        let (mut net, mut t) = setup();
        t.restore(serde_json::from_str(&json).expect("back"));
        assert_eq!(t.members.len(), 2);
        // The same card again: no join, no change for the registry.
        t.on_cards(&mut net.out, vec![cand("{cluster/node}/k1", "k1", 2, None)], true, now);
        assert!(net.out.is_empty(), "a confirmed member changes nothing: {:?}", net.out);
        assert_eq!(t.metrics.joins.load(std::sync::atomic::Ordering::Relaxed), 0);
        // The heartbeating member gets a full timeout from the new connection, then leaves.
        let since = now + Duration::from_secs(1);
        t.expire(&mut net.out, Duration::from_secs(10), since, now + Duration::from_secs(10));
        assert!(t.members.contains_key("p1"));
        t.expire(&mut net.out, Duration::from_secs(10), since, now + Duration::from_secs(11));
        assert!(!t.members.contains_key("p1"));
        assert!(matches!(net.out.as_slice(), [Change::Remove(n)] if n == "a"), "{:?}", net.out);
    }

    #[test]
    fn same_name_new_identity_replaces_and_keeps_counters() {
        let (mut net, mut t) = setup();
        let now = Instant::now();
        t.on_message(&mut net.out, Kind::Ready, cand("p1", "a", 1, Some(true)), now);
        net.flush();
        let b1 = net.snap.node("a").cloned().expect("a");
        b1.counters.bytes_in.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        t.on_message(&mut net.out, Kind::Ready, cand("p2", "a", 2, Some(true)), now);
        net.flush();
        assert_eq!(t.members.len(), 1);
        let b2 = net.snap.node("a").cloned().expect("a");
        assert_eq!(b2.addr.port(), 2);
        assert_eq!(b2.counters.bytes_in.load(std::sync::atomic::Ordering::Relaxed), 5);
        t.drop_origin(&mut net.out, Origin::Plugin);
        net.flush();
        assert!(dynamic_names(&net, Origin::Plugin).is_empty());
    }
}
