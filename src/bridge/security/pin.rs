//! MACs the control plane gives a port outright (cluster mode: a remote endpoint's MAC belongs
//! to the network's VXLAN port), past the first-seen cap and `allowed_macs`: no other port may
//! then use it as a source, so a local guest cannot take a remote endpoint's MAC.

use super::{Claim, ClaimError, NetGuard};
use crate::bridge::PortId;
use crate::wire::Mac;
use std::sync::atomic::Ordering;

impl NetGuard {
    /// Gives `mac` to `port` (as configured); an error if another port owns it.
    pub fn pin_mac(&self, port: PortId, mac: Mac) -> Result<(), ClaimError> {
        if !mac.is_valid_source() {
            return Err(ClaimError::OutOfScope(mac.to_string()));
        }
        let mut t = self.table.lock();
        match t.macs.get(&mac) {
            Some(o) if *o == port => return Ok(()),
            Some(_) => return Err(ClaimError::Taken(mac.to_string())),
            None => {}
        }
        let Some(pc) = t.ports.get_mut(&port) else {
            return Err(ClaimError::OutOfScope(mac.to_string()));
        };
        pc.macs.push((mac, Claim::Config));
        pc.publish();
        t.macs.insert(mac, port);
        self.any.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Takes `mac` back from `port` if it owns it.
    pub fn unpin_mac(&self, port: PortId, mac: Mac) {
        let mut t = self.table.lock();
        if t.macs.get(&mac) != Some(&port) {
            return;
        }
        t.macs.remove(&mac);
        if let Some(pc) = t.ports.get_mut(&port) {
            pc.macs.retain(|(m, _)| *m != mac);
            pc.publish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::security::PortOwned;
    use std::sync::Arc;

    #[test]
    fn a_pinned_mac_is_refused_to_other_ports_and_goes_back() {
        let g = NetGuard::new(true);
        let (vx, guest) = (PortId(1), PortId(2));
        g.register(vx, Arc::new(PortOwned::default()), Some(false), &[], &[])
            .expect("vx");
        g.register(guest, Arc::new(PortOwned::default()), None, &[], &[])
            .expect("guest");
        let m = Mac([2, 0, 0, 0, 0, 7]);
        for i in 0..10u8 {
            g.pin_mac(vx, Mac([2, 0, 0, 0, 1, i]))
                .expect("past the cap");
        }
        g.pin_mac(vx, m).expect("pin");
        assert!(matches!(g.claim_mac(guest, m), Err(ClaimError::Taken(_))));
        g.unpin_mac(vx, m);
        g.claim_mac(guest, m).expect("free again");
        assert!(matches!(g.pin_mac(vx, m), Err(ClaimError::Taken(_))));
        g.unpin_mac(vx, m);
        assert_eq!(g.mac_owner(m), Some(guest), "not the pinner's to take back");
    }
}
