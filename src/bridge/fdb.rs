//! The forwarding database (MAC learning table) of one network.
//!
//! # Theory of operation
//!
//! The FDB maps `(VLAN, MAC)` to the port where that MAC was last seen as a source. It is read
//! for every frame and written only when a MAC is new or moves, so it is built for readers:
//!
//! - A `parking_lot::RwLock` guards the map. Refreshing an entry that is already on the right
//!   port (the common case: a known station sends again) takes only the *read* lock and stores
//!   the timestamp in an atomic, so readers never wait on each other and rarely on a writer.
//! - Aging: an entry not refreshed for `aging` is treated as absent by [`Fdb::lookup`] at once,
//!   and removed by the periodic [`Fdb::sweep`]. `aging == 0` disables aging.
//! - Size cap with fair eviction: when the table is full, the new entry replaces the *oldest
//!   learned entry of the port that holds the most entries*. A port that floods random source
//!   MACs therefore only ever evicts its own entries, and the other ports' stations stay
//!   reachable (the weakness of a global LRU, which a MAC flood empties).
//! - Static entries never age, are never evicted, and are not moved by learning.
//!
//! Per-port insertion order is kept in a FIFO of keys with lazy deletion: a key whose entry has
//! since moved or aged out is skipped when met, and the FIFO is compacted when it holds more than
//! twice the port's live entries, so its size stays O(entries).
//!
//! The hash uses a per-process random seed (ahash), since guests choose the MACs and could
//! otherwise aim for collisions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::Serialize;

use super::PortId;
use crate::wire::Mac;

/// Default entry lifetime, as Linux bridges: 300 s.
pub const DEFAULT_AGING_MS: u64 = 300_000;
/// Default table size cap.
pub const DEFAULT_MAX_ENTRIES: usize = 8192;

/// FDB settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FdbConfig {
    /// Largest number of entries (static ones included).
    pub max_entries: usize,
    /// Lifetime of a learned entry in milliseconds; 0 = never age.
    pub aging_ms: u64,
}

impl FdbConfig {
    /// A table of at most `max_entries` whose learned entries live `aging_ms` (0: forever).
    pub fn new(max_entries: usize, aging_ms: u64) -> FdbConfig {
        FdbConfig {
            max_entries,
            aging_ms,
        }
    }
}

impl Default for FdbConfig {
    fn default() -> Self {
        FdbConfig {
            max_entries: DEFAULT_MAX_ENTRIES,
            aging_ms: DEFAULT_AGING_MS,
        }
    }
}

type Key = (u16, Mac);

struct Entry {
    port: PortId,
    /// Matches the FIFO slot that owns this entry; a FIFO slot with another seq is stale.
    seq: u64,
    last_seen: AtomicU64,
    is_static: bool,
}

#[derive(Default)]
struct PortFifo {
    live: usize,
    order: VecDeque<(Key, u64)>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry, ahash::RandomState>,
    ports: HashMap<PortId, PortFifo, ahash::RandomState>,
    next_seq: u64,
}

/// What [`Fdb::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// The entry existed on this port; its timestamp was refreshed.
    Refreshed,
    /// A new entry was added.
    New,
    /// A new entry was added after evicting another port's (or this port's) oldest entry.
    NewEvicted,
    /// The MAC moved from another port to this one.
    Moved,
    /// Not learned: the MAC is a static entry on another port.
    StaticConflict,
    /// Not learned: the table is full of static entries.
    Full,
}

/// One FDB entry, as shown by `usernet ctl fdb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct FdbEntry {
    /// VLAN id (0 = untagged).
    pub vlan: u16,
    /// The station's MAC.
    pub mac: Mac,
    /// The port it was learned on.
    pub port: PortId,
    /// Milliseconds since it was last seen (0 for static entries).
    pub age_ms: u64,
    /// Configured rather than learned.
    pub is_static: bool,
}

/// The MAC table of one network. See the module docs.
pub struct Fdb {
    cfg: FdbConfig,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for Fdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fdb")
            .field("cfg", &self.cfg)
            .field("len", &self.len())
            .finish()
    }
}

impl Fdb {
    /// An empty table.
    pub fn new(cfg: FdbConfig) -> Self {
        Fdb {
            cfg: FdbConfig {
                max_entries: cfg.max_entries.max(1),
                aging_ms: cfg.aging_ms,
            },
            inner: RwLock::new(Inner::default()),
        }
    }

    /// The table's settings.
    pub fn config(&self) -> FdbConfig {
        self.cfg
    }

    fn expired(&self, e: &Entry, now: u64) -> bool {
        !e.is_static
            && self.cfg.aging_ms != 0
            && now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) >= self.cfg.aging_ms
    }

    /// The port where `mac` on `vlan` was last seen, unless aged out.
    pub fn lookup(&self, vlan: u16, mac: Mac, now: u64) -> Option<PortId> {
        let inner = self.inner.read();
        let e = inner.map.get(&(vlan, mac))?;
        if self.expired(e, now) {
            None
        } else {
            Some(e.port)
        }
    }

    /// Records that `mac` on `vlan` was seen as a source on `port` at `now`.
    pub fn learn(&self, vlan: u16, mac: Mac, port: PortId, now: u64) -> Learned {
        let key = (vlan, mac);
        {
            let inner = self.inner.read();
            if let Some(e) = inner.map.get(&key) {
                if e.port == port {
                    if !e.is_static {
                        e.last_seen.store(now, Ordering::Relaxed);
                    }
                    return Learned::Refreshed;
                }
                if e.is_static {
                    return Learned::StaticConflict;
                }
            }
        }
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        if let Some(e) = inner.map.get_mut(&key) {
            // Re-check: another loop may have learned it between the two locks.
            if e.port == port {
                e.last_seen.store(now, Ordering::Relaxed);
                return Learned::Refreshed;
            }
            if e.is_static {
                return Learned::StaticConflict;
            }
            let old = e.port;
            let seq = inner.next_seq;
            inner.next_seq += 1;
            e.port = port;
            e.seq = seq;
            e.last_seen.store(now, Ordering::Relaxed);
            if let Some(f) = inner.ports.get_mut(&old) {
                f.live = f.live.saturating_sub(1);
            }
            let f = inner.ports.entry(port).or_default();
            f.live += 1;
            f.order.push_back((key, seq));
            Self::maybe_compact(&inner.map, port, f);
            return Learned::Moved;
        }
        let mut evicted = false;
        if inner.map.len() >= self.cfg.max_entries {
            if !Self::evict_one(inner) {
                return Learned::Full;
            }
            evicted = true;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.map.insert(
            key,
            Entry {
                port,
                seq,
                last_seen: AtomicU64::new(now),
                is_static: false,
            },
        );
        let f = inner.ports.entry(port).or_default();
        f.live += 1;
        f.order.push_back((key, seq));
        Self::maybe_compact(&inner.map, port, f);
        if evicted {
            Learned::NewEvicted
        } else {
            Learned::New
        }
    }

    /// Drops stale keys from a port's FIFO once it is more than twice its live size.
    fn maybe_compact(
        map: &HashMap<Key, Entry, ahash::RandomState>,
        port: PortId,
        f: &mut PortFifo,
    ) {
        if f.order.len() > 2 * f.live + 64 {
            f.order.retain(|(k, seq)| Self::owns(map, k, *seq, port));
        }
    }

    /// True when the FIFO slot `(k, seq)` of `port` is the live one for `k`.
    fn owns(
        map: &HashMap<Key, Entry, ahash::RandomState>,
        k: &Key,
        seq: u64,
        port: PortId,
    ) -> bool {
        map.get(k)
            .is_some_and(|e| e.port == port && e.seq == seq && !e.is_static)
    }

    /// Evicts the oldest learned entry of the port holding the most learned entries.
    fn evict_one(inner: &mut Inner) -> bool {
        let Some((&victim, _)) = inner
            .ports
            .iter()
            .filter(|(_, f)| f.live > 0)
            .max_by_key(|(_, f)| f.live)
        else {
            return false;
        };
        let Some(f) = inner.ports.get_mut(&victim) else {
            return false;
        };
        while let Some((k, seq)) = f.order.pop_front() {
            if Self::owns(&inner.map, &k, seq, victim) {
                inner.map.remove(&k);
                f.live -= 1;
                return true;
            }
        }
        // The FIFO lost track (cannot happen while `live` is exact); resynchronise.
        f.live = 0;
        false
    }

    /// Adds or replaces a static entry: `mac` on `vlan` is always at `port`.
    pub fn add_static(&self, vlan: u16, mac: Mac, port: PortId) {
        let mut inner = self.inner.write();
        if let Some(old) = inner.map.remove(&(vlan, mac))
            && !old.is_static
            && let Some(f) = inner.ports.get_mut(&old.port)
        {
            f.live = f.live.saturating_sub(1);
        }
        if inner.map.len() >= self.cfg.max_entries {
            Self::evict_one(&mut inner);
        }
        inner.map.insert(
            (vlan, mac),
            Entry {
                port,
                seq: u64::MAX,
                last_seen: AtomicU64::new(0),
                is_static: true,
            },
        );
    }

    /// Removes the entry for `mac` on `vlan` (learned or static). True if there was one.
    pub fn remove(&self, vlan: u16, mac: Mac) -> bool {
        let mut inner = self.inner.write();
        match inner.map.remove(&(vlan, mac)) {
            Some(e) => {
                if !e.is_static
                    && let Some(f) = inner.ports.get_mut(&e.port)
                {
                    f.live = f.live.saturating_sub(1);
                }
                true
            }
            None => false,
        }
    }

    /// Removes every entry of `port` (the port was removed). Returns how many.
    pub fn flush_port(&self, port: PortId) -> usize {
        let mut inner = self.inner.write();
        let before = inner.map.len();
        inner.map.retain(|_, e| e.port != port);
        inner.ports.remove(&port);
        before - inner.map.len()
    }

    /// Removes aged-out entries. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        if self.cfg.aging_ms == 0 {
            return 0;
        }
        let mut inner = self.inner.write();
        let inner = &mut *inner;
        let before = inner.map.len();
        let ports = &mut inner.ports;
        let aging = self.cfg.aging_ms;
        inner.map.retain(|_, e| {
            let keep =
                e.is_static || now.saturating_sub(e.last_seen.load(Ordering::Relaxed)) < aging;
            if !keep && let Some(f) = ports.get_mut(&e.port) {
                f.live = f.live.saturating_sub(1);
            }
            keep
        });
        for (p, f) in ports.iter_mut() {
            Self::maybe_compact(&inner.map, *p, f);
        }
        before - inner.map.len()
    }

    /// Number of entries (static included, aged-but-not-swept included).
    pub fn len(&self) -> usize {
        self.inner.read().map.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Learned entries per port.
    pub fn entries_of(&self, port: PortId) -> usize {
        self.inner.read().ports.get(&port).map_or(0, |f| f.live)
    }

    /// All live entries, sorted by VLAN then MAC.
    pub fn dump(&self, now: u64) -> Vec<FdbEntry> {
        let inner = self.inner.read();
        let mut v: Vec<FdbEntry> = inner
            .map
            .iter()
            .filter(|(_, e)| !self.expired(e, now))
            .map(|(&(vlan, mac), e)| FdbEntry {
                vlan,
                mac,
                port: e.port,
                age_ms: if e.is_static {
                    0
                } else {
                    now.saturating_sub(e.last_seen.load(Ordering::Relaxed))
                },
                is_static: e.is_static,
            })
            .collect();
        v.sort_by_key(|e| (e.vlan, e.mac));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u32) -> Mac {
        let b = n.to_be_bytes();
        Mac([0x02, 0, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn learn_lookup_refresh_move() {
        let fdb = Fdb::new(FdbConfig::default());
        assert_eq!(fdb.learn(0, mac(1), PortId(1), 0), Learned::New);
        assert_eq!(fdb.learn(0, mac(1), PortId(1), 5), Learned::Refreshed);
        assert_eq!(fdb.lookup(0, mac(1), 5), Some(PortId(1)));
        assert_eq!(fdb.lookup(1, mac(1), 5), None, "VLANs are separate");
        assert_eq!(fdb.learn(0, mac(1), PortId(2), 6), Learned::Moved);
        assert_eq!(fdb.lookup(0, mac(1), 6), Some(PortId(2)));
        assert_eq!(fdb.entries_of(PortId(1)), 0);
        assert_eq!(fdb.entries_of(PortId(2)), 1);
    }

    #[test]
    fn aging_hides_then_sweeps() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 10,
            aging_ms: 1000,
        });
        fdb.learn(0, mac(1), PortId(1), 0);
        fdb.learn(0, mac(2), PortId(1), 600);
        assert_eq!(fdb.lookup(0, mac(1), 999), Some(PortId(1)));
        assert_eq!(fdb.lookup(0, mac(1), 1000), None);
        assert_eq!(fdb.sweep(1000), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.entries_of(PortId(1)), 1);
        assert_eq!(fdb.sweep(1600), 1);
        assert!(fdb.is_empty());
    }

    #[test]
    fn aging_zero_never_ages() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 10,
            aging_ms: 0,
        });
        fdb.learn(0, mac(1), PortId(1), 0);
        assert_eq!(fdb.lookup(0, mac(1), u64::MAX / 2), Some(PortId(1)));
        assert_eq!(fdb.sweep(u64::MAX / 2), 0);
    }

    #[test]
    fn fair_eviction_spares_quiet_ports() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 100,
            aging_ms: 0,
        });
        for p in 1..=4 {
            fdb.learn(0, mac(p), PortId(p), 0);
        }
        // Port 9 floods 100 000 source MACs.
        for i in 0..100_000 {
            let l = fdb.learn(0, mac(1_000_000 + i), PortId(9), 1);
            assert!(matches!(l, Learned::New | Learned::NewEvicted));
        }
        assert_eq!(fdb.len(), 100);
        for p in 1..=4 {
            assert_eq!(fdb.lookup(0, mac(p), 2), Some(PortId(p)), "port {p} kept");
        }
        assert_eq!(fdb.entries_of(PortId(9)), 96);
        // The flooder's newest entries are the ones kept.
        assert_eq!(fdb.lookup(0, mac(1_000_000 + 99_999), 2), Some(PortId(9)));
        assert_eq!(fdb.lookup(0, mac(1_000_000), 2), None);
    }

    #[test]
    fn eviction_takes_from_heaviest_port() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 6,
            aging_ms: 0,
        });
        for i in 0..4 {
            fdb.learn(0, mac(i), PortId(1), i as u64);
        }
        for i in 10..12 {
            fdb.learn(0, mac(i), PortId(2), 0);
        }
        assert_eq!(fdb.learn(0, mac(20), PortId(3), 9), Learned::NewEvicted);
        assert_eq!(
            fdb.entries_of(PortId(1)),
            3,
            "heaviest port lost its oldest"
        );
        assert_eq!(fdb.lookup(0, mac(0), 9), None);
        assert_eq!(fdb.entries_of(PortId(2)), 2);
    }

    #[test]
    fn static_entries_stay() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 2,
            aging_ms: 100,
        });
        fdb.add_static(0, mac(1), PortId(1));
        assert_eq!(fdb.learn(0, mac(1), PortId(2), 0), Learned::StaticConflict);
        assert_eq!(fdb.lookup(0, mac(1), 1_000_000), Some(PortId(1)));
        fdb.learn(0, mac(2), PortId(2), 0);
        assert_eq!(fdb.learn(0, mac(3), PortId(2), 0), Learned::NewEvicted);
        assert_eq!(fdb.lookup(0, mac(1), 0), Some(PortId(1)));
        assert_eq!(fdb.sweep(1_000_000), 1);
        assert_eq!(fdb.lookup(0, mac(1), 1_000_000), Some(PortId(1)));
        let one = Fdb::new(FdbConfig {
            max_entries: 1,
            aging_ms: 0,
        });
        one.add_static(0, mac(1), PortId(1));
        assert_eq!(one.learn(0, mac(2), PortId(2), 0), Learned::Full);
        assert!(one.remove(0, mac(1)));
        assert_eq!(one.learn(0, mac(2), PortId(2), 0), Learned::New);
    }

    #[test]
    fn flush_port_and_dump() {
        let fdb = Fdb::new(FdbConfig::default());
        fdb.learn(0, mac(1), PortId(1), 0);
        fdb.learn(0, mac(2), PortId(2), 0);
        fdb.add_static(5, mac(3), PortId(2));
        let d = fdb.dump(10);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0].age_ms, 10);
        assert!(d[2].is_static);
        assert_eq!(fdb.flush_port(PortId(2)), 2);
        assert_eq!(fdb.len(), 1);
    }

    #[test]
    fn moving_mac_back_and_forth_stays_bounded() {
        let fdb = Fdb::new(FdbConfig {
            max_entries: 4,
            aging_ms: 0,
        });
        for i in 0..10_000u64 {
            fdb.learn(0, mac(1), PortId((i % 2) as u32), i);
        }
        let inner = fdb.inner.read();
        assert!(
            inner
                .ports
                .values()
                .all(|f| f.order.len() <= 2 * f.live + 65)
        );
    }
}
