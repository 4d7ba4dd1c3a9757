//! The checks behind the fuzz targets, shared with `tests/fuzz_regressions.rs`.
//!
//! Each `pub fn TARGET(data: &[u8])` runs one input through the public API it fuzzes and panics
//! when an invariant breaks; `fuzz_targets/TARGET.rs` only wraps it in `fuzz_target!`. The same
//! file is compiled into the main crate's `fuzz_regressions` test (with `#[path]`), which
//! replays every seed under `fuzz/seeds/` and every recorded crash through these functions, so
//! plain `cargo test` checks them with the same invariants as the fuzzer.
//!
//! Only crates the main crate already depends on are used here (usernet, etherparse,
//! dhcproto, hickory-proto, serde_json, toml, ipnet, mio), so that both builds can compile it.

pub mod arp;
pub mod config;
pub mod control_api;
pub mod datapath;
pub mod dhcp_server;
pub mod dns_server;
pub mod forward_spec;
pub mod ndp_ra;
pub mod seeds;
pub mod stream_framing;
pub mod vxlan_decap;

/// Reads fixed-size fields from the front of a fuzz input, yielding zeros once it runs out
/// (so a short input still makes a complete, if dull, set of parameters).
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Reader { rest: data }
    }

    /// The next `N` bytes, zero-filled past the end.
    pub fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.rest.len());
        out[..n].copy_from_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        out
    }

    /// The next byte, 0 past the end.
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    /// Everything not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}
