//! Fuzz target `forward_spec`: see `fuzz/src/forward_spec.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::forward_spec::forward_spec(data));
