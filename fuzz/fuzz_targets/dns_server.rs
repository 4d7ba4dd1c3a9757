//! Fuzz target `dns_server`: see `fuzz/src/dns_server.rs` for the input format and the invariants checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| usernet_fuzz::dns_server::dns_server(data));
