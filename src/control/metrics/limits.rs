//! The configured rate limits of a port as gauges (only the limits that are set).

use super::Exposition;
use crate::bridge::RateLimit;
use crate::bridge::limit::bytes_per_sec;

/// Adds `usernet_port_rate_limit_bytes_per_second{direction}` and
/// `usernet_port_rate_limit_packets_per_second{direction}` for each limit of `limit` that is
/// set; `base` are the port's labels (`network`, `port`).
pub(super) fn port_limits(x: &mut Exposition, base: &[(&str, &str); 2], limit: Option<RateLimit>) {
    let Some(l) = limit else { return };
    for (dir, mbit, pps) in [("rx", l.rx_mbit, l.rx_pps), ("tx", l.tx_mbit, l.tx_pps)] {
        let labels = [base[0], base[1], ("direction", dir)];
        if mbit > 0 {
            x.gauge(
                "usernet_port_rate_limit_bytes_per_second",
                "The port's configured rate limit in bytes per second (rx: from its link, tx: to it).",
                &labels,
                bytes_per_sec(mbit),
            );
        }
        if pps > 0 {
            x.gauge(
                "usernet_port_rate_limit_packets_per_second",
                "The port's configured rate limit in frames per second (rx: from its link, tx: to it).",
                &labels,
                pps,
            );
        }
    }
}
