//! `usernet ctl port limit`: a port's rate limits at run time (the `port_limit` API op), and
//! the LIMIT column of `usernet ctl ports`.

use clap::ArgGroup;
use serde_json::Value;
use usernet::bridge::RateLimit;
use usernet::control::api::Request;

/// Arguments of `usernet ctl port limit`.
#[derive(clap::Args, Debug)]
#[command(group(
    ArgGroup::new("limits")
        .required(true)
        .multiple(true)
        .args(["rx_mbit", "tx_mbit", "rx_pps", "tx_pps", "burst_kib", "off"])
))]
pub struct LimitArgs {
    /// Port name.
    name: String,
    /// Mbit/s of frames usernet receives from the port's link (0: unlimited).
    #[arg(long, value_name = "N")]
    rx_mbit: Option<u64>,
    /// Mbit/s of frames usernet sends to the port's link (0: unlimited).
    #[arg(long, value_name = "N")]
    tx_mbit: Option<u64>,
    /// Frames/s received from the port's link (0: unlimited).
    #[arg(long, value_name = "N")]
    rx_pps: Option<u64>,
    /// Frames/s sent to the port's link (0: unlimited).
    #[arg(long, value_name = "N")]
    tx_pps: Option<u64>,
    /// Byte bucket size in KiB [default: the larger of 256 KiB and 10 ms at the rate].
    #[arg(long, value_name = "N")]
    burst_kib: Option<u64>,
    /// Remove every limit of the port.
    #[arg(long, conflicts_with_all = ["rx_mbit", "tx_mbit", "rx_pps", "tx_pps", "burst_kib"])]
    off: bool,
}

impl LimitArgs {
    /// The request: the limits given replace the port's (a limit not given is unlimited).
    pub fn request(self) -> Request {
        let mut l = RateLimit::new(
            self.rx_mbit.unwrap_or(0),
            self.tx_mbit.unwrap_or(0),
            self.rx_pps.unwrap_or(0),
            self.tx_pps.unwrap_or(0),
        );
        l.burst_kib = self.burst_kib.unwrap_or(0);
        Request::PortLimit {
            port: self.name,
            rate_limit: (!self.off).then_some(l).and_then(RateLimit::normalized),
        }
    }
}

/// A port's LIMIT column: `rx=100M,tx_pps=5000,...`, or `-` when unlimited.
pub fn limit_col(p: &Value) -> String {
    let Some(l) = p.get("rate_limit").and_then(Value::as_object) else {
        return "-".into();
    };
    let n = |k: &str| l.get(k).and_then(Value::as_u64).unwrap_or(0);
    let mut out = Vec::new();
    for (key, label, suffix) in [
        ("rx_mbit", "rx", "M"),
        ("tx_mbit", "tx", "M"),
        ("rx_pps", "rx_pps", ""),
        ("tx_pps", "tx_pps", ""),
        ("burst_kib", "burst", "K"),
    ] {
        if n(key) > 0 {
            out.push(format!("{label}={}{suffix}", n(key)));
        }
    }
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}
