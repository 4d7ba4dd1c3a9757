//! The gateway as a port of the engine: a [`Link`] whose far side is a [`Driver`], run by the
//! event loop that owns the port. No thread of its own.
//!
//! Frames the bridge sends to the gateway go through [`Link::send_batch`] straight into
//! [`Driver::frame_with`]; what the driver has to send (answers, NAT's segments) comes out of
//! [`Link::recv_batch`], so it is forwarded like any port's frames. Everything else the driver
//! waits for — NAT's host sockets, DNS answers from the worker threads (the `Waker`), its
//! timers (a `timerfd` armed at [`Driver::timeout`]) — is registered on an inner mio `Poll`,
//! whose epoll descriptor is the one the engine polls: the loop hears of host-side readiness
//! like of a readable link. After a `send_batch`, [`Link::wants_rx`] asks the loop to read the
//! port again in its next turn, so answers leave without a wake-up.
//!
//! Before this, each gateway ran on its own thread behind an in-process queue: every batch
//! crossed threads twice (two wake-ups), which dominated NAT's profile at MTU 1500.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::{Driver, GATEWAY_OFFLOADS, WAKE};
use crate::frame::{Frame, FramePool};
use crate::link::{Link, LinkCaps, LinkError, RecvStats, SendStats};
use crate::sys::timer::Timer;

/// The timer's token on the inner poll (NAT's tokens carry their kind in the top bits).
const TIMER: Token = Token(2);

/// A gateway [`Driver`] as an engine port. See the module docs.
pub(crate) struct GatewayPort {
    d: Driver,
    poll: Poll,
    events: Events,
    timer: Timer,
    /// When the timer fires next (`None`: disarmed).
    armed: Option<Instant>,
    /// Frames were handed to the driver since the last `recv_batch`.
    fed: bool,
}

impl GatewayPort {
    /// Wraps `d`, whose host sockets and waker are registered on `poll`.
    pub(crate) fn new(mut d: Driver, poll: Poll) -> io::Result<GatewayPort> {
        let timer = Timer::new()?;
        poll.registry()
            .register(&mut SourceFd(&timer.as_raw_fd()), TIMER, Interest::READABLE)?;
        d.announce();
        Ok(GatewayPort {
            d,
            poll,
            events: Events::with_capacity(256),
            timer,
            armed: None,
            fed: false,
        })
    }

    /// Arms the timer for `at`, unless it fires at most 1 ms before that already (an early
    /// tick is harmless: it re-arms).
    fn arm(&mut self, at: Instant, now: Instant) {
        if let Some(a) = self.armed
            && a <= at
            && at - a < Duration::from_millis(1)
        {
            return;
        }
        let d = at
            .saturating_duration_since(now)
            .max(Duration::from_micros(1));
        match self.timer.arm_in(d) {
            Ok(()) => self.armed = Some(at),
            Err(e) => tracing::warn!("gateway timer: {e}"),
        }
    }

    /// Host-side work: readiness of NAT's sockets, DNS answers, an expired timer, control
    /// commands, then the driver's timers and TCP machinery; re-arms the timer.
    fn host_pass(&mut self, now: Instant) -> Result<(), LinkError> {
        if let Err(e) = self.poll.poll(&mut self.events, Some(Duration::ZERO))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(LinkError::Gone(e));
        }
        let mut fired = false;
        for ev in self.events.iter() {
            match ev.token() {
                WAKE => {}
                TIMER => fired = true,
                t => self.d.host_ready(t, now),
            }
        }
        if fired {
            self.clear_timer();
        }
        self.d.commands();
        self.d.tick(now);
        self.fed = false;
        let next = now + self.d.timeout(now);
        self.arm(next, now);
        Ok(())
    }

    /// Clears an expiry of the timer (its readiness is level-triggered by the count).
    fn clear_timer(&mut self) {
        self.timer.clear();
        self.armed = None;
    }
}

impl Link for GatewayPort {
    fn kind(&self) -> &'static str {
        crate::bridge::GATEWAY_KIND
    }

    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }

    fn caps(&self) -> LinkCaps {
        LinkCaps {
            vnet_hdr: false,
            max_frame: self.d.max_frame,
            tx: GATEWAY_OFFLOADS,
            rx_gso: true,
        }
    }

    fn recv_batch(
        &mut self,
        _pool: &FramePool,
        out: &mut Vec<Frame>,
        max: usize,
    ) -> Result<RecvStats, LinkError> {
        // A full batch already waiting is handed out first: the host-side pass runs when the
        // queue is short, once per batch of answers rather than once per call.
        if self.d.tx.len() < max {
            self.host_pass(Instant::now())?;
        }
        // The driver queues only frames within its MTU or GSO limit (`Driver::queue`).
        let take = self.d.tx.len().min(max);
        out.extend(self.d.tx.drain(..take));
        Ok(RecvStats {
            frames: take,
            oversize: 0,
            drained: self.d.tx.is_empty(),
        })
    }

    fn send_batch(&mut self, queue: &mut VecDeque<Frame>) -> Result<SendStats, LinkError> {
        let now = Instant::now();
        let mut st = SendStats::default();
        for f in queue.drain(..) {
            st.frames += 1;
            st.bytes += f.len();
            self.d.frame_with(f.data(), f.meta, now);
        }
        self.fed |= st.frames > 0;
        Ok(st)
    }

    fn wants_rx(&self) -> bool {
        self.fed || !self.d.tx.is_empty()
    }
}
