//! Data plane: per-client limits (`[limits] client_connections`, `client_rate`): a fixed table of
//! clients (an IPv4 address, or an IPv6 /64), each with its open connections and a token bucket
//! (GCRA), shared by every worker without a lock.
//!
//! Memory is fixed whatever clients do: the table is allocated whole at first use and never
//! grows. A client is looked for in a window of [`PROBES`] slots at its (keyed, random) hash; a
//! new one takes an empty slot there, else the slot of the client that holds no connection and
//! whose bucket is fullest (evicting it only forgets spent tokens: that client gets a fresh
//! bucket, never a refusal). A slot with open connections is never taken (their count must stay
//! true), so when a whole window holds connections the new client is served untracked and the
//! miss is counted (`table_full`): a flood of addresses can make the limits forget, never refuse
//! a client that did nothing.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Slots looked at for one client: its window.
pub const PROBES: usize = 8;

/// Bits of a slot's word that count connections (the rest is the client's tag).
const CONN_BITS: u32 = 16;
const CONN_MASK: u64 = (1 << CONN_BITS) - 1;

/// One client: `word` = tag << 16 | open connections (0 = empty slot), `tat` = the bucket's
/// theoretical arrival time in microseconds since the table's epoch (GCRA: the bucket is full
/// when it is not ahead of now).
#[derive(Default)]
struct Slot {
    /// The client's tag and its connections, in one word so that a slot changes hands only while
    /// it holds no connection (one compare-and-swap).
    word: AtomicU64,
    /// When the bucket is full again, microseconds since `ClientTable::epoch`.
    tat: AtomicU64,
}

/// Where a client's slot was at its connection's start: a hint for its requests (checked, since
/// a slot without connections may change hands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Index of the slot.
    idx: u32,
    /// The client's tag (48 bits of its hash, never 0).
    tag: u64,
}

/// The table every worker shares.
pub struct ClientTable {
    /// The clients: allocated whole, never grown.
    slots: Box<[Slot]>,
    /// `slots.len() - 1` (a power of two).
    mask: usize,
    /// Time zero of the buckets.
    epoch: Instant,
    /// Keyed hash: a client cannot pick addresses that all land in one window.
    hasher: std::collections::hash_map::RandomState,
}

/// What a new connection gets.
#[derive(Debug)]
pub enum Admission {
    /// Counted: the guard gives the connection back when dropped.
    Counted(ConnGuard),
    /// Not counted: no room in the client's window (`table_full`).
    Untracked,
    /// The client already has `client_connections` open.
    Over,
}

/// What a request gets from the rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateVerdict {
    Allowed,
    /// Allowed, not tracked: no room in the client's window (`table_full`).
    Untracked,
    /// Over `client_rate`: try again after this many seconds (at least 1).
    Over(u64),
}

impl ClientTable {
    /// A table for `capacity` clients (rounded up to a power of two).
    pub fn new(capacity: usize) -> ClientTable {
        let n = capacity.max(PROBES).next_power_of_two();
        ClientTable {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            epoch: Instant::now(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Bytes the table holds (fixed).
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Slots in use now (tests and stats: one pass over the table).
    pub fn used(&self) -> usize {
        self.slots.iter().filter(|s| s.word.load(Ordering::Relaxed) != 0).count()
    }

    /// The place of a client's window and its tag. An IPv6 client is its /64 (one host gets a
    /// /64 from its provider: counting its addresses one by one would count nothing).
    fn place_of(&self, ip: IpAddr) -> Place {
        let mut h = self.hasher.build_hasher();
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                h.write_u8(4);
                h.write_u32(u32::from(v4));
            }
            IpAddr::V6(v6) => {
                h.write_u8(6);
                h.write_u64((u128::from(v6) >> 64) as u64);
            }
        }
        let x = h.finish();
        let tag = (x >> CONN_BITS).max(1);
        Place { idx: (x as usize & self.mask) as u32, tag }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// The slot of `p` in its window, if it has one.
    fn find(&self, p: Place) -> Option<usize> {
        (0..PROBES)
            .map(|k| (p.idx as usize + k) & self.mask)
            .find(|&i| self.slots[i].word.load(Ordering::Acquire) >> CONN_BITS == p.tag)
    }

    /// Give `p` a slot of its window, with `conns` connections and bucket time `tat`: an empty
    /// one, else the one without connections whose bucket is fullest. Returns the slot and whether
    /// this call took it (false: another thread gave `p` a slot meanwhile, with its own counts).
    /// None: every slot of the window holds connections.
    fn claim(&self, p: Place, conns: u64, tat: u64) -> Option<(usize, bool)> {
        // Bounded: each failed swap means another thread changed the window meanwhile.
        for _ in 0..PROBES {
            if let Some(i) = self.find(p) {
                return Some((i, false));
            }
            let mut best: Option<(usize, u64, u64)> = None;
            for k in 0..PROBES {
                let i = (p.idx as usize + k) & self.mask;
                let w = self.slots[i].word.load(Ordering::Acquire);
                if w == 0 {
                    best = Some((i, w, 0));
                    break;
                }
                if w & CONN_MASK == 0 {
                    let t = self.slots[i].tat.load(Ordering::Relaxed);
                    if best.is_none_or(|(_, _, bt)| t < bt) {
                        best = Some((i, w, t));
                    }
                }
            }
            let (i, old, _) = best?;
            let new = p.tag << CONN_BITS | conns;
            if self.slots[i].word.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.slots[i].tat.store(tat, Ordering::Relaxed);
                return Some((i, true));
            }
        }
        None
    }

    /// A new connection of `ip`, allowed `limit` open at once.
    pub fn open(self: &Arc<Self>, ip: IpAddr, limit: u32) -> Admission {
        let p = self.place_of(ip);
        let limit = u64::from(limit).min(CONN_MASK);
        let counted = |idx| Admission::Counted(ConnGuard { table: self.clone(), idx, tag: p.tag });
        // Bounded: each pass ends in a decision or in losing a race to another thread.
        for _ in 0..PROBES {
            let i = match self.find(p) {
                Some(i) => i,
                None => match self.claim(p, 1, 0) {
                    Some((i, true)) => return counted(i),
                    Some((_, false)) => continue,
                    None => return Admission::Untracked,
                },
            };
            let slot = &self.slots[i];
            let w = slot.word.load(Ordering::Acquire);
            if w >> CONN_BITS != p.tag {
                continue;
            }
            if w & CONN_MASK >= limit {
                return Admission::Over;
            }
            if slot.word.compare_exchange(w, w + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return counted(i);
            }
        }
        Admission::Untracked
    }

    /// Where `ip`'s slot is looked for (computed once per connection, used by its requests).
    pub fn place(&self, ip: IpAddr) -> Place {
        self.place_of(ip)
    }

    /// One request of the client at `p`: GCRA with `rate` per second and `burst` at once.
    pub fn request(&self, p: Place, rate: u32, burst: u32) -> RateVerdict {
        if rate == 0 {
            return RateVerdict::Allowed;
        }
        let t = 1_000_000 / u64::from(rate);
        let tau = t * u64::from(burst.max(1));
        let now = self.now_us();
        let i = match self.find(p) {
            Some(i) => i,
            None => match self.claim(p, 0, now + t) {
                Some((_, true)) => return RateVerdict::Allowed,
                Some((i, false)) => i,
                None => return RateVerdict::Untracked,
            },
        };
        let slot = &self.slots[i];
        // Bounded: each failure means another request of the same client won the swap.
        for _ in 0..16 {
            let tat = slot.tat.load(Ordering::Acquire);
            let new = tat.max(now) + t;
            if new - now > tau {
                let wait = new - now - tau;
                return RateVerdict::Over(wait.div_ceil(1_000_000).max(1));
            }
            if slot.tat.compare_exchange(tat, new, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return RateVerdict::Allowed;
            }
        }
        RateVerdict::Allowed
    }

    /// A connection of the client at slot `idx` ended.
    fn close(&self, idx: usize, tag: u64) {
        let slot = &self.slots[idx];
        // Bounded: a slot with connections keeps its tag; only its count moves meanwhile.
        for _ in 0..64 {
            let w = slot.word.load(Ordering::Acquire);
            if w >> CONN_BITS != tag || w & CONN_MASK == 0 {
                return;
            }
            if slot.word.compare_exchange(w, w - 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                return;
            }
        }
    }
}

/// One counted connection of a client: given back when dropped (the HTTP connection hands it to
/// its WebSocket tunnel, so a WebSocket counts as long as it is open).
pub struct ConnGuard {
    /// The table the count is in.
    table: Arc<ClientTable>,
    /// The client's slot: it keeps its tag while it holds connections.
    idx: usize,
    /// The client's tag, checked before the count is given back.
    tag: u64,
}

impl std::fmt::Debug for ConnGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnGuard").field("idx", &self.idx).finish()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.table.close(self.idx, self.tag);
    }
}

/// `Retry-After` of a refused connection: it may try again once one of its own closes.
pub const CONNECTIONS_RETRY_AFTER: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn connections_are_counted_per_client_and_given_back() {
        let t = Arc::new(ClientTable::new(1024));
        let a: Vec<Admission> = (0..3).map(|_| t.open(ip("10.0.0.1"), 3)).collect();
        assert!(a.iter().all(|x| matches!(x, Admission::Counted(_))), "{a:?}");
        assert!(matches!(t.open(ip("10.0.0.1"), 3), Admission::Over));
        assert!(matches!(t.open(ip("10.0.0.2"), 3), Admission::Counted(_)), "another client is not held back");
        // One of the /64: the same client.
        let _v6 = (t.open(ip("2001:db8::1"), 1), t.open(ip("2001:db8::2"), 1));
        assert!(matches!(_v6.1, Admission::Over), "2001:db8::/64 is one client");
        assert!(matches!(t.open(ip("2001:db8:0:1::1"), 1), Admission::Counted(_)), "another /64");
        drop(a);
        let again = t.open(ip("10.0.0.1"), 3);
        assert!(matches!(again, Admission::Counted(_)), "closed connections are given back");
        assert!(matches!(t.open(ip("::ffff:10.0.0.1"), 1), Admission::Over), "a mapped IPv4 is that IPv4");
    }

    #[test]
    fn the_rate_is_a_token_bucket() {
        let t = ClientTable::new(1024);
        let p = t.place(ip("10.0.0.1"));
        let got: Vec<RateVerdict> = (0..6).map(|_| t.request(p, 2, 5)).collect();
        assert_eq!(&got[..5], &[RateVerdict::Allowed; 5], "the burst goes at once");
        assert_eq!(got[5], RateVerdict::Over(1), "then 2 a second: retry in a second");
        assert_eq!(t.request(t.place(ip("10.0.0.2")), 2, 5), RateVerdict::Allowed, "per client");
        assert_eq!(t.request(p, 0, 0), RateVerdict::Allowed, "0 = off");
        // Slow rate: the wait is said in whole seconds.
        let q = t.place(ip("10.0.0.3"));
        assert_eq!(t.request(q, 1, 1), RateVerdict::Allowed);
        assert!(matches!(t.request(q, 1, 1), RateVerdict::Over(1)));
    }

    #[test]
    fn a_flood_of_addresses_keeps_the_table_fixed_and_never_refuses_a_newcomer() {
        let t = Arc::new(ClientTable::new(1024));
        let bytes = t.bytes();
        // A client with a connection open before the flood keeps it counted.
        let held = t.open(ip("192.0.2.1"), 1);
        assert!(matches!(held, Admission::Counted(_)));
        let mut untracked = 0;
        for i in 0..1_000_000u64 {
            let a = IpAddr::from(std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(i) << 64)));
            let p = t.place(a);
            match t.request(p, 10, 10) {
                RateVerdict::Over(_) => panic!("a newcomer was refused"),
                RateVerdict::Untracked => untracked += 1,
                RateVerdict::Allowed => {}
            }
        }
        assert_eq!(t.bytes(), bytes, "the table never grows");
        assert!(t.used() <= t.capacity());
        assert_eq!(untracked, 0, "slots without connections are taken over");
        assert!(matches!(t.open(ip("192.0.2.1"), 1), Admission::Over), "the held connection still counts");
        drop(held);
        assert!(matches!(t.open(ip("192.0.2.1"), 1), Admission::Counted(_)));
    }

    #[test]
    fn a_window_full_of_connections_leaves_the_newcomer_untracked() {
        let t = Arc::new(ClientTable::new(8));
        let mut held = Vec::new();
        for i in 0..64u32 {
            held.push(t.open(IpAddr::from(i.to_be_bytes()), 100));
        }
        let counted = held.iter().filter(|a| matches!(a, Admission::Counted(_))).count();
        assert_eq!(counted, 8, "8 slots, each holding a connection");
        assert!(held.iter().all(|a| !matches!(a, Admission::Over)));
    }
}
