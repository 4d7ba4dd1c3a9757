//! One event loop's body: its ports (link, pending batch, offloads), the readiness loop, the
//! receive budget, the flushes and the control commands (see the module docs of
//! [`crate::engine`] for the theory of operation).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{BATCH, Core, LoopCmd, RX_BUDGET, SWEEP_EVERY, WAKER};
use crate::bridge::{DropReason, Limiter, Port, PortId};
use crate::capture::Direction;
use crate::frame::Frame;
use crate::link::Link;
use crate::offload::{self, Offloads};

struct LocalPort {
    port: Arc<Port>,
    link: Box<dyn Link>,
    /// What the link takes on transmit as it is; other offloaded frames are adapted.
    tx_offloads: Offloads,
    pending: VecDeque<Frame>,
    /// The rate limit of frames read from the link (`None`: unlimited, the usual case).
    rx_limit: Option<Limiter>,
    /// The rate limit of frames written to the link.
    tx_limit: Option<Limiter>,
    /// The frame taken from the TX ring that waits for `tx_limit`'s tokens.
    held: Option<Frame>,
    /// A deadline is armed for the rx (`.0`) / tx (`.1`) limit.
    armed: (bool, bool),
}

/// A rate-limited port's deadline: when to read it again (`rx`) or flush it (`!rx`).
struct Deadline {
    at: Instant,
    slot: usize,
    rx: bool,
}

impl Deadline {
    /// Arms one wake-up `wait_ns` from now for a throttled direction (`rx` or tx) of `slot`,
    /// unless `armed` says one is pending already.
    fn arm(deadlines: &mut Vec<Deadline>, armed: &mut bool, wait_ns: u64, slot: usize, rx: bool) {
        if !*armed {
            *armed = true;
            deadlines.push(Deadline {
                at: Instant::now() + Duration::from_nanos(wait_ns),
                slot,
                rx,
            });
        }
    }
}

/// Nanoseconds since `epoch` (the loop's monotonic time base for the token buckets).
fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub(super) struct LoopState {
    idx: usize,
    poll: Poll,
    shared: Arc<Core>,
    cmds: Receiver<LoopCmd>,
    slots: Vec<Option<LocalPort>>,
    by_id: HashMap<PortId, usize>,
    local_dirty: Vec<PortId>,
    remote_wake: Vec<bool>,
    again: Vec<usize>,
    rx_buf: Vec<Frame>,
    /// Rate-limited ports waiting for tokens (few; none without limits).
    deadlines: Vec<Deadline>,
    epoch: Instant,
}

fn token_of(slot: usize) -> Token {
    Token(slot + 1)
}

impl LoopState {
    pub(super) fn new(idx: usize, poll: Poll, shared: Arc<Core>, cmds: Receiver<LoopCmd>) -> Self {
        let n = shared.loops.len();
        LoopState {
            idx,
            poll,
            shared,
            cmds,
            slots: Vec::new(),
            by_id: HashMap::new(),
            local_dirty: Vec::new(),
            remote_wake: vec![false; n],
            again: Vec::new(),
            rx_buf: Vec::with_capacity(BATCH),
            deadlines: Vec::new(),
            epoch: Instant::now(),
        }
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + SWEEP_EVERY;
        let busy_poll = self.shared.cfg.busy_poll;
        // Until when the loop spins instead of sleeping (busy-polling; never when it is zero).
        let mut spin_until: Option<Instant> = None;
        loop {
            // Loop 0 has a timer (the FDB sweep), and a loop with rate-limited ports waiting for
            // tokens wakes at the earliest of their deadlines; otherwise a loop sleeps until an
            // event. A loop with ports to read again, or within its busy-polling window, does
            // not sleep.
            let timeout =
                if !self.again.is_empty() || spin_until.is_some_and(|t| Instant::now() < t) {
                    Some(Duration::ZERO)
                } else {
                    let sweep = (self.idx == 0).then_some(next_sweep);
                    let limit = self.deadlines.iter().map(|d| d.at).min();
                    sweep
                        .into_iter()
                        .chain(limit)
                        .min()
                        .map(|t| t.saturating_duration_since(Instant::now()))
                };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing::error!(loop_idx = self.idx, "poll failed: {e}");
                break;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let turn = Instant::now();
            if !busy_poll.is_zero() && !events.is_empty() {
                spin_until = Some(Instant::now() + busy_poll);
            }
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.commands();
                    self.flush_remote_filled();
                    continue;
                }
                let slot = ev.token().0 - 1;
                if ev.is_readable() || ev.is_error() || ev.is_read_closed() {
                    self.rx(slot);
                }
                if ev.is_writable() {
                    self.flush(slot);
                }
            }
            if !self.deadlines.is_empty() {
                self.deadlines_due();
            }
            let again = std::mem::take(&mut self.again);
            for slot in again {
                self.rx(slot);
            }
            self.end_of_batch();
            if self.idx == 0 && Instant::now() >= next_sweep {
                let n = self.shared.bridge.sweep();
                if n > 0 {
                    tracing::debug!("aged out {n} FDB entries");
                }
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            if let Some(l) = self.shared.loops.get(self.idx) {
                let ns = u64::try_from(turn.elapsed().as_nanos()).unwrap_or(u64::MAX);
                l.busy_ns.fetch_add(ns, Ordering::Relaxed);
            }
        }
        // Dropping the slots closes every link of this loop (and ends their captures).
        for lp in self.slots.iter().flatten() {
            lp.port.capture.close();
        }
        self.slots.clear();
    }

    fn commands(&mut self) {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                LoopCmd::Add { port, link, reply } => {
                    let r = self.add(port, link);
                    let _ = reply.send(r);
                }
                LoopCmd::Remove { id, reply } => {
                    if let Some(slot) = self.by_id.get(&id).copied()
                        && let Some(lp) = self.drop_slot(slot)
                    {
                        // Nothing reads the link any more: whatever was learned for the port
                        // since the bridge removed it goes now, for good.
                        self.shared.bridge.forget_removed(&lp.port);
                    }
                    let _ = reply.send(());
                }
                LoopCmd::Limit { id, reply } => {
                    if let Some(slot) = self.by_id.get(&id).copied() {
                        self.relimit(slot);
                    }
                    let _ = reply.send(());
                }
            }
        }
    }

    /// Rebuilds a port's token buckets from its current limits (levels carry over), then
    /// reads and flushes what may have waited for the old ones.
    fn relimit(&mut self, slot: usize) {
        let now = nanos_since(self.epoch);
        let Some(Some(lp)) = self.slots.get_mut(slot) else {
            return;
        };
        let lim = lp.port.rate_limit();
        lp.rx_limit = Limiter::reconfigure(lp.rx_limit.take(), lim.and_then(|l| l.rx()), now);
        lp.tx_limit = Limiter::reconfigure(lp.tx_limit.take(), lim.and_then(|l| l.tx()), now);
        if !self.again.contains(&slot) {
            self.again.push(slot);
        }
        self.flush(slot);
    }

    /// Serves the rate-limited ports whose deadline has come.
    fn deadlines_due(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        self.deadlines.retain(|d| {
            let keep = d.at > now;
            if !keep {
                due.push((d.slot, d.rx));
            }
            keep
        });
        for (slot, rx) in due {
            if let Some(Some(lp)) = self.slots.get_mut(slot) {
                if rx {
                    lp.armed.0 = false;
                } else {
                    lp.armed.1 = false;
                }
            }
            if rx {
                self.rx(slot);
            } else {
                self.flush(slot);
            }
        }
    }

    fn add(&mut self, port: Arc<Port>, link: Box<dyn Link>) -> io::Result<()> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(s) => s,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let fd = link.as_raw_fd();
        self.poll.registry().register(
            &mut SourceFd(&fd),
            token_of(slot),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.by_id.insert(port.id, slot);
        self.shared.loops[self.idx]
            .ports
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(port = %port.name, kind = link.kind(), loop_idx = self.idx, "port up");
        let tx_offloads = link.caps().tx;
        let now = nanos_since(self.epoch);
        let lim = port.rate_limit();
        self.slots[slot] = Some(LocalPort {
            rx_limit: lim.and_then(|l| l.rx()).map(|l| l.start(now)),
            tx_limit: lim.and_then(|l| l.tx()).map(|l| l.start(now)),
            port,
            link,
            tx_offloads,
            pending: VecDeque::with_capacity(BATCH),
            held: None,
            armed: (false, false),
        });
        // Frames may have arrived before registration.
        self.again.push(slot);
        // The bridge knew the port before this loop did: frames forwarded to it in between
        // sit in its ring, and the flags that ask for a flush were raised for a port no loop
        // had (`end_of_batch` skipped it), so they would stay raised and no later frame would
        // ask again. Lower them and flush what waits.
        if let Some(Some(lp)) = self.slots.get(slot) {
            lp.port.dirty_local.store(false, Ordering::Relaxed);
            lp.port.tx_pending.store(false, Ordering::Release);
        }
        self.flush(slot);
        Ok(())
    }

    fn drop_slot(&mut self, slot: usize) -> Option<LocalPort> {
        let lp = self.slots.get_mut(slot)?.take()?;
        self.deadlines.retain(|d| d.slot != slot);
        let fd = lp.link.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        // Nothing more is read from or written to it: its captures end.
        lp.port.capture.close();
        self.by_id.remove(&lp.port.id);
        self.shared.loops[self.idx]
            .ports
            .fetch_sub(1, Ordering::Relaxed);
        Some(lp)
    }

    /// The link failed for good: remove the port everywhere.
    fn fail(&mut self, slot: usize, err: &crate::link::LinkError) {
        if let Some(lp) = self.drop_slot(slot) {
            if err.is_orderly_close() {
                tracing::info!(port = %lp.port.name, "peer closed, port removed: {err}");
            } else {
                tracing::warn!(port = %lp.port.name, "link failed, port removed: {err}");
            }
            self.shared.bridge.remove_port(lp.port.id);
        }
    }

    fn rx(&mut self, slot: usize) {
        let shared = self.shared.clone();
        let bridge = &shared.bridge;
        for _ in 0..RX_BUDGET {
            let Some(Some(lp)) = self.slots.get_mut(slot) else {
                return;
            };
            // A rate-limited port is read only as far as its tokens go; without them it is
            // not read at all (the kernel's queue holds its frames) until its deadline.
            let max = match &mut lp.rx_limit {
                None => BATCH,
                Some(l) => {
                    let now = nanos_since(self.epoch);
                    match l.allowance(BATCH, shared.cfg.max_frame, now) {
                        Ok(n) => n,
                        Err(wait) => {
                            Deadline::arm(&mut self.deadlines, &mut lp.armed.0, wait, slot, true);
                            return;
                        }
                    }
                }
            };
            self.rx_buf.clear();
            let st = match lp.link.recv_batch(bridge.pool(), &mut self.rx_buf, max) {
                Ok(st) => st,
                Err(e) if e.is_fatal() => {
                    self.fail(slot, &e);
                    return;
                }
                Err(e) => {
                    tracing::debug!(port = %lp.port.name, "receive error: {e}");
                    return;
                }
            };
            if let Some(l) = &mut lp.rx_limit {
                let bytes: usize = self.rx_buf.iter().map(Frame::len).sum();
                l.charge((self.rx_buf.len() + st.oversize) as u64, bytes as u64);
            }
            let port = lp.port.clone();
            if st.oversize > 0 {
                let c = &port.counters;
                c.rx_frames.fetch_add(st.oversize as u64, Ordering::Relaxed);
                c.drop_n(DropReason::Oversize, st.oversize as u64);
            }
            let topo = bridge.topology();
            let now = bridge.now();
            let (idx, local_dirty, remote_wake) =
                (self.idx, &mut self.local_dirty, &mut self.remote_wake);
            let mut mark = |q: &Arc<Port>| {
                if q.owner == idx {
                    if !q.dirty_local.swap(true, Ordering::Relaxed) {
                        local_dirty.push(q.id);
                    }
                } else if !q.tx_pending.swap(true, Ordering::AcqRel)
                    && let Some(w) = remote_wake.get_mut(q.owner)
                {
                    *w = true;
                }
            };
            if port.capture.is_active() {
                port.capture.record(Direction::Rx, &mut self.rx_buf);
            }
            for f in self.rx_buf.drain(..) {
                bridge.forward(&topo, &port, f, now, &mut mark);
            }
            if st.drained {
                return;
            }
        }
        // Once: a busy port read from its event and from this list in the same turn must not
        // be queued twice (the list would grow every turn, and with it the frames read
        // between two flushes, until the egress rings overflowed).
        if !self.again.contains(&slot) {
            self.again.push(slot);
        }
    }

    fn end_of_batch(&mut self) {
        let dirty = std::mem::take(&mut self.local_dirty);
        for id in &dirty {
            if let Some(&slot) = self.by_id.get(id) {
                if let Some(Some(lp)) = self.slots.get(slot) {
                    lp.port.dirty_local.store(false, Ordering::Relaxed);
                }
                self.flush(slot);
            }
        }
        self.local_dirty = dirty;
        self.local_dirty.clear();
        for (i, w) in self.remote_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                let _ = self.shared.loops[i].waker.wake();
            }
        }
    }

    fn flush_remote_filled(&mut self) {
        for slot in 0..self.slots.len() {
            let pending = match &self.slots[slot] {
                Some(lp) => lp.port.tx_pending.swap(false, Ordering::AcqRel),
                None => false,
            };
            if pending {
                self.flush(slot);
            }
        }
    }

    fn flush(&mut self, slot: usize) {
        let Some(Some(lp)) = self.slots.get_mut(slot) else {
            return;
        };
        let c = &lp.port.counters;
        // One clock read per flush of a rate-limited port, none for the others.
        let now = lp.tx_limit.as_ref().map(|_| nanos_since(self.epoch));
        loop {
            if lp.pending.is_empty() {
                let pool = self.shared.bridge.pool();
                while lp.pending.len() < BATCH {
                    let (f, was_held) = match lp.held.take() {
                        Some(f) => (f, true),
                        None => match lp.port.tx.pop() {
                            Some(f) => (f, false),
                            None => break,
                        },
                    };
                    if let (Some(l), Some(now)) = (&mut lp.tx_limit, now)
                        && let Err(wait) = l.admit(f.len(), now)
                    {
                        // It waits for tokens, and the ring behind it (full: `rate_limited`).
                        lp.held = Some(f);
                        lp.port.throttled.store(true, Ordering::Relaxed);
                        Deadline::arm(&mut self.deadlines, &mut lp.armed.1, wait, slot, false);
                        break;
                    }
                    if was_held {
                        lp.port.throttled.store(false, Ordering::Relaxed);
                    }
                    if let Err(e) = offload::adapt(f, lp.tx_offloads, pool, &mut lp.pending) {
                        c.drop_n(DropReason::BadOffload, 1);
                        tracing::trace!(port = %lp.port.name, "offloaded frame dropped: {e}");
                    }
                }
                if lp.pending.is_empty() {
                    return;
                }
                if lp.port.capture.is_active() {
                    lp.port.capture.record(Direction::Tx, &mut lp.pending);
                }
            }
            match lp.link.send_batch(&mut lp.pending) {
                Ok(st) => {
                    c.tx_frames.fetch_add(st.frames as u64, Ordering::Relaxed);
                    c.tx_bytes.fetch_add(st.bytes as u64, Ordering::Relaxed);
                    if st.errors > 0 {
                        c.drop_n(DropReason::LinkError, st.errors as u64);
                    }
                    if lp.link.wants_rx() && !self.again.contains(&slot) {
                        // It answered in-process (the gateway): read it next turn.
                        self.again.push(slot);
                    }
                    if !lp.pending.is_empty() {
                        // Would block: wait for the writable event.
                        return;
                    }
                }
                Err(e) if e.is_fatal() => {
                    self.fail(slot, &e);
                    return;
                }
                Err(e) => {
                    c.drop_n(DropReason::LinkError, lp.pending.len() as u64);
                    lp.pending.clear();
                    tracing::debug!(port = %lp.port.name, "send error: {e}");
                    return;
                }
            }
        }
    }
}
