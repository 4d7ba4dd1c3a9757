//! Frame views: validated, zero-copy readings of frame headers, over etherparse, and the IP
//! packet builders NAT and the gateway share ([`ip`]).
//!
//! Nothing in this module does I/O; only the builders allocate (the packet they return). Every
//! parser returns an error or `None` instead of panicking on any input: lengths are checked
//! (mostly by etherparse's slice types) before any field is read.

pub mod eth;
pub mod ip;

pub use eth::{EthError, L2Header, Mac};
