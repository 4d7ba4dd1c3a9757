//! Fuzz target `datapath`: see `fuzz/src/datapath.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::datapath::datapath(data));
