//! Fuzz target `vxlan_decap`: see `fuzz/src/vxlan_decap.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::vxlan_decap::vxlan_decap(data));
