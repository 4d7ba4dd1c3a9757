//! `forward_spec`: `usernet::nat::forward::ForwardSpec::from_str` (Docker's `-p` grammar) on
//! arbitrary text.
//!
//! Invariants: it never panics; an error quotes the input; a parsed spec has non-zero,
//! ordered port ranges of equal length, `len()` equal to the number of `pairs()`, each pair
//! inside both ranges at the same offset; its `Display` (the canonical form) has no whitespace,
//! always names the protocol and parses back to the same spec (and prints the same again);
//! surrounding whitespace does not change the result; JSON (serde) and the `Forward` table
//! round-trip.

use usernet::nat::forward::{Forward, ForwardSpec};

/// One input (not UTF-8: ignored).
pub fn forward_spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let spec = match text.parse::<ForwardSpec>() {
        Ok(s) => s,
        Err(e) => {
            assert!(
                e.to_string().contains(&format!("{text:?}")),
                "error does not quote the input: {e}"
            );
            return;
        }
    };
    let (h0, h1) = spec.host_ports;
    let (g0, g1) = spec.guest_ports;
    assert!(h0 >= 1 && g0 >= 1 && h0 <= h1 && g0 <= g1, "{spec:?}");
    assert_eq!(h1 - h0, g1 - g0, "range lengths of {spec:?}");
    let pairs: Vec<(u16, u16)> = spec.pairs().collect();
    assert_eq!(pairs.len(), spec.len());
    assert!(!spec.is_empty());
    for (i, &(h, g)) in pairs.iter().enumerate() {
        assert_eq!(usize::from(h - h0), i);
        assert_eq!(usize::from(g - g0), i, "pair {i} of {spec:?}: ({h}, {g})");
        assert!(g <= g1);
    }
    assert_eq!(spec.bind_ip(), spec.host_ip.unwrap_or([0, 0, 0, 0].into()));

    let canon = spec.to_string();
    assert!(!canon.contains(char::is_whitespace), "{canon:?}");
    assert!(
        canon.ends_with("/tcp") || canon.ends_with("/udp"),
        "{canon:?}"
    );
    let back: ForwardSpec = match canon.parse() {
        Ok(b) => b,
        Err(e) => panic!("{text:?} printed as {canon:?}, which does not parse: {e}"),
    };
    assert_eq!(back, spec, "{text:?} -> {canon:?}");
    assert_eq!(back.to_string(), canon);
    let padded = format!(" \t{text}\n");
    assert_eq!(padded.parse::<ForwardSpec>().ok(), Some(spec), "{padded:?}");

    let json = serde_json::to_string(&spec).expect("serializes");
    assert_eq!(json, format!("\"{canon}\""));
    let back: ForwardSpec = serde_json::from_str(&json).expect("JSON round trip");
    assert_eq!(back, spec);
    let mut f = Forward::new("net0", spec, "web");
    f.splice = data.first().is_some_and(|b| b & 1 == 1);
    let back: Forward = serde_json::from_str(&serde_json::to_string(&f).expect("serializes"))
        .expect("Forward round trip");
    assert_eq!(back, f);
    let t = toml::to_string(&f).expect("TOML");
    assert_eq!(toml::from_str::<Forward>(&t).expect("TOML round trip"), f);
}
