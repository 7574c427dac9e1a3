//! Data plane: choosing a node among the eligible ones (leastconn, roundrobin, source hash).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Algorithm;
use crate::core::backend::Backend;

/// Pick a node for a new request or tunnel. `skip` holds nodes already tried for this request.
/// Returns None when no eligible node remains.
pub fn pick(
    algorithm: Algorithm,
    nodes: &[Arc<Backend>],
    cursor: &AtomicUsize,
    client_ip: IpAddr,
    skip: &[usize],
) -> Option<usize> {
    let n = nodes.len();
    if n == 0 {
        return None;
    }
    let usable = |i: usize| nodes[i].eligible() && !skip.contains(&i);
    match algorithm {
        Algorithm::Roundrobin => {
            let start = cursor.fetch_add(1, Ordering::Relaxed);
            (0..n).map(|k| start.wrapping_add(k) % n).find(|&i| usable(i))
        }
        Algorithm::Leastconn => {
            // Rotate the scan start so that ties spread instead of piling on the first node.
            let start = cursor.fetch_add(1, Ordering::Relaxed);
            let mut best: Option<(usize, u64)> = None;
            for k in 0..n {
                let i = start.wrapping_add(k) % n;
                if !usable(i) {
                    continue;
                }
                // Fleet-wide: the other gateways' tunnels count too (`[fleet]`, else 0).
                let a = nodes[i].load();
                if best.is_none_or(|(_, b)| a < b) {
                    best = Some((i, a));
                }
            }
            best.map(|(i, _)| i)
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
    use crate::core::backend::Origin;
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
                ))
            })
            .collect()
    }

    #[test]
    fn roundrobin_cycles_and_skips_down() {
        let ns = nodes(3);
        let c = AtomicUsize::new(0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let got: Vec<_> = (0..6).filter_map(|_| pick(Algorithm::Roundrobin, &ns, &c, ip, &[])).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2]);
        ns[1].health.set_up(false);
        let got: Vec<_> = (0..4).filter_map(|_| pick(Algorithm::Roundrobin, &ns, &c, ip, &[])).collect();
        assert!(!got.contains(&1) && got.len() == 4);
    }

    #[test]
    fn leastconn_prefers_idle_node() {
        let ns = nodes(3);
        let c = AtomicUsize::new(0);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let _g0 = ns[0].track();
        let _g2 = ns[2].track();
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[]), Some(1));
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[1]).map(|i| i != 1), Some(true));
        for n in &ns {
            n.health.set_up(false);
        }
        assert_eq!(pick(Algorithm::Leastconn, &ns, &c, ip, &[]), None);
    }

    #[test]
    fn source_is_stable_and_moves_only_lost_clients() {
        let ns = nodes(4);
        let c = AtomicUsize::new(0);
        let ips: Vec<IpAddr> = (0..200u32).map(|i| IpAddr::from((0x7f00_0000u32 + i).to_be_bytes())).collect();
        let before: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[])).collect();
        let again: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[])).collect();
        assert_eq!(before, again);
        ns[2].health.set_up(false);
        let after: Vec<_> = ips.iter().map(|&ip| pick(Algorithm::Source, &ns, &c, ip, &[])).collect();
        for (b, a) in before.iter().zip(&after) {
            if *b != Some(2) {
                assert_eq!(b, a, "a client of a surviving node moved");
            }
        }
        let spread: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(spread.len(), 4, "200 clients should reach all 4 nodes");
    }
}
