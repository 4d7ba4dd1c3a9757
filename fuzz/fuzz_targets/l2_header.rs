//! Fuzzes `L2Header::parse`: it must never panic, and what it reports must agree with the
//! bytes it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use usernet::wire::{EthError, L2Header, Mac};

fuzz_target!(|data: &[u8]| {
    match L2Header::parse(data) {
        Ok(h) => {
            assert!(data.len() >= 14);
            assert!(h.header_len == 14 || h.header_len == 18);
            assert!(
                h.header_len <= data.len(),
                "header past the end of the frame"
            );
            assert_eq!(h.dst, Mac(data[0..6].try_into().unwrap()));
            assert_eq!(h.src, Mac(data[6..12].try_into().unwrap()));
            assert!(h.vlan <= 4095);
            let outer = u16::from_be_bytes([data[12], data[13]]);
            if h.header_len == 14 {
                assert_eq!(h.ethertype, outer);
                assert_eq!(h.vlan, 0);
            } else {
                assert!(
                    matches!(outer, 0x8100 | 0x88a8 | 0x9100),
                    "tag {outer:#06x}"
                );
                assert_eq!(h.vlan, u16::from_be_bytes([data[14], data[15]]) & 0x0fff);
                assert_eq!(h.ethertype, u16::from_be_bytes([data[16], data[17]]));
            }
        }
        Err(EthError::Runt(n)) => {
            assert_eq!(n, data.len());
            assert!(n < 18, "a frame of {n} bytes holds any one-tag header");
        }
        Err(e) => panic!("L2Header::parse: unexpected error {e}"),
    }
});
