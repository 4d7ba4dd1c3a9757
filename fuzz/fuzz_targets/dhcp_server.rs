//! Fuzz target `dhcp_server`: see `fuzz/src/dhcp_server.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::dhcp_server::dhcp_server(data));
