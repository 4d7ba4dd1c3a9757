//! Per-port rate limits: token buckets for bytes and packets, each direction (as Firecracker's
//! net device has). Pure: time comes in as monotonic nanoseconds; the event loop owns one
//! [`Limiter`] per limited direction of each of its ports and asks it before it reads from the
//! link (`rx`) or hands a frame to it (`tx`).
//!
//! # Theory of operation
//!
//! A [`TokenBucket`] holds up to `capacity` units (bytes or packets) and gains `rate` units a
//! second. Its level is kept in units × 10⁹ (unit-nanoseconds): a refill after `dt` ns adds
//! exactly `dt × rate`, so integer math loses nothing between refills, however often they
//! happen (no float, no drift). A frame of `cost` units passes when the bucket holds
//! `min(cost, capacity)`; it then takes its whole cost, which may leave the level below zero.
//! So a frame larger than the bucket still passes once the bucket is full (no starvation), and
//! the debt it leaves makes the next frames wait: over any interval, what passes is at most
//! `capacity + rate × interval` plus one frame.
//!
//! When a frame may not pass, [`TokenBucket::wait_ns`] says how long until it may: the event
//! loop arms a deadline for then (its poll timeout) instead of polling.
//!
//! Direction is the port's link's point of view as the per-port counters see it: `rx` limits
//! the frames usernet receives from the port's link, `tx` the frames usernet sends to it.

use serde::{Deserialize, Serialize};

/// Level units per unit: the level is kept in unit-nanoseconds.
const SCALE: i128 = 1_000_000_000;
/// Most Mbit/s a limit may name (1 Tbit/s).
pub const MAX_MBIT: u64 = 1_000_000;
/// Most packets/s a limit may name.
pub const MAX_PPS: u64 = 1_000_000_000;
/// Largest burst, in KiB (1 GiB).
pub const MAX_BURST_KIB: u64 = 1 << 20;
/// Smallest default byte burst: 256 KiB (four 64 KiB GSO frames).
pub const MIN_BURST_BYTES: u64 = 256 * 1024;
/// Smallest packet burst.
pub const MIN_BURST_PACKETS: u64 = 16;
/// The default burst holds this many nanoseconds at the rate (10 ms).
pub const BURST_NS: u64 = 10_000_000;

/// A port's rate limits (`rate_limit = { ... }` on `[[port]]`, the `port_limit` API op,
/// `usernet ctl port limit`). Zero (or absent) is unlimited. `rx` is what usernet receives from
/// the port's link, `tx` what it sends to it (as the port's `rx_*`/`tx_*` counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimit {
    /// Mbit/s (10⁶ bits) of frames received from the link; 0: unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub rx_mbit: u64,
    /// Mbit/s of frames sent to the link; 0: unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub tx_mbit: u64,
    /// Frames/s received from the link; 0: unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub rx_pps: u64,
    /// Frames/s sent to the link; 0: unlimited.
    #[serde(skip_serializing_if = "is_zero")]
    pub tx_pps: u64,
    /// Byte bucket size in KiB, each direction; 0: the default, the larger of 256 KiB and
    /// 10 ms at the rate.
    #[serde(skip_serializing_if = "is_zero")]
    pub burst_kib: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl RateLimit {
    /// A limit of `rx_mbit`/`tx_mbit` Mbit/s and `rx_pps`/`tx_pps` frames/s (0: unlimited),
    /// with the default burst.
    pub fn new(rx_mbit: u64, tx_mbit: u64, rx_pps: u64, tx_pps: u64) -> Self {
        RateLimit {
            rx_mbit,
            tx_mbit,
            rx_pps,
            tx_pps,
            burst_kib: 0,
        }
    }

    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        self.rx_mbit == 0 && self.tx_mbit == 0 && self.rx_pps == 0 && self.tx_pps == 0
    }

    /// `None` when nothing is limited (the port then pays nothing), else itself.
    pub fn normalized(self) -> Option<Self> {
        (!self.is_unlimited()).then_some(self)
    }

    /// Checks the ranges: the field (relative, e.g. `rx_mbit`) and the reason.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (field, v, max, unit) in [
            ("rx_mbit", self.rx_mbit, MAX_MBIT, "Mbit/s"),
            ("tx_mbit", self.tx_mbit, MAX_MBIT, "Mbit/s"),
            ("rx_pps", self.rx_pps, MAX_PPS, "packets/s"),
            ("tx_pps", self.tx_pps, MAX_PPS, "packets/s"),
            ("burst_kib", self.burst_kib, MAX_BURST_KIB, "KiB"),
        ] {
            if v > max {
                return Err((field, format!("{v} is above the most, {max} {unit}")));
            }
        }
        Ok(())
    }

    /// The byte bucket's size for a rate of `mbit`: `burst_kib`, or the default (the larger of
    /// 256 KiB and 10 ms at the rate: the loop's timer wakes it within a millisecond or two, and
    /// a bucket that filled up in less would cap the rate below the limit; 256 KiB lets a few
    /// 64 KiB GSO frames through back to back).
    pub fn burst_bytes(&self, mbit: u64) -> u64 {
        if self.burst_kib > 0 {
            return self.burst_kib * 1024;
        }
        (bytes_per_sec(mbit) * BURST_NS / 1_000_000_000).max(MIN_BURST_BYTES)
    }

    /// The limiter of frames received from the link; `None` when that way is unlimited.
    pub fn rx(&self) -> Option<Limiter> {
        Limiter::new(self.rx_mbit, self.rx_pps, self.burst_bytes(self.rx_mbit))
    }

    /// The limiter of frames sent to the link; `None` when that way is unlimited.
    pub fn tx(&self) -> Option<Limiter> {
        Limiter::new(self.tx_mbit, self.tx_pps, self.burst_bytes(self.tx_mbit))
    }
}

/// Bytes per second of `mbit` Mbit/s.
pub fn bytes_per_sec(mbit: u64) -> u64 {
    mbit.saturating_mul(125_000)
}

/// One token bucket. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    /// Units gained per second (at least 1).
    rate: u64,
    /// Most units held.
    capacity: u64,
    /// Units × [`SCALE`]; below zero after a frame larger than what was held.
    level: i128,
    /// When the level was last brought up to date (ns, monotonic).
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket of `capacity` units gaining `rate` a second, as of `now_ns`.
    pub fn new(rate: u64, capacity: u64, now_ns: u64) -> Self {
        let capacity = capacity.max(1);
        TokenBucket {
            rate: rate.max(1),
            capacity,
            level: i128::from(capacity) * SCALE,
            last_ns: now_ns,
        }
    }

    /// Units gained per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Most units held.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whole units held now (negative: debt).
    pub fn level(&self) -> i64 {
        i64::try_from(self.level / SCALE).unwrap_or(i64::MIN)
    }

    /// Brings the level up to `now_ns` (a time before the last one changes nothing).
    pub fn refill(&mut self, now_ns: u64) {
        if now_ns <= self.last_ns {
            return;
        }
        let dt = i128::from(now_ns - self.last_ns);
        let cap = i128::from(self.capacity) * SCALE;
        self.level = (self.level + dt * i128::from(self.rate)).min(cap);
        self.last_ns = now_ns;
    }

    /// What the level must reach for `cost` units to pass.
    fn threshold(&self, cost: u64) -> i128 {
        i128::from(cost.min(self.capacity)) * SCALE
    }

    /// True when `cost` units may pass now (after [`Self::refill`]).
    pub fn ready(&self, cost: u64) -> bool {
        self.level >= self.threshold(cost)
    }

    /// Takes `cost` units (the level may go below zero).
    pub fn take(&mut self, cost: u64) {
        self.level -= i128::from(cost) * SCALE;
    }

    /// Nanoseconds until `cost` units may pass (0: now).
    pub fn wait_ns(&self, cost: u64) -> u64 {
        let need = self.threshold(cost) - self.level;
        if need <= 0 {
            return 0;
        }
        let rate = i128::from(self.rate);
        u64::try_from((need + rate - 1) / rate).unwrap_or(u64::MAX)
    }

    /// Whole units that may pass now, at least `0`.
    fn whole(&self) -> u64 {
        u64::try_from(self.level.max(0) / SCALE).unwrap_or(u64::MAX)
    }

    /// The same bucket with a new rate and capacity: the level carries over (clamped to the
    /// new capacity; debt stays), so a lowered limit bites at once.
    fn reconfigured(&self, rate: u64, capacity: u64) -> Self {
        let mut b = TokenBucket::new(rate, capacity, self.last_ns);
        b.level = self.level.min(b.level);
        b
    }
}

/// The limits of one direction of a port: a byte bucket, a packet bucket, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limiter {
    bytes: Option<TokenBucket>,
    packets: Option<TokenBucket>,
}

impl Limiter {
    /// The limiter of `mbit` Mbit/s and `pps` frames/s (0: that one unlimited) with a byte
    /// bucket of `burst_bytes`; `None` when both are 0. Its buckets start full at time 0: call
    /// [`Self::start`] with the clock's now.
    pub fn new(mbit: u64, pps: u64, burst_bytes: u64) -> Option<Self> {
        let bytes = (mbit > 0).then(|| TokenBucket::new(bytes_per_sec(mbit), burst_bytes, 0));
        let packets = (pps > 0).then(|| {
            TokenBucket::new(
                pps,
                (pps.saturating_mul(BURST_NS) / 1_000_000_000).max(MIN_BURST_PACKETS),
                0,
            )
        });
        (bytes.is_some() || packets.is_some()).then_some(Limiter { bytes, packets })
    }

    /// Starts the clock at `now_ns` (buckets full).
    pub fn start(mut self, now_ns: u64) -> Self {
        for b in self.buckets_mut() {
            b.last_ns = now_ns;
        }
        self
    }

    fn buckets_mut(&mut self) -> impl Iterator<Item = &mut TokenBucket> {
        self.bytes.iter_mut().chain(self.packets.iter_mut())
    }

    /// The byte bucket, if bytes are limited.
    pub fn bytes(&self) -> Option<&TokenBucket> {
        self.bytes.as_ref()
    }

    /// The packet bucket, if packets are limited.
    pub fn packets(&self) -> Option<&TokenBucket> {
        self.packets.as_ref()
    }

    /// One frame of `len` bytes at `now_ns`: `Ok` when it may pass (its cost is taken), else
    /// `Err(ns)` to wait before asking again.
    pub fn admit(&mut self, len: usize, now_ns: u64) -> Result<(), u64> {
        let len = len as u64;
        let mut wait = 0;
        if let Some(b) = &mut self.bytes {
            b.refill(now_ns);
            wait = b.wait_ns(len);
        }
        if let Some(p) = &mut self.packets {
            p.refill(now_ns);
            wait = wait.max(p.wait_ns(1));
        }
        if wait > 0 {
            return Err(wait);
        }
        self.charge(1, len);
        Ok(())
    }

    /// How many frames (at most `max`, at least 1) may be read from the link now, their size
    /// unknown until read: `Err(ns)` to wait first. Charge what was read with [`Self::charge`]
    /// (the byte bucket may go into debt by the batch; the next read waits for it).
    pub fn allowance(&mut self, max: usize, mtu: usize, now_ns: u64) -> Result<usize, u64> {
        let mut n = max.max(1) as u64;
        let mut wait = 0;
        if let Some(b) = &mut self.bytes {
            b.refill(now_ns);
            // Ready for one full-size frame (or a full bucket): then as many as fit.
            wait = b.wait_ns(mtu as u64);
            n = n.min((b.whole() / (mtu.max(1) as u64)).max(1));
        }
        if let Some(p) = &mut self.packets {
            p.refill(now_ns);
            wait = wait.max(p.wait_ns(1));
            n = n.min(p.whole().max(1));
        }
        if wait > 0 {
            return Err(wait);
        }
        Ok(usize::try_from(n).unwrap_or(max))
    }

    /// Takes the cost of `frames` frames of `bytes` bytes in all.
    pub fn charge(&mut self, frames: u64, bytes: u64) {
        if let Some(b) = &mut self.bytes {
            b.take(bytes);
        }
        if let Some(p) = &mut self.packets {
            p.take(frames);
        }
    }

    /// The limiter for new settings, carrying the levels of this one over (see
    /// [`TokenBucket`]); `None` when the new settings limit nothing.
    pub fn reconfigure(old: Option<Self>, new: Option<Self>, now_ns: u64) -> Option<Self> {
        let new = new?.start(now_ns);
        let Some(old) = old else { return Some(new) };
        let carry = |o: Option<TokenBucket>, n: Option<TokenBucket>| match (o, n) {
            (Some(mut o), Some(n)) => {
                o.refill(now_ns);
                Some(o.reconfigured(n.rate, n.capacity))
            }
            (_, n) => n,
        };
        Some(Limiter {
            bytes: carry(old.bytes, new.bytes),
            packets: carry(old.packets, new.packets),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// Sends `len`-byte frames as fast as the limiter lets them for `secs` of simulated time,
    /// asking again exactly when told to; returns (frames, bytes) that passed.
    fn run(l: &mut Limiter, len: usize, start: u64, secs: u64) -> (u64, u64) {
        let (mut frames, mut bytes, mut now) = (0, 0, start);
        while now < start + secs * S {
            match l.admit(len, now) {
                Ok(()) => {
                    frames += 1;
                    bytes += len as u64;
                }
                Err(w) => {
                    assert!(w > 0);
                    now += w;
                }
            }
        }
        (frames, bytes)
    }

    #[test]
    fn byte_rate_over_simulated_time() {
        let lim = RateLimit::new(0, 100, 0, 0);
        let mut l = lim.tx().expect("limited").start(0);
        assert!(lim.rx().is_none());
        let (_, bytes) = run(&mut l, 1500, 0, 10);
        // 100 Mbit/s = 12.5 MB/s; 10 s plus the 256 KiB burst, within one frame.
        let want = 12_500_000 * 10 + MIN_BURST_BYTES;
        assert!(bytes.abs_diff(want) <= 1500, "{bytes} vs {want}");
    }

    #[test]
    fn many_small_refills_do_not_drift() {
        // A slow rate refilled every microsecond for a second loses nothing.
        let mut b = TokenBucket::new(3, 10, 0);
        b.take(10);
        for t in 1..=1_000_000u64 {
            b.refill(t * 1000);
        }
        // 1 s at 3/s: exactly 3 units back.
        let mut c = b.clone();
        c.refill(S);
        assert_eq!(c.level(), 3);
        assert_eq!(b.level(), 3);
    }

    #[test]
    fn burst_passes_at_once_then_the_rate() {
        let lim = RateLimit {
            tx_mbit: 8, // 1 MB/s
            burst_kib: 64,
            ..Default::default()
        };
        let mut l = lim.tx().expect("limited").start(5 * S);
        let mut n = 0;
        while l.admit(1024, 5 * S).is_ok() {
            n += 1;
        }
        assert_eq!(n, 64, "the 64 KiB burst at once");
        // Then one 1 KiB frame every 1.024 ms.
        let w = l.admit(1024, 5 * S).expect_err("empty");
        assert_eq!(w, 1_024_000);
        assert!(l.admit(1024, 5 * S + w - 1).is_err());
        assert!(l.admit(1024, 5 * S + w).is_ok());
        assert_eq!(lim.burst_bytes(0), 64 * 1024);
    }

    #[test]
    fn default_burst_is_256k_or_10ms() {
        let lim = RateLimit::default();
        assert_eq!(lim.burst_bytes(100), MIN_BURST_BYTES);
        // 10 Gbit/s: 10 ms = 12.5 MB.
        assert_eq!(lim.burst_bytes(10_000), 12_500_000);
    }

    #[test]
    fn packet_rate() {
        let lim = RateLimit::new(0, 0, 0, 1000);
        let mut l = lim.tx().expect("limited").start(0);
        let (frames, _) = run(&mut l, 64, 0, 5);
        assert!(frames.abs_diff(5000 + MIN_BURST_PACKETS) <= 1, "{frames}");
        // Both buckets: the tighter one wins.
        let lim = RateLimit::new(0, 1, 0, 1000); // 125 kB/s of 1000-byte frames: 125/s
        let mut l = lim.tx().expect("limited").start(0);
        let (frames, _) = run(&mut l, 1000, 0, 4);
        let want = 125 * 4 + MIN_BURST_BYTES / 1000;
        assert!(frames.abs_diff(want) <= 1, "{frames} vs {want}");
    }

    #[test]
    fn a_frame_larger_than_the_bucket_passes_and_leaves_debt() {
        let lim = RateLimit {
            tx_mbit: 8,
            burst_kib: 1,
            ..Default::default()
        };
        let mut l = lim.tx().expect("limited").start(0);
        // A 64 KiB GSO frame against a 1 KiB bucket: passes when the bucket is full.
        assert!(l.admit(65536, 0).is_ok());
        let w = l.admit(65536, 0).expect_err("debt");
        // 64 KiB of debt plus a full bucket again at 1 MB/s.
        assert_eq!(w, 65_536_000);
        assert!(l.admit(65536, w).is_ok());
        // Over time the rate holds even with big frames.
        let (_, bytes) = run(&mut l, 65536, w, 10);
        assert!(bytes.abs_diff(10_000_000) <= 65536 + 1024, "{bytes}");
    }

    #[test]
    fn allowance_for_reads() {
        let lim = RateLimit::new(8, 0, 100, 0); // rx: 1 MB/s, 100 pps (16-packet bucket)
        let mut l = lim.rx().expect("limited").start(0);
        assert_eq!(l.allowance(64, 1514, 0), Ok(16));
        l.charge(16, 16 * 60);
        let w = l.allowance(64, 1514, 0).expect_err("no packets");
        assert_eq!(w, 10 * MS);
        assert_eq!(l.allowance(64, 1514, w), Ok(1));
        // Bytes: a batch that overshoots leaves debt the next read waits for.
        let lim = RateLimit::new(8, 0, 0, 0);
        let mut l = lim.rx().expect("limited").start(0);
        let n = l.allowance(64, 1514, 0).expect("full");
        assert_eq!(
            n, 64,
            "a full bucket holds more than a batch of full-size frames"
        );
        l.charge(64, 64 * 65536);
        let w = l.allowance(64, 1514, 0).expect_err("debt");
        assert_eq!(w, (64 * 65536 - MIN_BURST_BYTES + 1514) * 1000);
    }

    #[test]
    fn reconfigure_at_run_time() {
        let mut l = RateLimit::new(0, 80, 0, 0).tx().map(|l| l.start(0)); // 10 MB/s
        let (_, bytes) = run(l.as_mut().expect("on"), 1000, 0, 1);
        assert!(bytes.abs_diff(10_000_000 + MIN_BURST_BYTES) <= 1000);
        // Lowered to 8 Mbit/s: the level carries over, the new rate applies at once.
        let now = S;
        l = Limiter::reconfigure(l, RateLimit::new(0, 8, 0, 0).tx(), now);
        let (_, bytes) = run(l.as_mut().expect("on"), 1000, now, 2);
        assert!(bytes.abs_diff(2_000_000) <= 2000, "{bytes}");
        // A packet limit added keeps the byte bucket's level (near empty, not refilled).
        l = Limiter::reconfigure(l, RateLimit::new(0, 8, 0, 10).tx(), 3 * S);
        let level = l.as_ref().and_then(|l| l.bytes().map(TokenBucket::level));
        assert!(level.is_some_and(|v| v < 2000), "{level:?}");
        assert_eq!(
            l.as_ref().and_then(|l| l.packets().map(|p| p.rate())),
            Some(10)
        );
        // Cleared: no limiter at all.
        assert!(Limiter::reconfigure(l, RateLimit::default().tx(), 4 * S).is_none());
    }

    #[test]
    fn checks_name_the_field() {
        assert_eq!(RateLimit::new(1, 2, 3, 4).check(), Ok(()));
        let e = RateLimit::new(0, MAX_MBIT + 1, 0, 0).check().unwrap_err();
        assert_eq!(e.0, "tx_mbit");
        let e = RateLimit {
            burst_kib: MAX_BURST_KIB + 1,
            ..Default::default()
        }
        .check()
        .unwrap_err();
        assert_eq!(e.0, "burst_kib");
        assert_eq!(RateLimit::default().normalized(), None);
        assert!(RateLimit::new(0, 0, 1, 0).normalized().is_some());
    }

    #[test]
    fn time_going_backwards_changes_nothing() {
        let mut b = TokenBucket::new(1000, 100, 10 * S);
        b.take(100);
        b.refill(S);
        assert_eq!(b.level(), 0);
        b.refill(10 * S + 50 * MS);
        assert_eq!(b.level(), 50);
    }
}
