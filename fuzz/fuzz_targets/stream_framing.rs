//! Fuzz target `stream_framing`: see `fuzz/src/stream_framing.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::stream_framing::stream_framing(data));
