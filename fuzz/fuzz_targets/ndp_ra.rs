//! Fuzz target `ndp_ra`: see `fuzz/src/ndp_ra.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::ndp_ra::ndp_ra(data));
