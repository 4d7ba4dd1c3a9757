//! Health checks of load-balanced forwards: a TCP connect to each endpoint, made the way a
//! forwarded connection is made.
//!
//! # Theory of operation
//!
//! A check is a forwarded connection with no client: NAT's TCP opens a smoltcp connection
//! from the gateway's address (source ports [`PORTS`], above Linux's ephemeral range, so they
//! do not meet a loopback client's) to the endpoint's address and the forward's (first) guest
//! port, exactly as for an accepted client, except that its host side is a [`ProbeStream`]:
//! no socket, only a shared cell. smoltcp reads from the host side only once the connection is
//! established, so the first read marks the check good (and answers end of stream); a flow
//! that ends without that read (the guest's RST, a port nothing listens on) marks it failed,
//! and so does no answer within `timeout_ms`. The checker then aborts the flow (an RST to
//! the guest, as HAProxy's checks do), so a check holds no connection in the guest.
//!
//! Everything runs on the gateway's event loop, in its tick: checks start when due, their
//! results are read at the next tick (a tick follows every batch of frames the gateway takes,
//! and the gateway's timer covers each check's next start and timeout: see
//! `Nat::poll_delay`). Nothing waits, nothing needs a thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use mio::event::Source;
use mio::{Interest, Registry, Token};

use super::flow::FlowId;
use super::host::HostStream;

/// Source ports of checks (cycled).
pub const PORTS: std::ops::RangeInclusive<u16> = 61000..=65535;

const CONNECTED: u8 = 1;
const DROPPED: u8 = 2;

/// What a health check asks of NAT's TCP.
pub(crate) enum ProbeOp {
    /// Open a connection from `from` to `to` whose host side is `stream`; its flow id.
    Start {
        /// Source address (the gateway's, a [`PORTS`] port).
        from: SocketAddr,
        /// The endpoint's address and the guest port.
        to: SocketAddr,
        /// The host side.
        stream: Box<dyn HostStream>,
    },
    /// Abort that connection (its result is in).
    Abort(FlowId),
}

/// The host side of a check's connection: no socket, a cell saying how far it got.
pub(crate) struct ProbeStream {
    cell: Arc<AtomicU8>,
}

/// A check in flight.
pub(crate) struct InFlight {
    cell: Arc<AtomicU8>,
    flow: FlowId,
    started: Instant,
}

impl ProbeStream {
    /// A host side and the cell its check reads.
    pub(crate) fn open() -> (Box<dyn HostStream>, Arc<AtomicU8>) {
        let cell = Arc::new(AtomicU8::new(0));
        (Box::new(ProbeStream { cell: cell.clone() }), cell)
    }
}

impl InFlight {
    /// A check started at `started` on flow `flow`, reporting through `cell`.
    pub(crate) fn new(cell: Arc<AtomicU8>, flow: FlowId, started: Instant) -> InFlight {
        InFlight {
            cell,
            flow,
            started,
        }
    }

    /// When it times out.
    pub(crate) fn deadline(&self, timeout: std::time::Duration) -> Instant {
        self.started + timeout
    }

    /// Its result, once there is one: `Some(good)`, and the flow to abort if it is still open.
    pub(crate) fn result(
        &self,
        now: Instant,
        timeout: std::time::Duration,
    ) -> Option<(bool, Option<FlowId>)> {
        let bits = self.cell.load(Ordering::Acquire);
        let open = (bits & DROPPED == 0).then_some(self.flow);
        if bits & CONNECTED != 0 {
            Some((true, open))
        } else if bits & DROPPED != 0 {
            Some((false, None))
        } else if now >= self.deadline(timeout) {
            Some((false, open))
        } else {
            None
        }
    }
}

impl Read for ProbeStream {
    /// Called once the connection is established: the check is good; end of stream.
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        self.cell.fetch_or(CONNECTED, Ordering::Release);
        Ok(0)
    }
}

impl Write for ProbeStream {
    /// Whatever the guest sends is dropped.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for ProbeStream {
    fn register(&mut self, _: &Registry, _: Token, _: Interest) -> io::Result<()> {
        Ok(())
    }
    fn reregister(&mut self, _: &Registry, _: Token, _: Interest) -> io::Result<()> {
        Ok(())
    }
    fn deregister(&mut self, _: &Registry) -> io::Result<()> {
        Ok(())
    }
}

impl HostStream for ProbeStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(None)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Err(io::ErrorKind::NotConnected.into())
    }
    fn shutdown(&self, _how: Shutdown) -> io::Result<()> {
        Ok(())
    }
    fn reset_on_close(&self) {}
}

impl Drop for ProbeStream {
    fn drop(&mut self) {
        self.cell.fetch_or(DROPPED, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn results() {
        let t0 = Instant::now();
        let to = Duration::from_millis(100);
        let (mut s, cell) = ProbeStream::open();
        let f = InFlight::new(cell.clone(), 7, t0);
        assert_eq!(f.result(t0, to), None, "pending");
        assert_eq!(s.read(&mut [0; 4]).expect("read"), 0, "end of stream");
        assert_eq!(f.result(t0, to), Some((true, Some(7))), "good; abort it");
        drop(s);
        assert_eq!(f.result(t0, to), Some((true, None)), "flow gone already");

        let (s, cell) = ProbeStream::open();
        let f = InFlight::new(cell, 8, t0);
        assert_eq!(f.result(t0 + to, to), Some((false, Some(8))), "timed out");
        drop(s);
        assert_eq!(f.result(t0, to), Some((false, None)), "refused: flow ended");
    }
}
