//! The smoltcp device both of usernet's TCP terminations run on: the gateway's DNS over TCP
//! ([`crate::gateway::dns_tcp`]) and NAT's TCP ([`crate::nat::tcp`]).
//!
//! smoltcp runs at the IP medium there: the caller strips the Ethernet header and pushes IP
//! packets in ([`QueueDevice::push_rx`]), polls its `Interface`, then takes smoltcp's output
//! packets from [`QueueDevice::tx`] and wraps them in Ethernet itself; ARP and NDP stay with the
//! gateway. Buffers are recycled both ways so that steady traffic allocates nothing.
//!
//! It sits at the crate's top, below both users, so that NAT does not reach into the gateway
//! (the gateway owns the NAT; the reverse arrow made a cycle).

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant as SInstant;

/// A smoltcp device at the IP medium backed by two queues: packets to feed in, packets it sent.
pub(crate) struct QueueDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    pub(crate) tx: Vec<Vec<u8>>,
    pub(crate) mtu: usize,
    /// What smoltcp does with TCP checksums. Never verify on receive: the gateway checks the
    /// segments that need it before they get here (`Driver::frame_with`), and segments from
    /// offload links carry a partial checksum that only the final hop completes.
    pub(crate) tcp_checksum: Checksum,
    /// Receive buffers smoltcp is done with, for the next packets (64 KiB segments would
    /// otherwise cost an allocation and fresh pages each).
    spare: Vec<Vec<u8>>,
    /// Transmit buffers handed back by the device's user ([`Self::recycle`]).
    tx_spare: Vec<Vec<u8>>,
}

/// Receive buffers a [`QueueDevice`] keeps for reuse.
const SPARE_BUFFERS: usize = 16;

impl QueueDevice {
    /// A device with empty queues.
    pub(crate) fn new(mtu: usize, tcp_checksum: Checksum) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            mtu,
            tcp_checksum,
            spare: Vec::new(),
            tx_spare: Vec::new(),
        }
    }

    /// Takes back packets of [`Self::tx`] the caller is done with, to build later ones in.
    pub(crate) fn recycle(&mut self, bufs: impl Iterator<Item = Vec<u8>>) {
        for b in bufs {
            if self.tx_spare.len() >= SPARE_BUFFERS {
                break;
            }
            self.tx_spare.push(b);
        }
    }

    /// Queues a copy of `packet` for smoltcp, in a reused buffer when one is spare; returns it
    /// for last edits.
    pub(crate) fn push_rx(&mut self, packet: &[u8]) -> &mut Vec<u8> {
        let mut b = self.spare.pop().unwrap_or_default();
        b.clear();
        b.extend_from_slice(packet);
        self.rx.push_back(b);
        let last = self.rx.len() - 1;
        &mut self.rx[last]
    }
}

pub(crate) struct Rx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);
pub(crate) struct Tx<'a>(&'a mut Vec<Vec<u8>>, &'a mut Vec<Vec<u8>>);

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let Rx(buf, spare) = self;
        let r = f(&buf);
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let Tx(queue, spare) = self;
        let mut b = spare.pop().unwrap_or_default();
        b.clear();
        b.resize(len, 0);
        let r = f(&mut b);
        queue.push(b);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(Rx<'_>, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p, &mut self.spare), Tx(&mut self.tx, &mut self.tx_spare)))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx, &mut self.tx_spare))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c.checksum.tcp = self.tcp_checksum;
        c
    }
}
