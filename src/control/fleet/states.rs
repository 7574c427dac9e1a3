//! Control plane: the fleet's operator states as this gateway knows them, and how they meet
//! Redis again (pure: no I/O, time passed in). Redis orders changes (a sequence number per
//! change); a gateway that could not reach Redis keeps what it knew, and when Redis answers again
//! either puts back what Redis lost or takes what changed meanwhile, newest change first.

use std::collections::BTreeMap;

use super::wire::StateRecord;
use crate::core::backend::AdminState;

/// A state this gateway applied, and when (epoch ms, its own clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The record (seq 0 while a change taken here is not confirmed by Redis).
    pub record: StateRecord,
    /// When this gateway applied it (shown, and what the latency figures measure).
    pub applied_ms: u64,
}

/// What to do after reading the states hash.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// States to apply to the nodes (newer than what was known).
    pub apply: Vec<(String, AdminState)>,
    /// Redis knows less than this gateway (it restarted empty, or from an older snapshot): put
    /// these back, with this highest sequence number.
    pub reseed: Option<(u64, Vec<StateRecord>)>,
    /// Changes taken here while Redis was away, newer than Redis' record: to write now.
    pub write: Vec<StateRecord>,
    /// Old records to forget (compare and delete): READY ones, and those of nodes no one knows.
    pub prune: Vec<(String, String)>,
}

/// The operator states of the fleet, as this gateway knows them.
#[derive(Debug, Default)]
pub struct States {
    /// The last record applied, per node.
    pub known: BTreeMap<String, Known>,
    /// Changes taken by this gateway's ops API that Redis has not confirmed yet (in flight, or
    /// taken while Redis was unreachable).
    pub pending: BTreeMap<String, StateRecord>,
}

impl States {
    /// The highest sequence number this gateway has seen from Redis.
    pub fn max_seq(&self) -> u64 {
        self.known.values().map(|k| k.record.seq).max().unwrap_or(0)
    }

    /// A change taken here (the ops API): applied at once, pending until Redis confirms it.
    pub fn local(&mut self, record: StateRecord, now_ms: u64) {
        let seq = self.known.get(&record.node).map_or(0, |k| k.record.seq);
        self.pending.insert(record.node.clone(), record.clone());
        // Shown at once (who, when); keeps the last confirmed seq so that an older message
        // cannot undo it.
        self.known.insert(record.node.clone(), Known { record: StateRecord { seq, ..record }, applied_ms: now_ms });
    }

    /// Redis stored `record` (the change this gateway wrote): no longer pending.
    pub fn confirmed(&mut self, record: StateRecord, now_ms: u64) {
        if self.pending.get(&record.node).is_some_and(|p| p.at_ms == record.at_ms && p.state == record.state) {
            self.pending.remove(&record.node);
        }
        let applied_ms = self.known.get(&record.node).map_or(now_ms, |k| k.applied_ms);
        if self.known.get(&record.node).is_none_or(|k| k.record.seq < record.seq) {
            self.known.insert(record.node.clone(), Known { record, applied_ms });
        }
    }

    /// A record from Redis (a message or the hash): the state to apply when it is news. A change
    /// pending here that is newer (taken while Redis was away) wins over it.
    pub fn on_record(&mut self, record: StateRecord, now_ms: u64) -> Option<AdminState> {
        if self.known.get(&record.node).is_some_and(|k| k.record.seq >= record.seq) {
            return None;
        }
        if let Some(p) = self.pending.get(&record.node) {
            if p.at_ms > record.at_ms {
                return None;
            }
            // Our own change coming back, or a later one from elsewhere: either way it stands.
            self.pending.remove(&record.node);
        }
        let state = record.state;
        let changed = self.known.get(&record.node).is_none_or(|k| k.record.state != state);
        self.known.insert(record.node.clone(), Known { record, applied_ms: now_ms });
        changed.then_some(state)
    }

    /// The states hash as read (records by node, with the raw text for compare-and-delete) and
    /// Redis' sequence number: what to apply, write, put back and forget. `node_known` says
    /// whether this gateway knows a node; records older than `state_ttl_ms` are forgotten when
    /// they say READY or name a node nobody here knows.
    pub fn reconcile(
        &mut self,
        hash: Vec<(StateRecord, String)>,
        redis_seq: u64,
        now_ms: u64,
        state_ttl_ms: u64,
        node_known: impl Fn(&str) -> bool,
    ) -> Plan {
        let mut plan = Plan::default();
        let ours = self.max_seq();
        if redis_seq < ours {
            let records: Vec<StateRecord> =
                self.known.values().map(|k| k.record.clone()).filter(|r| r.seq > 0).collect();
            plan.reseed = Some((ours, records));
            return plan;
        }
        let mut in_redis: BTreeMap<String, u64> = BTreeMap::new();
        for (record, raw) in hash {
            in_redis.insert(record.node.clone(), record.at_ms);
            let old = record.at_ms.saturating_add(state_ttl_ms) < now_ms;
            if old && (record.state == AdminState::Ready || !node_known(&record.node)) {
                plan.prune.push((record.node.clone(), raw));
            }
            let node = record.node.clone();
            if let Some(s) = self.on_record(record, now_ms) {
                plan.apply.push((node, s));
            }
        }
        for p in self.pending.values() {
            // Written unless Redis holds a later change of that node.
            if in_redis.get(&p.node).is_none_or(|&at| at <= p.at_ms) {
                plan.write.push(p.clone());
            }
        }
        let stale: Vec<String> = self
            .pending
            .values()
            .filter(|p| in_redis.get(&p.node).is_some_and(|&at| at > p.at_ms))
            .map(|p| p.node.clone())
            .collect();
        for n in stale {
            self.pending.remove(&n);
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AdminState::*;

    fn rec(seq: u64, node: &str, state: AdminState, by: &str, at_ms: u64) -> StateRecord {
        StateRecord { seq, node: node.into(), state, by: by.into(), at_ms }
    }

    fn hashed(r: StateRecord) -> (StateRecord, String) {
        let raw = r.to_json();
        (r, raw)
    }

    #[test]
    fn messages_apply_in_seq_order_and_old_ones_are_ignored() {
        let mut s = States::default();
        assert_eq!(s.on_record(rec(2, "n1", Drain, "a", 10), 100), Some(Drain));
        assert_eq!(s.on_record(rec(1, "n1", Maint, "b", 9), 101), None, "older change, later message");
        assert_eq!(s.on_record(rec(2, "n1", Drain, "a", 10), 102), None, "the same again");
        assert_eq!(s.on_record(rec(3, "n1", Ready, "b", 11), 103), Some(Ready));
        assert_eq!(s.known["n1"].record.by, "b");
        assert_eq!(s.max_seq(), 3);
    }

    #[test]
    fn a_local_change_shows_at_once_and_its_own_echo_confirms_it() {
        let mut s = States::default();
        s.on_record(rec(4, "n1", Drain, "b", 10), 100);
        s.local(rec(0, "n1", Maint, "a", 20), 200);
        assert_eq!(s.known["n1"].record.state, Maint);
        assert_eq!(s.known["n1"].record.seq, 4, "an older message still cannot undo it");
        assert_eq!(s.on_record(rec(3, "n1", Ready, "c", 5), 201), None);
        assert_eq!(s.on_record(rec(5, "n1", Maint, "a", 20), 202), None, "the echo: no change to apply");
        assert!(s.pending.is_empty());
        assert_eq!(s.max_seq(), 5);
    }

    #[test]
    fn redis_that_lost_its_states_gets_them_back() {
        let mut s = States::default();
        s.on_record(rec(7, "n1", Drain, "a", 10), 100);
        s.on_record(rec(8, "n2", Maint, "a", 11), 100);
        let plan = s.reconcile(Vec::new(), 0, 1000, 10_000, |_| true);
        let (seq, records) = plan.reseed.expect("reseed");
        assert_eq!(seq, 8);
        assert_eq!(records.len(), 2);
        assert!(plan.apply.is_empty() && plan.write.is_empty(), "nothing applied from an empty Redis");
    }

    #[test]
    fn changes_made_while_redis_was_away_meet_those_made_elsewhere_newest_first() {
        let mut s = States::default();
        s.on_record(rec(7, "n1", Drain, "a", 10), 100);
        s.on_record(rec(8, "n2", Drain, "a", 11), 100);
        // Here, while Redis was away: n1 to MAINT at 50, n2 to READY at 40.
        s.local(rec(0, "n1", Maint, "a", 50), 150);
        s.local(rec(0, "n2", Ready, "a", 40), 140);
        // Meanwhile elsewhere: n2 to MAINT at 45 (seq 9), n3 DRAIN (seq 10).
        let hash = vec![
            hashed(rec(7, "n1", Drain, "a", 10)),
            hashed(rec(9, "n2", Maint, "b", 45)),
            hashed(rec(10, "n3", Drain, "b", 46)),
        ];
        let plan = s.reconcile(hash, 10, 1000, 10_000, |_| true);
        assert_eq!(plan.reseed, None);
        assert_eq!(plan.apply, vec![("n2".to_string(), Maint), ("n3".to_string(), Drain)], "theirs is later for n2");
        assert_eq!(plan.write.iter().map(|r| (r.node.as_str(), r.state)).collect::<Vec<_>>(), vec![("n1", Maint)]);
        assert!(!s.pending.contains_key("n2"), "our older n2 change is dropped");
    }

    #[test]
    fn old_ready_records_and_records_of_unknown_nodes_are_pruned() {
        let mut s = States::default();
        let hash = vec![
            hashed(rec(1, "gone", Drain, "a", 10)),
            hashed(rec(2, "back", Ready, "a", 10)),
            hashed(rec(3, "kept", Drain, "a", 10)),
            hashed(rec(4, "fresh", Ready, "a", 990)),
        ];
        let plan = s.reconcile(hash, 4, 1000, 100, |n| n != "gone");
        let pruned: Vec<&str> = plan.prune.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(pruned, vec!["gone", "back"]);
    }
}
