//! Data plane: choosing a node among the eligible ones (leastconn, roundrobin, source hash), with
//! slow start: a node that came UP less than `[health] slowstart` ago weighs less (see [`Ramp`]).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::control::config::Algorithm;
use crate::core::backend::{Backend, FULL_WEIGHT};

/// Nodes that join and come UP within this long of the gateway's start are its initial membership
/// (from Redis, found and checked in its first seconds): running nodes, no slow start. A node
/// coming back UP after being DOWN ramps whenever it happens.
pub const START_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Slow start as one pick sees it, in epoch milliseconds: the ramp's length (0: off, and then
/// nothing else is read), now, and the time before which a node's coming UP is no cold start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ramp {
    /// `[health] slowstart` (0: off).
    pub slowstart_ms: u64,
    /// Now, read once per pick.
    pub now_ms: u64,
    /// The end of the gateway's first seconds: a node whose first UP came before is no cold start.
    pub from_ms: u64,
}

impl Ramp {
    /// The ramp of `[health] slowstart` now, for a gateway started at `started` (reads the clock
    /// only when slow start is on).
    pub fn now(slowstart: std::time::Duration, started: std::time::SystemTime) -> Ramp {
        let slowstart_ms = slowstart.as_millis() as u64;
        if slowstart_ms == 0 {
            return Ramp::default();
        }
        let since = started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default() + START_GRACE;
        Ramp { slowstart_ms, now_ms: crate::util::epoch_ms(), from_ms: since.as_millis() as u64 }
    }
}

/// Does a node of weight `w` (percent) stay a candidate for the pick numbered `draw`? A full node
/// always; a node in slow start for `w` picks in a hundred, spread evenly (a hash of the pick's
/// number and the node's place, no random number generator).
#[inline]
fn admitted(w: u32, draw: usize, i: usize) -> bool {
    if w >= FULL_WEIGHT {
        return true;
    }
    let h = (draw as u64 ^ (i as u64).rotate_left(32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 40) % u64::from(FULL_WEIGHT)) < u64::from(w)
}

/// Pick a node for a new request or tunnel. `skip` holds nodes already tried for this request.
/// Returns None when no eligible node remains. With slow start, a node of weight `w` (percent)
/// is a candidate for `w` picks in a hundred (roundrobin and leastconn alike), and leastconn
/// compares its open requests as if it had `100 / w` times more (haproxy's weighted leastconn);
/// `source` ignores weights (a client's node must not depend on the time).
pub fn pick(
    algorithm: Algorithm,
    nodes: &[Arc<Backend>],
    cursor: &AtomicUsize,
    client_ip: IpAddr,
    skip: &[usize],
    ramp: Ramp,
) -> Option<usize> {
    let n = nodes.len();
    if n == 0 {
        return None;
    }
    let usable = |i: usize| nodes[i].eligible() && !skip.contains(&i);
    let weight = |i: usize| nodes[i].weight(ramp.slowstart_ms, ramp.now_ms, ramp.from_ms);
    match algorithm {
        Algorithm::Roundrobin => {
            let start = cursor.fetch_add(1, Ordering::Relaxed);
            let found = (0..n).map(|k| start.wrapping_add(k) % n).find(|&i| usable(i) && admitted(weight(i), start, i));
            // Every usable node in slow start and none admitted: the first usable one still serves.
            found.or_else(|| (0..n).map(|k| start.wrapping_add(k) % n).find(|&i| usable(i)))
        }
        Algorithm::Leastconn => {
            // Rotate the scan start so that ties spread instead of piling on the first node.
            let start = cursor.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(usize, u64)> = None;
            let mut fallback: Option<usize> = None;
            for k in 0..n {
                let i = start.wrapping_add(k) % n;
                if !usable(i) {
                    continue;
                }
                fallback.get_or_insert(i);
                let w = weight(i);
                if !admitted(w, start, i) {
                    continue;
                }
                // Fleet-wide: the other gateways' tunnels count too (`[fleet]`, else 0).
                let a = nodes[i].load() * u64::from(FULL_WEIGHT) / u64::from(w.max(1));
                if best.is_none_or(|(_, b)| a < b) {
                    best = Some((i, a));
                }
            }
            best.map(|(i, _)| i).or(fallback)
        }
        Algorithm::Source => {
            // Rendezvous hashing: adding or removing a node only moves the clients it wins or won.
            let mut best: Option<(usize, u64)> = None;
            for i in (0..n).filter(|&i| usable(i)) {
                let score = hrw(client_ip, &nodes[i].name);
                if best.is_none_or(|(_, b)| score > b) {
                    best = Some((i, score));
                }
            }
            best.map(|(i, _)| i)
        }
    }
}

fn hrw(ip: IpAddr, name: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ip.hash(&mut h);
    name.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::backend::{ramp, Origin};
    use crate::core::counters::NodeCounters;

    fn nodes(k: usize) -> Vec<Arc<Backend>> {
        (0..k)
            .map(|i| {
                Arc::new(Backend::new(
                    format!("n{i}"),
                    format!("127.0.0.1:{}", 1000 + i).parse().expect("addr"),
                    Origin::Static,
                    Arc::new(NodeCounters::default()),
                    true,
                    1,
                ))
            })
            .collect()
    }

    #[test]
    fn roundrobin_cycles_and_skips_down() {
        let ns = nodes(3);
        let c = AtomicUsize::new(0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let got: Vec<_> =
            (0..6).filter_map(|_| pick(Algorithm::Roundrobin, &ns, &c, ip, &[], Ramp::default())).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        ns[1].health.set_up(false);
        let got: Vec<_> =
            (0..4).filter_map(|_| pick(Algorithm::Roundrobin, &ns, &c, ip, &[], Ramp::default())).collect();
        assert!(!got.contains(&1) && got.len() == 4);
    }

    #[test]
    fn leastconn_prefers_idle_node() {
        let ns = nodes(3);
        let c = AtomicUsize::new(0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let _g0 = ns[0].track();
        let _g2 = ns[2].track();
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[], Ramp::default()), Some(1));
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[1], Ramp::default()).map(|i| i != 1), Some(true));
        for n in &ns {
            n.health.set_up(false);
        }
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[], Ramp::default()), None);
    }

    /// Picks per node over `picks` picks, node 2 `elapsed` into a ramp of 10 s.
    fn shares(algorithm: Algorithm, elapsed_ms: u64, picks: usize) -> Vec<usize> {
        let ns = nodes(3);
        ns[2].health.set_up(false);
        ns[2].health.set_up(true);
        let up_at = ns[2].health.came_up().expect("came up").0;
        let ramp = Ramp { slowstart_ms: 10_000, now_ms: up_at + elapsed_ms, from_ms: 0 };
        let c = AtomicUsize::new(0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let mut got = vec![0; 3];
        for _ in 0..picks {
            if let Some(i) = pick(algorithm, &ns, &c, ip, &[], ramp) {
                got[i] += 1;
            }
        }
        got
    }

    #[test]
    fn slow_start_ramps_a_node_up_for_roundrobin_and_leastconn() {
        // Node 2 gets its third of the picks times its weight: 1 %, 25 %, 50 %, 100 %.
        for algorithm in [Algorithm::Roundrobin, Algorithm::Leastconn] {
            let mut last = 0;
            for (elapsed, lo, hi) in [(0, 0, 80), (2_500, 650, 1_000), (5_000, 1_450, 1_850), (10_000, 3_200, 3_500)] {
                let got = shares(algorithm, elapsed, 10_000);
                let mine = got[2];
                assert!((lo..=hi).contains(&mine), "{algorithm:?} at {elapsed} ms: {got:?}");
                assert!(mine >= last, "{algorithm:?}: the share grows ({last} then {mine})");
                last = mine;
            }
        }
        // The ramp, and a node UP since start-up has none.
        assert_eq!((ramp(0, 10_000), ramp(5_000, 10_000), ramp(10_000, 10_000)), (1, 50, 100));
        let n = &nodes(1)[0];
        let now = crate::util::epoch_ms();
        assert_eq!(n.weight(10_000, now, 0), 100, "UP since start-up");
        n.health.set_up(false);
        n.health.set_up(true);
        assert!(n.weight(10_000, now + 5_000, 0) < 100, "came back UP: ramps");
        assert!(n.weight(10_000, now + 5_000, now + 60_000) < 100, "back UP in the gateway's first seconds: ramps");
        let joined = Backend::new(
            "j".into(),
            "127.0.0.1:1".parse().expect("addr"),
            Origin::Plugin,
            Default::default(),
            false,
            1,
        );
        joined.health.set_up(true);
        assert_eq!(
            joined.weight(10_000, now + 5_000, now + 60_000),
            100,
            "joined in the gateway's first seconds: no ramp"
        );
        assert!(joined.weight(10_000, now + 5_000, 0) < 100, "joined later: ramps");
        n.set_admin(crate::core::backend::AdminState::Drain);
        assert_eq!(n.weight(10_000, now, 0), 0);
    }

    #[test]
    fn source_is_stable_and_moves_only_lost_clients() {
        let ns = nodes(4);
        let c = AtomicUsize::new(0);
        let ips: Vec<IpAddr> = (0..200u32).map(|i| IpAddr::from((0x7f00_0000u32 + i).to_be_bytes())).collect();
        let before: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[], Ramp::default())).collect();
        let again: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[], Ramp::default())).collect();
        assert_eq!(before, again);
        ns[2].health.set_up(false);
        let after: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[], Ramp::default())).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(2) {
                assert_eq!(b, a, "a client of a surviving node moved");
            }
        }
        let spread: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(spread.len(), 4, "200 clients should reach all 4 nodes");
    }
}
