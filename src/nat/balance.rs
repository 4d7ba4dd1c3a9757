//! Load balancing of a port forward over several endpoints: the policy, the choice per new
//! connection, the health state machine and the per-endpoint counters. Pure: no socket, no
//! clock of its own; the runtime (`forward_rt.rs`, `probe.rs`) feeds it.
//!
//! # Theory of operation
//!
//! A forward's `to` is a list of endpoints (names or IPs). For each new TCP connection or new
//! UDP flow (a client address not seen recently), [`Picker::pick`] chooses one among the
//! endpoints that are up:
//!
//! - [`Balance::RoundRobin`]: the next one after the previous choice, in list order;
//! - [`Balance::LeastConn`]: the one with the fewest live connections (ties: round robin);
//! - [`Balance::SourceHash`]: rendezvous hashing of the client's IP address with each
//!   endpoint's name: a client keeps its endpoint while the set of endpoints that are up does
//!   not change, and when one goes down only its clients move.
//!
//! When none is up, there is no choice: the connection is refused and counted
//! ([`PoolStats::refused`]). Existing connections are never moved.
//!
//! Health ([`Health`]): an endpoint starts up; `fall` failed checks in a row take it down,
//! `rise` good ones in a row bring it back. Without health checks an endpoint stays up.
//!
//! Live connections: each connection holds a [`ConnGuard`] for its endpoint, dropped when the
//! connection ends wherever it lives (NAT's TCP table, the splice relay's thread, the UDP
//! forward table), so [`EndpointStats::live`] is exact without anyone reporting closes.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// How a forward with several endpoints picks one for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each endpoint in turn (the default).
    #[default]
    RoundRobin,
    /// The endpoint with the fewest live connections.
    LeastConn,
    /// A hash of the client's address: the same client, the same endpoint.
    SourceHash,
}

impl Balance {
    /// Every policy, as written in config and on the command line.
    pub const NAMES: [&'static str; 3] = ["round_robin", "least_conn", "source_hash"];

    /// The name, as written in config (`round_robin`, `least_conn`, `source_hash`).
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastConn => "least_conn",
            Balance::SourceHash => "source_hash",
        }
    }

    /// The policy named `s`, if any.
    pub fn from_name(s: &str) -> Option<Balance> {
        match s {
            "round_robin" => Some(Balance::RoundRobin),
            "least_conn" => Some(Balance::LeastConn),
            "source_hash" => Some(Balance::SourceHash),
            _ => None,
        }
    }
}

impl std::fmt::Display for Balance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Health checks of a forward's endpoints: a TCP connect to each endpoint's (first) guest
/// port every `interval_ms`, from the gateway, as a forwarded connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthSpec {
    /// Time between two checks of an endpoint (ms).
    #[serde(default = "HealthSpec::default_interval")]
    pub interval_ms: u64,
    /// A check not connected after this long failed (ms; at most `interval_ms`).
    #[serde(default = "HealthSpec::default_timeout")]
    pub timeout_ms: u64,
    /// Failed checks in a row that take an endpoint down.
    #[serde(default = "HealthSpec::default_count")]
    pub fall: u32,
    /// Good checks in a row that bring it back.
    #[serde(default = "HealthSpec::default_count")]
    pub rise: u32,
}

impl Default for HealthSpec {
    fn default() -> Self {
        HealthSpec {
            interval_ms: Self::default_interval(),
            timeout_ms: Self::default_timeout(),
            fall: Self::default_count(),
            rise: Self::default_count(),
        }
    }
}

impl HealthSpec {
    fn default_interval() -> u64 {
        1000
    }
    fn default_timeout() -> u64 {
        500
    }
    fn default_count() -> u32 {
        2
    }

    /// Checks the values; the error is `(key, reason)`, the key relative to the `health`
    /// table (`interval_ms`...).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(10..=3_600_000).contains(&self.interval_ms) {
            return Err((
                "interval_ms",
                format!("{} is not between 10 and 3600000", self.interval_ms),
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err((
                "timeout_ms",
                format!(
                    "{} is not between 1 and interval_ms ({})",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        for (k, v) in [("fall", self.fall), ("rise", self.rise)] {
            if !(1..=100).contains(&v) {
                return Err((k, format!("{v} is not between 1 and 100")));
            }
        }
        Ok(())
    }
}

/// One endpoint's health: up or down, and how many results in a row disagreed with that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    up: bool,
    streak: u32,
}

impl Default for Health {
    /// Up (an endpoint is trusted until checks say otherwise).
    fn default() -> Self {
        Health {
            up: true,
            streak: 0,
        }
    }
}

impl Health {
    /// Up now?
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check's result; `Some(up)` when the state changed.
    pub fn record(&mut self, ok: bool, spec: &HealthSpec) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if self.up { spec.fall } else { spec.rise };
        if self.streak >= need.max(1) {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// What the control plane sees of one endpoint (shared with the datapath; relaxed atomics).
#[derive(Debug)]
pub struct EndpointStats {
    /// The endpoint as configured (name or IP).
    pub name: String,
    up: AtomicBool,
    live: AtomicU64,
    connections: AtomicU64,
    changes: AtomicU64,
}

impl EndpointStats {
    fn new(name: &str) -> Self {
        EndpointStats {
            name: name.to_string(),
            up: AtomicBool::new(true),
            live: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            changes: AtomicU64::new(0),
        }
    }

    /// Up (in the rotation)?
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Connections (TCP) or flows (UDP) open to it now.
    pub fn live(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// Connections or flows sent to it so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Times it went up or down so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Sets its state (the health checker does).
    pub fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A forward's endpoints and counters, shared by the datapath (which writes) and the control
/// plane (which lists them).
#[derive(Debug)]
pub struct PoolStats {
    /// One per endpoint, in `to` order.
    pub endpoints: Vec<EndpointStats>,
    refused: AtomicU64,
}

impl PoolStats {
    /// Counters for endpoints `names`, all up.
    pub fn new(names: &[String]) -> Arc<PoolStats> {
        Arc::new(PoolStats {
            endpoints: names.iter().map(|n| EndpointStats::new(n)).collect(),
            refused: AtomicU64::new(0),
        })
    }

    /// New connections or flows refused because no endpoint was up.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a refusal (no endpoint up).
    pub fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A new connection to endpoint `i`: counted, and live while the guard lives. `None` for
    /// an index out of range.
    pub fn hold(self: &Arc<Self>, i: usize) -> Option<ConnGuard> {
        let e = self.endpoints.get(i)?;
        e.connections.fetch_add(1, Ordering::Relaxed);
        e.live.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            pool: self.clone(),
            idx: i,
        })
    }
}

/// One live connection to an endpoint; dropping it ends it in the count.
#[derive(Debug)]
pub struct ConnGuard {
    pool: Arc<PoolStats>,
    idx: usize,
}

impl ConnGuard {
    /// The endpoint's index in its forward's `to`.
    pub fn endpoint(&self) -> usize {
        self.idx
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if let Some(e) = self.pool.endpoints.get(self.idx) {
            e.live.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Picks endpoints for one forward (its round-robin cursor).
#[derive(Debug, Default, Clone)]
pub struct Picker {
    next: usize,
}

impl Picker {
    /// The endpoint for a new connection from `client`, by `policy`, among `pool`'s endpoints
    /// that are up; `None` when none is.
    pub fn pick(&mut self, policy: Balance, pool: &PoolStats, client: IpAddr) -> Option<usize> {
        let eps = &pool.endpoints;
        let n = eps.len();
        if n == 0 {
            return None;
        }
        // Up endpoints in round-robin order from the cursor.
        let mut order = (0..n)
            .map(|k| (self.next + k) % n)
            .filter(|&i| eps[i].is_up());
        let chosen = match policy {
            Balance::RoundRobin => order.next(),
            // `min_by_key` keeps the first of equals: ties go round robin.
            Balance::LeastConn => order.min_by_key(|&i| eps[i].live()),
            Balance::SourceHash => order.max_by_key(|&i| (rendezvous(client, &eps[i].name), i)),
        }?;
        if policy != Balance::SourceHash {
            self.next = (chosen + 1) % n;
        }
        Some(chosen)
    }
}

/// The rendezvous (highest random weight) score of `endpoint` for `client`: FNV-1a over the
/// address and the name, then a 64-bit finalizer so that close inputs spread.
fn rendezvous(client: IpAddr, endpoint: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match client {
        IpAddr::V4(a) => a.octets().into_iter().for_each(&mut eat),
        IpAddr::V6(a) => a.octets().into_iter().for_each(&mut eat),
    }
    eat(0xff);
    endpoint.bytes().for_each(&mut eat);
    // splitmix64's finalizer.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Arc<PoolStats> {
        let names: Vec<String> = (0..n).map(|i| format!("web{i}")).collect();
        PoolStats::new(&names)
    }

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn round_robin_spreads_evenly_and_skips_down_endpoints() {
        let p = pool(3);
        let mut k = Picker::default();
        let mut n = [0; 3];
        for i in 0..300 {
            n[k.pick(Balance::RoundRobin, &p, ip(i)).expect("up")] += 1;
        }
        assert_eq!(n, [100, 100, 100]);
        p.endpoints[1].set_up(false);
        let picks: Vec<_> = (0..4)
            .map(|i| k.pick(Balance::RoundRobin, &p, ip(i)).expect("up"))
            .collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(picks.iter().filter(|&&x| x == 0).count(), 2);
        p.endpoints[0].set_up(false);
        p.endpoints[2].set_up(false);
        assert_eq!(k.pick(Balance::RoundRobin, &p, ip(1)), None, "all down");
        assert_eq!(p.endpoints[1].changes(), 1);
    }

    #[test]
    fn least_conn_picks_the_least_loaded_and_counts_live() {
        let p = pool(3);
        let mut k = Picker::default();
        let mut held = Vec::new();
        // Endpoint 0 holds three connections.
        for _ in 0..3 {
            held.push(p.hold(0).expect("guard"));
        }
        let mut n = [0usize; 3];
        for i in 0..10 {
            let e = k.pick(Balance::LeastConn, &p, ip(i)).expect("up");
            n[e] += 1;
            held.push(p.hold(e).expect("guard"));
        }
        // 3 + 10 connections over 3 endpoints: at the end each has 4 or 5, 0 got 1 or 2.
        let live: Vec<u64> = p.endpoints.iter().map(EndpointStats::live).collect();
        assert_eq!(live.iter().sum::<u64>(), 13);
        assert!(live.iter().all(|&l| (4..=5).contains(&l)), "{live:?}");
        assert!(n[0] <= 2, "{n:?}");
        held.retain(|g| g.endpoint() != 1);
        assert_eq!(p.endpoints[1].live(), 0, "dropping a guard ends it");
        assert_eq!(k.pick(Balance::LeastConn, &p, ip(0)), Some(1));
        assert_eq!(p.endpoints[1].connections(), n[1] as u64);
    }

    #[test]
    fn source_hash_is_stable_and_moves_only_the_lost_endpoints_clients() {
        let p = pool(3);
        let mut k = Picker::default();
        let first: Vec<usize> = (0..600)
            .map(|i| k.pick(Balance::SourceHash, &p, ip(i)).expect("up"))
            .collect();
        let again: Vec<usize> = (0..600)
            .map(|i| k.pick(Balance::SourceHash, &p, ip(i)).expect("up"))
            .collect();
        assert_eq!(first, again, "same client, same endpoint");
        let mut n = [0; 3];
        first.iter().for_each(|&e| n[e] += 1);
        assert!(n.iter().all(|&c| (150..=250).contains(&c)), "{n:?}");
        p.endpoints[2].set_up(false);
        for i in 0..600 {
            let e = k.pick(Balance::SourceHash, &p, ip(i)).expect("up");
            if first[i as usize] != 2 {
                assert_eq!(e, first[i as usize], "client {i} moved");
            } else {
                assert_ne!(e, 2);
            }
        }
    }

    #[test]
    fn health_falls_and_rises_after_streaks() {
        let spec = HealthSpec {
            fall: 2,
            rise: 3,
            ..HealthSpec::default()
        };
        let mut h = Health::default();
        assert!(h.is_up());
        assert_eq!(h.record(false, &spec), None);
        assert_eq!(
            h.record(true, &spec),
            None,
            "a good check resets the streak"
        );
        assert_eq!(h.record(false, &spec), None);
        assert_eq!(h.record(false, &spec), Some(false));
        assert!(!h.is_up());
        assert_eq!(h.record(false, &spec), None);
        assert_eq!(h.record(true, &spec), None);
        assert_eq!(h.record(true, &spec), None);
        assert_eq!(h.record(true, &spec), Some(true));
        assert!(h.is_up());
    }

    #[test]
    fn health_spec_checks_name_the_key() {
        assert!(HealthSpec::default().check().is_ok());
        let bad = |f: fn(&mut HealthSpec)| {
            let mut s = HealthSpec::default();
            f(&mut s);
            s.check().expect_err("bad").0
        };
        assert_eq!(bad(|s| s.interval_ms = 0), "interval_ms");
        assert_eq!(bad(|s| s.timeout_ms = 0), "timeout_ms");
        assert_eq!(bad(|s| s.timeout_ms = 5000), "timeout_ms");
        assert_eq!(bad(|s| s.fall = 0), "fall");
        assert_eq!(bad(|s| s.rise = 1000), "rise");
        assert_eq!(Balance::from_name("least_conn"), Some(Balance::LeastConn));
        assert_eq!(Balance::from_name("random"), None);
        for n in Balance::NAMES {
            assert_eq!(Balance::from_name(n).map(Balance::as_str), Some(n));
        }
    }
}
