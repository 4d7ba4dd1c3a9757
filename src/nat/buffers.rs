//! NAT's TCP flow buffers: a flow's smoltcp socket gets [`BIG_BUF`] bytes each way
//! ([`BIG_BUF_JUMBO`] above MTU 9000) while the network's [`Budget`]
//! ([`super::NatConfig::tcp_buffer_budget`]) has room, else [`BUF`] ([`BUF_JUMBO`]); a big
//! flow gives its share back when it ends, and the heap is trimmed after it. The buffer is the
//! window each side sees (see `tcp.rs`).

use std::time::{Duration, Instant};

/// Buffer size each way per flow on links with an MTU up to 9000.
pub const BUF: usize = 128 * 1024;
/// Buffer size each way per flow on jumbo links (MTU over 9000): 128 KiB would leave only two
/// 64 KiB segments in flight (measured: forwards at MTU 65520 fell from 6.1 to 3.4 Gbit/s).
pub const BUF_JUMBO: usize = 256 * 1024;
/// Buffer size each way of a flow within the network's big-buffer budget (MTU up to 9000):
/// NAT download 0.45x -> 1.12x and egress 0.48x -> 0.75x the routed kernel path in an A/B on
/// this project's 2-vCPU machine (`bench/results/profile.md`).
pub const BIG_BUF: usize = 1024 * 1024;
/// [`BIG_BUF`] on jumbo links (MTU over 9000).
pub const BIG_BUF_JUMBO: usize = 2 * 1024 * 1024;

/// The per-flow buffer size for a link MTU.
pub fn buffer_for(mtu: usize) -> usize {
    if mtu > 9000 { BUF_JUMBO } else { BUF }
}

/// The per-flow buffer size for a link MTU within the big-buffer budget.
pub fn big_buffer_for(mtu: usize) -> usize {
    if mtu > 9000 { BIG_BUF_JUMBO } else { BIG_BUF }
}

/// Least time between two heap trims after big flows ended.
const TRIM_EVERY: Duration = Duration::from_millis(200);

/// The network's budget of big buffers: a new flow gets big ones while the bytes they need
/// (both ways) are left, and gives them back when it ends. Bounds what bulk flows may hold
/// (a guest opening many flows gets the regular size past it, never more memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Buffer size each way of a flow without a big share.
    small: usize,
    /// Buffer size each way of a flow with one.
    big: usize,
    /// Bytes of the budget left.
    left: usize,
    /// A big flow ended since the heap was last trimmed.
    trim: bool,
    /// When the heap was last trimmed.
    trimmed: Option<Instant>,
}

impl Budget {
    /// The budget of a network whose links have MTU `mtu`: `bytes` of big buffers.
    pub(crate) fn new(mtu: usize, bytes: usize) -> Budget {
        Budget {
            small: buffer_for(mtu),
            big: big_buffer_for(mtu),
            left: bytes,
            trim: false,
            trimmed: None,
        }
    }

    /// The buffer size for a new flow, and whether it took a share of the budget.
    pub(crate) fn take(&mut self) -> (usize, bool) {
        let need = 2 * self.big;
        if self.big > self.small && self.left >= need {
            self.left -= need;
            (self.big, true)
        } else {
            (self.small, false)
        }
    }

    /// A flow that took a share ended.
    pub(crate) fn give(&mut self) {
        self.left += 2 * self.big;
        self.trim = true;
    }

    /// Gives freed big buffers' memory back to the system ([`crate::sys::process::trim_heap`])
    /// when a big flow ended, at most every [`TRIM_EVERY`] (the rest waits for the next call).
    pub(crate) fn trim(&mut self, now: Instant) {
        if self.trim
            && self
                .trimmed
                .is_none_or(|t| now.saturating_duration_since(t) >= TRIM_EVERY)
        {
            self.trim = false;
            self.trimmed = Some(now);
            crate::sys::process::trim_heap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_buffers_go_while_the_budget_lasts_and_come_back() {
        let mut b = Budget {
            small: BUF,
            big: BIG_BUF,
            left: 2 * (2 * BIG_BUF) + 1,
            trim: false,
            trimmed: None,
        };
        assert_eq!(b.take(), (BIG_BUF, true));
        assert_eq!(b.take(), (BIG_BUF, true));
        assert_eq!(b.take(), (BUF, false), "past the budget: the regular size");
        b.give();
        assert!(b.trim, "a heap trim is due");
        let t0 = Instant::now();
        b.trim(t0);
        assert!(!b.trim && b.trimmed == Some(t0));
        b.give();
        b.trim(t0 + TRIM_EVERY / 2);
        assert!(
            b.trim,
            "not twice within TRIM_EVERY: left for the next call"
        );
        b.trim(t0 + TRIM_EVERY);
        assert!(!b.trim);
        b.left += 2 * BIG_BUF;
        assert_eq!(b.take(), (BIG_BUF, true), "a big flow's share came back");
        let mut none = Budget {
            small: BUF,
            big: BIG_BUF,
            left: 0,
            trim: false,
            trimmed: None,
        };
        assert_eq!(none.take(), (BUF, false));
        assert_eq!(big_buffer_for(65_520), BIG_BUF_JUMBO);
        assert_eq!(buffer_for(65_520), BUF_JUMBO);
    }
}
