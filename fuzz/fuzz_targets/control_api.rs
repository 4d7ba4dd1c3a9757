//! Fuzz target `control_api`: see `fuzz/src/control_api.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::control_api::control_api(data));
