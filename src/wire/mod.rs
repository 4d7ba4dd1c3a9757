//! Frame views: validated, zero-copy readings of frame headers, over etherparse.
//!
//! Nothing in this module does I/O or allocates. Every parser returns an error instead of
//! panicking on any input: lengths are checked by etherparse's slice types before any field is
//! read.

pub mod eth;

pub use eth::{EthError, L2Header, Mac};
