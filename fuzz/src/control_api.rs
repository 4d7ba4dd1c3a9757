//! `control_api`: `serde_json::from_str::<Request>` on arbitrary text (the control socket reads
//! one request per line). Invariant: whatever parses serializes, and the JSON it serializes to
//! (as text and as a `serde_json::Value`) parses back to an equal request.

use usernet::control::api::Request;

/// One input (not UTF-8: ignored, as the server's line reader would refuse it).
pub fn control_api(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = serde_json::from_str::<Request>(text) else {
        return;
    };
    let json = serde_json::to_string(&req).expect("a parsed request serializes");
    let back: Request = match serde_json::from_str(&json) {
        Ok(r) => r,
        Err(e) => panic!("{req:?} serialized as {json} which does not parse: {e}"),
    };
    assert_eq!(back, req, "round trip through {json}");
    let value = serde_json::to_value(&req).expect("a parsed request serializes to a Value");
    let back: Request = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => panic!("{req:?} as Value {value} does not parse: {e}"),
    };
    assert_eq!(back, req, "round trip through {value}");
}
