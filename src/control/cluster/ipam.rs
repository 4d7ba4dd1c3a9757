//! Shared DHCP addresses of cluster networks: claims in etcd.
//!
//! A claim is the key `PREFIX/ipam/NET/IP` whose value is the claiming node's name, bound to
//! its lease, created only if absent (a transaction comparing the key's create revision with
//! 0): of two nodes claiming one address at once exactly one wins. The cluster thread keeps
//! between [`LOW`] and [`BATCH`] spare claims per network in the DHCP server ahead of demand,
//! so a client's exchange never waits on etcd (the gateway loop only ever sees the server's
//! claim set). A new lease (after a partition longer than the TTL) re-claims every address
//! the server still holds; one that another node took meanwhile is dropped and counted in
//! `conflicts` (its client's next renewal is NAKed, and it starts over with a claimed one).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use super::Shared;
use super::agent::call;
use crate::control::Handle;
use crate::gateway::Gateway;

/// Spare claims a network's DHCP server is refilled to.
pub(super) const BATCH: usize = 16;
/// Refill when fewer spare claims than this are left.
pub(super) const LOW: usize = 8;
/// Give spare claims back down to [`BATCH`] when more than this are left (leases ended).
pub(super) const HIGH: usize = 2 * BATCH;

type Res<T> = std::result::Result<T, String>;

fn key(sh: &Shared, net: &str, ip: Ipv4Addr) -> String {
    format!("{}/ipam/{net}/{ip}", sh.spec.prefix)
}

/// The cluster networks that have a DHCP server, with their gateways.
fn dhcp_nets(h: &Handle, sh: &Shared) -> Vec<(String, std::sync::Arc<Gateway>)> {
    sh.nets
        .iter()
        .filter_map(|n| h.gateway(&n.name).map(|g| (n.name.clone(), g)))
        .filter(|(_, g)| g.dhcp.is_some())
        .collect()
}

/// etcd is unreachable: every cluster network's DHCP server gives up its spare claims.
pub(super) fn offline(h: &Handle, sh: &Shared) {
    for (net, g) in dhcp_nets(h, sh) {
        let now = g.now_ms();
        if let Some(d) = &g.dhcp {
            let dropped = d.lock().drop_spare_claims(now);
            if !dropped.is_empty() {
                tracing::info!(network = %net, spare = dropped.len(), "cluster: spare addresses given up while etcd is unreachable");
            }
        }
    }
}

/// Puts `ip`'s claim under `lease` if it is ours or free. False if another node holds it.
async fn claim(c: &mut Client, k: &str, node: &str, lease: i64, ours_too: bool) -> Res<bool> {
    let put = || TxnOp::put(k, node, Some(PutOptions::new().with_lease(lease)));
    if ours_too {
        let t = Txn::new()
            .when([Compare::value(k, CompareOp::Equal, node)])
            .and_then([put()]);
        if call("claim", c.txn(t)).await?.succeeded() {
            return Ok(true);
        }
    }
    let t = Txn::new()
        .when([Compare::create_revision(k, CompareOp::Equal, 0)])
        .and_then([put()]);
    Ok(call("claim", c.txn(t)).await?.succeeded())
}

/// Claims `ip` of `net` for a port's fixed address (a control thread waits for the answer):
/// Ok if this node holds it now (it may have before), else why not.
pub(super) async fn claim_fixed(
    h: &Handle,
    sh: &Shared,
    c: &mut Client,
    lease: i64,
    net: &str,
    ip: Ipv4Addr,
) -> std::result::Result<(), String> {
    let Some(g) = h.gateway(net) else {
        return Ok(());
    };
    let Some(d) = &g.dhcp else { return Ok(()) };
    if d.lock().claims().is_some_and(|c| c.contains(&ip)) {
        return Ok(());
    }
    if claim(c, &key(sh, net, ip), &sh.spec.node, lease, true).await? {
        d.lock().add_claim(ip);
        Ok(())
    } else {
        Err(format!("{ip} is claimed by another node of the cluster"))
    }
}

/// Gives a claim of `net` back: out of the DHCP server (unless a lease uses it), then deleted
/// in etcd if still this node's.
pub(super) async fn unclaim(
    h: &Handle,
    sh: &Shared,
    c: &mut Client,
    net: &str,
    ip: Ipv4Addr,
) -> Res<()> {
    let Some(g) = h.gateway(net) else {
        return Ok(());
    };
    let Some(d) = &g.dhcp else { return Ok(()) };
    {
        let mut s = d.lock();
        if s.in_use(g.now_ms()).contains(&ip) {
            return Ok(());
        }
        s.remove_claim(ip);
    }
    let k = key(sh, net, ip);
    let t = Txn::new()
        .when([Compare::value(
            k.as_str(),
            CompareOp::Equal,
            sh.spec.node.as_str(),
        )])
        .and_then([TxnOp::delete(k.as_str(), None)]);
    call("unclaim", c.txn(t)).await?;
    Ok(())
}

/// After a new lease: binds every claim the servers hold to it again, dropping those another
/// node took meanwhile.
pub(super) async fn reclaim(h: &Handle, sh: &Shared, c: &mut Client, lease: i64) -> Res<()> {
    for (net, g) in dhcp_nets(h, sh) {
        let Some(d) = &g.dhcp else { continue };
        let held: Vec<Ipv4Addr> = d
            .lock()
            .claims()
            .map(|c| c.iter().copied().collect())
            .unwrap_or_default();
        for ip in held {
            if claim(c, &key(sh, &net, ip), &sh.spec.node, lease, true).await? {
                continue;
            }
            let now = g.now_ms();
            let in_use = {
                let mut s = d.lock();
                s.remove_claim(ip);
                s.in_use(now).contains(&ip)
            };
            if in_use {
                sh.status.lock().conflicts += 1;
                tracing::error!(network = %net, %ip, "cluster: an address in use here was claimed by another node meanwhile; its client will be refused at renewal");
            }
        }
    }
    Ok(())
}

/// Tops every cluster network's spare claims up to [`BATCH`] when under [`LOW`].
pub(super) async fn refill(h: &Handle, sh: &Shared, c: &mut Client, lease: i64) -> Res<()> {
    for (net, g) in dhcp_nets(h, sh) {
        let Some(d) = &g.dhcp else { continue };
        let now = g.now_ms();
        let (spare, mine, first, last, server) = {
            let mut s = d.lock();
            let spare = s.spare_claims(now);
            let cfg = s.config();
            let (first, last, server) = (cfg.range_start, cfg.range_end, cfg.server);
            let mine: BTreeSet<Ipv4Addr> = s.claims().cloned().unwrap_or_default();
            (spare, mine, first, last, server)
        };
        if spare > HIGH {
            release(sh, c, &net, &g, d).await?;
            continue;
        }
        if spare >= LOW {
            continue;
        }
        let need = BATCH - spare;
        let prefix = format!("{}/ipam/{net}/", sh.spec.prefix);
        let taken = call(
            "read claims",
            c.get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        )
        .await?;
        let taken: BTreeSet<Ipv4Addr> = taken
            .kvs()
            .iter()
            .filter_map(|kv| {
                std::str::from_utf8(kv.key())
                    .ok()?
                    .strip_prefix(prefix.as_str())?
                    .parse()
                    .ok()
            })
            .collect();
        let subnet = g.cfg.subnet;
        let candidates = candidates(first, last, start_offset(&sh.spec.node), |ip| {
            !taken.contains(&ip)
                && !mine.contains(&ip)
                && ip != server
                && !g.vips.contains(std::net::IpAddr::V4(ip))
                && ip != subnet.network()
                && ip != subnet.broadcast()
        });
        let mut got = 0;
        for ip in candidates.take(need * 4) {
            if got == need {
                break;
            }
            if claim(c, &key(sh, &net, ip), &sh.spec.node, lease, false).await? {
                d.lock().add_claim(ip);
                got += 1;
            }
        }
        if got > 0 {
            tracing::debug!(network = %net, claimed = got, "cluster: addresses claimed");
        } else if need > 0 && spare == 0 {
            tracing::warn!(network = %net, "cluster: no free address left to claim in the pool");
        }
    }
    Ok(())
}

/// Gives the spare claims beyond [`BATCH`] back: out of the server first (so they are never
/// handed out unclaimed), then deleted in etcd if still ours.
async fn release(
    sh: &Shared,
    c: &mut Client,
    net: &str,
    g: &Gateway,
    d: &parking_lot::Mutex<crate::gateway::dhcp::DhcpServer>,
) -> Res<()> {
    let excess = d.lock().take_excess_spares(g.now_ms(), BATCH);
    for ip in &excess {
        let k = key(sh, net, *ip);
        let t = Txn::new()
            .when([Compare::value(
                k.as_str(),
                CompareOp::Equal,
                sh.spec.node.as_str(),
            )])
            .and_then([TxnOp::delete(k.as_str(), None)]);
        call("release", c.txn(t)).await?;
    }
    if !excess.is_empty() {
        tracing::debug!(network = %net, released = excess.len(), "cluster: spare addresses given back");
    }
    Ok(())
}

/// Where a node starts looking in the pool (a hash of its name), so nodes seldom race for the
/// same address.
pub(super) fn start_offset(node: &str) -> u32 {
    node.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The addresses of `first..=last` that pass `free`, starting at `offset` (modulo the range)
/// and wrapping around.
pub(super) fn candidates(
    first: Ipv4Addr,
    last: Ipv4Addr,
    offset: u32,
    free: impl Fn(Ipv4Addr) -> bool,
) -> impl Iterator<Item = Ipv4Addr> {
    let (a, b) = (u32::from(first), u32::from(last));
    let n = u64::from(b.saturating_sub(a)) + 1;
    let start = u64::from(offset) % n;
    (0..n)
        .map(move |i| Ipv4Addr::from(a + ((start + i) % n) as u32))
        .filter(move |ip| free(*ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_wrap_around_from_the_offset_and_skip_the_taken() {
        let ip = |x: u8| Ipv4Addr::new(10, 0, 0, x);
        let got: Vec<_> = candidates(ip(10), ip(14), 3, |a| a != ip(11)).collect();
        assert_eq!(got, [ip(13), ip(14), ip(10), ip(12)]);
        let one: Vec<_> = candidates(ip(5), ip(5), 77, |_| true).collect();
        assert_eq!(one, [ip(5)]);
        assert_ne!(start_offset("a"), start_offset("b"));
    }
}
