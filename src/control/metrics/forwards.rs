//! Port forwards' endpoints in the exposition: each endpoint's state, live and total
//! connections, and each forward's refusals (no endpoint up).

use super::Exposition;
use crate::control::Handle;

/// Writes every forward's endpoint families into `x`.
pub(super) fn write(h: &Handle, x: &mut Exposition) {
    for f in h.forwards(None).unwrap_or_default() {
        let id = f.id.to_string();
        let base = [
            ("network", f.network.as_str()),
            ("forward", id.as_str()),
            ("publish", f.publish.as_str()),
        ];
        for e in &f.endpoints {
            let l = [base[0], base[1], base[2], ("endpoint", e.to.as_str())];
            x.gauge(
                "usernet_forward_endpoint_up",
                "1 when the port forward's endpoint is in the rotation, 0 when its health checks fail.",
                &l,
                u64::from(e.state == "up"),
            );
            x.gauge(
                "usernet_forward_endpoint_connections",
                "Connections (TCP) or flows (UDP) open to the endpoint now.",
                &l,
                e.live,
            );
            x.counter(
                "usernet_forward_endpoint_connections_total",
                "Connections (TCP) or flows (UDP) the port forward sent to the endpoint.",
                &l,
                e.connections,
            );
        }
        x.counter(
            "usernet_forward_refused_total",
            "New connections or flows the port forward refused because no endpoint was up.",
            &base,
            f.refused,
        );
    }
}
