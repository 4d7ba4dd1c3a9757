//! The smoltcp device both of usernet's TCP terminations run on: the gateway's DNS over TCP
//! ([`crate::gateway::dns_tcp`]) and NAT's TCP ([`crate::nat::tcp`]).
//!
//! smoltcp runs at the IP medium there: the caller strips the Ethernet header and pushes IP
//! packets in ([`QueueDevice::push_rx`]), polls its `Interface`, then takes smoltcp's output
//! packets and wraps them in Ethernet itself; ARP and NDP stay with the gateway. Receive
//! buffers are recycled so that steady traffic allocates nothing.
//!
//! Output goes one of two ways. A plain device ([`QueueDevice::new`], DNS over TCP) queues each
//! packet in its own `Vec` ([`QueueDevice::tx`]). A framed device ([`QueueDevice::framed`],
//! NAT) builds each packet straight into a pooled [`Frame`] behind room for the Ethernet
//! header ([`QueueDevice::frames`]): the gateway writes the header in front and sends the
//! frame as it is, so a 64 KiB segment towards a guest is neither zeroed nor copied again
//! between smoltcp and the link (the profile of NAT's download direction had both).
//!
//! It sits at the crate's top, below both users, so that NAT does not reach into the gateway
//! (the gateway owns the NAT; the reverse arrow made a cycle).

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant as SInstant;

use crate::frame::{Frame, FramePool};

/// A smoltcp device at the IP medium backed by two queues: packets to feed in, packets it sent.
pub(crate) struct QueueDevice {
    pub(crate) rx: VecDeque<Vec<u8>>,
    /// A plain device's output packets.
    pub(crate) tx: Vec<Vec<u8>>,
    /// A framed device's output: each IP packet at offset [`Framed::front`] of its frame.
    pub(crate) frames: Vec<Frame>,
    pub(crate) mtu: usize,
    /// What smoltcp does with TCP checksums. Never verify on receive: the gateway checks the
    /// segments that need it before they get here (`Driver::frame_with`), and segments from
    /// offload links carry a partial checksum that only the final hop completes.
    pub(crate) tcp_checksum: Checksum,
    /// Receive buffers smoltcp is done with, for the next packets (64 KiB segments would
    /// otherwise cost an allocation and fresh pages each).
    spare: Vec<Vec<u8>>,
    framed: Option<Framed>,
}

/// Where a framed device builds its packets.
pub(crate) struct Framed {
    /// The buffers (a GSO class for 64 KiB segments).
    pub(crate) pool: FramePool,
    /// Bytes left in front of each packet (the Ethernet header).
    pub(crate) front: usize,
}

/// Receive buffers a [`QueueDevice`] keeps for reuse.
const SPARE_BUFFERS: usize = 16;

impl QueueDevice {
    /// A plain device with empty queues: output packets in [`Self::tx`].
    pub(crate) fn new(mtu: usize, tcp_checksum: Checksum) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: Vec::new(),
            frames: Vec::new(),
            mtu,
            tcp_checksum,
            spare: Vec::new(),
            framed: None,
        }
    }

    /// A framed device: output packets in [`Self::frames`], built in `pool`'s buffers `front`
    /// bytes into each frame.
    pub(crate) fn framed(
        mtu: usize,
        tcp_checksum: Checksum,
        pool: FramePool,
        front: usize,
    ) -> Self {
        QueueDevice {
            framed: Some(Framed { pool, front }),
            ..Self::new(mtu, tcp_checksum)
        }
    }

    /// The buffers a framed device builds its packets in from now on (`None` for a plain one).
    pub(crate) fn framed_mut(&mut self) -> Option<&mut Framed> {
        self.framed.as_mut()
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

/// The token for smoltcp's next output packet: into `frames` on a framed device, else `tx`.
fn tx_token<'a>(
    framed: &'a Option<Framed>,
    frames: &'a mut Vec<Frame>,
    tx: &'a mut Vec<Vec<u8>>,
) -> Tx<'a> {
    match framed {
        Some(fr) => Tx::Framed(fr, frames),
        None => Tx::Plain(tx),
    }
}

pub(crate) struct Rx<'a>(Vec<u8>, &'a mut Vec<Vec<u8>>);

/// Where smoltcp's next output packet goes.
pub(crate) enum Tx<'a> {
    Plain(&'a mut Vec<Vec<u8>>),
    Framed(&'a Framed, &'a mut Vec<Frame>),
}

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
        match self {
            Tx::Plain(queue) => {
                let mut b = vec![0; len];
                let r = f(&mut b);
                queue.push(b);
                r
            }
            Tx::Framed(fr, frames) => {
                // smoltcp writes all `len` bytes: a reused buffer is not cleared first.
                let total = fr.front + len;
                let pooled = if total <= fr.pool.max_frame() {
                    Some(fr.pool.alloc())
                } else {
                    fr.pool.alloc_large()
                };
                let mut frame = pooled
                    .filter(|b| b.capacity() >= total)
                    // Every GSO buffer in flight (or a packet larger than any): the heap.
                    .unwrap_or_else(|| Frame::from_slice(&vec![0; total]));
                frame.set_len(total);
                let r = f(&mut frame.data_mut()[fr.front..]);
                frames.push(frame);
                r
            }
        }
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _t: SInstant) -> Option<(Rx<'_>, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        let tx = tx_token(&self.framed, &mut self.frames, &mut self.tx);
        Some((Rx(p, &mut self.spare), tx))
    }

    fn transmit(&mut self, _t: SInstant) -> Option<Tx<'_>> {
        Some(tx_token(&self.framed, &mut self.frames, &mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = self.mtu;
        c.checksum.tcp = self.tcp_checksum;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(dev: &mut QueueDevice, len: usize, byte: u8) {
        let tx = dev.transmit(SInstant::ZERO).expect("a token");
        tx.consume(len, |b| {
            assert_eq!(b.len(), len);
            b.fill(byte);
        });
    }

    #[test]
    fn framed_packets_sit_behind_the_front_room() {
        let pool = FramePool::with_gso(1522, 4, 1);
        let mut dev = QueueDevice::framed(65_535, Checksum::None, pool.clone(), 14);
        send(&mut dev, 40, 1); // an ACK: a regular buffer
        send(&mut dev, 60_000, 2); // a large segment: the one GSO buffer
        send(&mut dev, 60_000, 3); // none left in flight: the heap, still whole
        assert!(dev.tx.is_empty());
        let frames = std::mem::take(&mut dev.frames);
        let lens: Vec<usize> = frames.iter().map(Frame::len).collect();
        assert_eq!(lens, [54, 60_014, 60_014]);
        for (f, byte) in frames.iter().zip(1u8..) {
            assert!(f.data()[14..].iter().all(|&b| b == byte));
        }
        assert_eq!(pool.large_in_use(), 1);
        drop(frames);
        assert_eq!(
            pool.large_in_use(),
            0,
            "the GSO buffer went back to the pool"
        );
        // The buffer is reused as it is (not cleared): the packet still comes out whole.
        send(&mut dev, 30_000, 4);
        assert_eq!(dev.frames[0].len(), 30_014);
        assert!(dev.frames[0].data()[14..].iter().all(|&b| b == 4));
    }

    #[test]
    fn plain_packets_are_vecs() {
        let mut dev = QueueDevice::new(1500, Checksum::Tx);
        send(&mut dev, 100, 7);
        assert!(dev.frames.is_empty());
        assert_eq!(dev.tx, vec![vec![7u8; 100]]);
    }
}
