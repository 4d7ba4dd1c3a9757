//! Per-port counters: frames and bytes each way, and drops by [`DropReason`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Why a frame was dropped. Each has its own counter per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than an Ethernet header (or than its VLAN tag).
    Runt = 0,
    /// Longer than the receive buffer (truncated by the kernel).
    Oversize,
    /// Multicast or all-zero source MAC.
    InvalidSource,
    /// Destination in the 802.1D reserved range.
    Reserved,
    /// Port policy: source MAC not allowed, or isolation.
    Policy,
    /// Destination learned on the ingress port itself.
    Hairpin,
    /// No other port to deliver to.
    NoDestination,
    /// Egress: the port's TX ring was full, or the port already held its share of the shared
    /// GSO buffers (see [`crate::frame`]).
    RingFull,
    /// Egress: the link refused the frame.
    LinkError,
    /// Egress: a GSO or partial-checksum frame whose headers did not allow segmenting or
    /// checksumming it for a link without offloads.
    BadOffload,
    /// Port security: a source MAC the port does not own (another port's, the gateway's).
    SpoofedSource,
    /// Port security: an IP source the port does not own or may not use.
    SpoofedIp,
    /// Port security: an ARP sender MAC or IP the port does not own.
    SpoofedArp,
    /// Port security: an NDP target or link-layer option the port does not own.
    SpoofedNd,
    /// Port security: a router advertisement, redirect or DHCP/DHCPv6 server message from a
    /// guest (RA guard, DHCP guard).
    RogueServer,
    /// Port security: the port already owns as many MACs as it may.
    AddressLimit,
    /// Trunk port: a frame tagged with a VLAN id the trunk does not map, or untagged on a
    /// trunk without a native network.
    UnmappedVlan,
    /// Egress, trunk port: a frame of the trunk's native network that carries an 802.1Q tag
    /// of its own. Sent untagged, as native frames are, it would read as that VLAN on the
    /// wire (VLAN hopping), so it is dropped.
    NativeTagged,
    /// Egress: the port's tx rate limit held its ring back until it was full (see
    /// [`crate::bridge::limit`]).
    RateLimited,
    /// A policy rule (or default) denied the frame towards every port it would have gone to
    /// (see [`crate::policy`]); the rule's own counters say which.
    PolicyDenied,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 20;
    /// Every reason, in counter order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Runt,
        DropReason::Oversize,
        DropReason::InvalidSource,
        DropReason::Reserved,
        DropReason::Policy,
        DropReason::Hairpin,
        DropReason::NoDestination,
        DropReason::RingFull,
        DropReason::LinkError,
        DropReason::BadOffload,
        DropReason::SpoofedSource,
        DropReason::SpoofedIp,
        DropReason::SpoofedArp,
        DropReason::SpoofedNd,
        DropReason::RogueServer,
        DropReason::AddressLimit,
        DropReason::UnmappedVlan,
        DropReason::NativeTagged,
        DropReason::RateLimited,
        DropReason::PolicyDenied,
    ];

    /// Stable name used in stats output.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Runt => "runt",
            DropReason::Oversize => "oversize",
            DropReason::InvalidSource => "invalid_source",
            DropReason::Reserved => "reserved",
            DropReason::Policy => "policy",
            DropReason::Hairpin => "hairpin",
            DropReason::NoDestination => "no_destination",
            DropReason::RingFull => "ring_full",
            DropReason::LinkError => "link_error",
            DropReason::BadOffload => "bad_offload",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::SpoofedArp => "spoofed_arp",
            DropReason::SpoofedNd => "spoofed_nd",
            DropReason::RogueServer => "rogue_server",
            DropReason::AddressLimit => "address_limit",
            DropReason::UnmappedVlan => "unmapped_vlan",
            DropReason::NativeTagged => "native_tagged",
            DropReason::RateLimited => "rate_limited",
            DropReason::PolicyDenied => "policy_denied",
        }
    }

    /// True for the port-security reasons (logged, rate-limited, when they drop a frame).
    pub fn is_security(self) -> bool {
        (DropReason::SpoofedSource..=DropReason::AddressLimit).contains(&self)
    }

    /// True for reasons counted on the egress side.
    pub fn is_egress(self) -> bool {
        matches!(
            self,
            DropReason::RingFull
                | DropReason::LinkError
                | DropReason::BadOffload
                | DropReason::NativeTagged
                | DropReason::RateLimited
        )
    }
}

/// Per-port counters, updated with relaxed atomics (each is written by one loop).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// Frames received from the link.
    pub rx_frames: AtomicU64,
    /// Bytes received from the link.
    pub rx_bytes: AtomicU64,
    /// Received frames handed to at least one egress ring.
    pub forwarded: AtomicU64,
    /// Frames written to the link.
    pub tx_frames: AtomicU64,
    /// Bytes written to the link.
    pub tx_bytes: AtomicU64,
    drops: [AtomicU64; DropReason::COUNT],
}

impl PortCounters {
    /// Counts `n` drops for `reason`.
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        self.drops[reason as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    /// A consistent-enough copy for display.
    pub fn snapshot(&self) -> PortStats {
        PortStats {
            rx_frames: self.rx_frames.load(Ordering::Relaxed),
            rx_bytes: self.rx_bytes.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            tx_frames: self.tx_frames.load(Ordering::Relaxed),
            tx_bytes: self.tx_bytes.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_string(), self.drops(*r)))
                .collect(),
        }
    }
}

/// A copy of a port's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Received frames forwarded.
    pub forwarded: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops by reason name (every reason listed, zero or not).
    pub drops: std::collections::BTreeMap<String, u64>,
}

impl PortStats {
    /// Sum of the ingress-side drops.
    pub fn rx_dropped(&self) -> u64 {
        DropReason::ALL
            .iter()
            .filter(|r| !r.is_egress())
            .map(|r| self.drops.get(r.name()).copied().unwrap_or(0))
            .sum()
    }
}
