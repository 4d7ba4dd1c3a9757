//! The VXLAN port's shared state: counters, remotes and the MAC -> VTEP table ([`VxlanShared`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::local::{LocalRequest, local_request};
use super::wire::*;
use crate::wire::Mac;

/// Counters of a VXLAN port.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) rx_frames: AtomicU64,
    pub(super) rx_bytes: AtomicU64,
    pub(super) tx_frames: AtomicU64,
    pub(super) tx_datagrams: AtomicU64,
    pub(super) tx_bytes: AtomicU64,
    pub(super) truncated: AtomicU64,
    pub(super) bad_flags: AtomicU64,
    pub(super) wrong_vni: AtomicU64,
    pub(super) unknown_vtep: AtomicU64,
    pub(super) rx_oversize: AtomicU64,
    pub(super) tx_oversize: AtomicU64,
    pub(super) rx_gateway_mac: AtomicU64,
    pub(super) tx_gateway_mac: AtomicU64,
    pub(super) rx_dhcp: AtomicU64,
    pub(super) tx_local: AtomicU64,
    pub(super) no_remote: AtomicU64,
    pub(super) tx_errors: AtomicU64,
}

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A VXLAN port's counters, as shown by `ctl stats` (`vxlan` of the port's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VxlanStats {
    /// VNI.
    pub vni: u32,
    /// Inner MTU.
    pub mtu: u32,
    /// Frames decapsulated and handed to the bridge.
    pub rx_frames: u64,
    /// Their bytes (inner frames).
    pub rx_bytes: u64,
    /// Frames sent (each once, however many remotes it went to).
    pub tx_frames: u64,
    /// Datagrams sent (a flooded frame counts once per remote).
    pub tx_datagrams: u64,
    /// Inner bytes sent, per datagram.
    pub tx_bytes: u64,
    /// Drops by reason: `truncated`, `bad_flags`, `wrong_vni`, `unknown_vtep`, `rx_oversize`,
    /// `tx_oversize`, `rx_gateway_mac`, `tx_gateway_mac`, `rx_dhcp`, `no_remote`, `tx_errors`,
    /// `tx_local` (broadcasts this host's gateway answers: DHCP and router solicitations, ARP
    /// requests and neighbour solicitations for [`VxlanShared::set_suppressed`] addresses).
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// A remote VTEP, as listed by `ctl vxlan NAME remotes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteInfo {
    /// The VTEP's address.
    pub remote: IpAddr,
    /// MACs learned behind it.
    pub macs: usize,
    /// Frames accepted from it.
    pub rx_frames: u64,
    /// Datagrams sent to it (floods included).
    pub tx_frames: u64,
}

#[derive(Debug)]
pub(super) struct Remote {
    pub(super) ip: IpAddr,
    pub(super) rx: u64,
    pub(super) tx: u64,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct MacEntry {
    pub(super) vtep: IpAddr,
    pub(super) seen: Instant,
    /// Installed by the control plane ([`VxlanShared::pin`]): never ages, never moved by
    /// learning from another VTEP.
    pub(super) pinned: bool,
}

#[derive(Debug)]
pub(super) struct Table {
    pub(super) remotes: Vec<Remote>,
    pub(super) macs: HashMap<Mac, MacEntry>,
    /// Addresses whose ARP requests and neighbour solicitations this host's gateway answers:
    /// never flooded to the remotes.
    pub(super) suppressed: std::collections::HashSet<IpAddr>,
    /// Set with the suppressed addresses (cluster mode): every host has a gateway serving its
    /// own guests, so DHCP requests and router solicitations stay local too.
    pub(super) servers_local: bool,
}

/// What a VXLAN port shares with the control plane: its remotes, its VTEP table and counters.
#[derive(Debug)]
pub struct VxlanShared {
    pub(super) vni: u32,
    pub(super) local: IpAddr,
    pub(super) port: u16,
    pub(super) mtu: u32,
    /// Entry lifetime; `None`: never age.
    pub(super) aging: Option<Duration>,
    pub(super) table: Mutex<Table>,
    pub(super) counters: Counters,
}

impl VxlanShared {
    pub(super) fn new(spec: &VxlanSpec, mtu: u32, aging_ms: u64) -> Self {
        VxlanShared {
            vni: spec.vni,
            local: spec.local,
            port: spec.port,
            mtu,
            aging: (aging_ms > 0).then(|| Duration::from_millis(aging_ms)),
            table: Mutex::new(Table {
                remotes: spec
                    .remotes
                    .iter()
                    .map(|ip| Remote {
                        ip: *ip,
                        rx: 0,
                        tx: 0,
                    })
                    .collect(),
                macs: HashMap::new(),
                suppressed: std::collections::HashSet::new(),
                servers_local: false,
            }),
            counters: Counters::default(),
        }
    }

    /// The inner MTU.
    pub fn mtu(&self) -> u32 {
        self.mtu
    }

    /// The VNI.
    pub fn vni(&self) -> u32 {
        self.vni
    }

    pub(super) fn fresh(&self, e: &MacEntry, now: Instant) -> bool {
        e.pinned
            || self
                .aging
                .is_none_or(|a| now.saturating_duration_since(e.seen) < a)
    }

    /// Pins `mac` behind remote `vtep` (cluster mode: a published remote endpoint): the entry
    /// never ages and learning from another VTEP does not move it. Errors if `vtep` is not a
    /// remote.
    pub fn pin(&self, mac: Mac, vtep: IpAddr) -> Result<(), String> {
        if !mac.is_valid_source() {
            return Err(format!("{mac} is not a unicast MAC"));
        }
        let mut t = self.table.lock();
        if !t.remotes.iter().any(|r| r.ip == vtep) {
            return Err(format!("{vtep} is not a remote"));
        }
        t.macs.insert(
            mac,
            MacEntry {
                vtep,
                seen: Instant::now(),
                pinned: true,
            },
        );
        Ok(())
    }

    /// Unpins `mac` (and forgets it). True if it was pinned.
    pub fn unpin(&self, mac: Mac) -> bool {
        let mut t = self.table.lock();
        if t.macs.get(&mac).is_some_and(|e| e.pinned) {
            t.macs.remove(&mac);
            return true;
        }
        false
    }

    /// True if `mac` is pinned ([`VxlanShared::pin`]).
    pub fn is_pinned(&self, mac: Mac) -> bool {
        self.table.lock().macs.get(&mac).is_some_and(|e| e.pinned)
    }

    /// Sets the addresses this host's gateway answers ARP and neighbour solicitations for
    /// (its own, and the remote endpoints' it proxies): requests for them are not flooded.
    /// From then on (cluster mode, where every host's gateway serves its own guests) broadcast
    /// DHCP requests and router solicitations are not flooded either.
    pub fn set_suppressed(&self, ips: std::collections::HashSet<IpAddr>) {
        let mut t = self.table.lock();
        t.suppressed = ips;
        t.servers_local = true;
    }

    /// True if a broadcast or multicast `frame` is one this host's gateway answers, so it
    /// must not be flooded to the remotes (counted as `tx_local`). `gateway`: the network
    /// has a gateway here (it serves DHCP and router solicitations).
    pub(super) fn answered_locally(&self, frame: &[u8], gateway: bool) -> bool {
        let local = match local_request(frame) {
            Some(LocalRequest::Server) => gateway && self.table.lock().servers_local,
            Some(LocalRequest::Resolve(ip)) => self.table.lock().suppressed.contains(&ip),
            None => false,
        };
        if local {
            inc(&self.counters.tx_local);
        }
        local
    }

    /// The remotes, with their MAC counts and counters.
    pub fn remotes(&self) -> Vec<RemoteInfo> {
        let now = Instant::now();
        let t = self.table.lock();
        t.remotes
            .iter()
            .map(|r| RemoteInfo {
                remote: r.ip,
                macs: t
                    .macs
                    .values()
                    .filter(|e| e.vtep == r.ip && self.fresh(e, now))
                    .count(),
                rx_frames: r.rx,
                tx_frames: r.tx,
            })
            .collect()
    }

    /// Adds a remote VTEP; the error names why not (the caller names the field).
    pub fn add_remote(&self, ip: IpAddr) -> Result<(), String> {
        check_remote(self.local, ip)?;
        let mut t = self.table.lock();
        if t.remotes.iter().any(|r| r.ip == ip) {
            return Err(format!("{ip} is already a remote"));
        }
        t.remotes.push(Remote { ip, rx: 0, tx: 0 });
        Ok(())
    }

    /// Removes a remote VTEP and forgets the MACs learned behind it.
    pub fn remove_remote(&self, ip: IpAddr) -> Result<(), String> {
        let mut t = self.table.lock();
        let before = t.remotes.len();
        t.remotes.retain(|r| r.ip != ip);
        if t.remotes.len() == before {
            return Err(format!("{ip} is not a remote"));
        }
        t.macs.retain(|_, e| e.vtep != ip);
        Ok(())
    }

    /// The VTEP `mac` was last seen behind, while its entry is fresh.
    pub fn vtep_of(&self, mac: Mac) -> Option<IpAddr> {
        let now = Instant::now();
        let t = self.table.lock();
        t.macs
            .get(&mac)
            .filter(|e| self.fresh(e, now))
            .map(|e| e.vtep)
    }

    /// The counters.
    pub fn stats(&self) -> VxlanStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let drops = [
            ("truncated", &c.truncated),
            ("bad_flags", &c.bad_flags),
            ("wrong_vni", &c.wrong_vni),
            ("unknown_vtep", &c.unknown_vtep),
            ("rx_oversize", &c.rx_oversize),
            ("tx_oversize", &c.tx_oversize),
            ("rx_gateway_mac", &c.rx_gateway_mac),
            ("tx_gateway_mac", &c.tx_gateway_mac),
            ("rx_dhcp", &c.rx_dhcp),
            ("tx_local", &c.tx_local),
            ("no_remote", &c.no_remote),
            ("tx_errors", &c.tx_errors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), g(v)))
        .collect();
        VxlanStats {
            vni: self.vni,
            mtu: self.mtu,
            rx_frames: g(&c.rx_frames),
            rx_bytes: g(&c.rx_bytes),
            tx_frames: g(&c.tx_frames),
            tx_datagrams: g(&c.tx_datagrams),
            tx_bytes: g(&c.tx_bytes),
            drops,
        }
    }

    /// Accepts a datagram from `src` carrying an inner frame with source `mac`: false (counted)
    /// if `src` is not a remote; learns `mac` behind it.
    pub(super) fn admit(&self, src: IpAddr, mac: Mac, now: Instant) -> bool {
        let mut t = self.table.lock();
        let Some(r) = t.remotes.iter_mut().find(|r| r.ip == src) else {
            inc(&self.counters.unknown_vtep);
            return false;
        };
        r.rx += 1;
        // A pinned MAC stays behind the VTEP its node published, whoever else sends it.
        let pinned = t.macs.get(&mac).is_some_and(|e| e.pinned);
        if !pinned
            && mac.is_valid_source()
            && (t.macs.len() < MAX_MACS || t.macs.contains_key(&mac))
        {
            t.macs.insert(
                mac,
                MacEntry {
                    vtep: src,
                    seen: now,
                    pinned: false,
                },
            );
        }
        true
    }

    /// Where a frame to `dst` goes: its VTEP if known (and still a remote), else every remote.
    pub(super) fn destinations(&self, dst: Mac, now: Instant, out: &mut Vec<SocketAddr>) {
        out.clear();
        let t = self.table.lock();
        if let Some(vtep) = self.known(&t, dst, now) {
            out.push(vtep);
            return;
        }
        out.extend(t.remotes.iter().map(|r| SocketAddr::new(r.ip, self.port)));
    }

    /// The VTEP of a known unicast `dst` (a fresh entry whose remote is still listed).
    pub(super) fn known_vtep(&self, dst: Mac, now: Instant) -> Option<SocketAddr> {
        self.known(&self.table.lock(), dst, now)
    }

    fn known(&self, t: &Table, dst: Mac, now: Instant) -> Option<SocketAddr> {
        let e = t.macs.get(&dst).filter(|_| !dst.is_multicast())?;
        (self.fresh(e, now) && t.remotes.iter().any(|r| r.ip == e.vtep))
            .then(|| SocketAddr::new(e.vtep, self.port))
    }

    /// Counts `n` datagrams sent to the remote `ip`.
    pub(super) fn sent_to(&self, ip: IpAddr, n: u64) {
        let mut t = self.table.lock();
        if let Some(r) = t.remotes.iter_mut().find(|r| r.ip == ip) {
            r.tx += n;
        }
    }

    pub(super) fn sweep(&self, now: Instant) {
        if self.aging.is_some() {
            let mut t = self.table.lock();
            t.macs.retain(|_, e| self.fresh(e, now));
        }
    }
}
