//! How `usernet ctl` shows results: the column tables of each listing request
//! ([`render`]), the stats table the demo prints too ([`stats_table`]), and the table layout
//! ([`table`]) other subcommands share.

use serde_json::Value;
use usernet::control::api::Request;

/// A port's NETWORK column: its network, or a trunk's `NET=VID,...` (and `NET=native`).
fn network_col(p: &Value) -> String {
    let Some(t) = p.get("trunk").filter(|t| !t.is_null()) else {
        return s(p, "network");
    };
    let mut parts: Vec<String> = t
        .get("vlans")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    if let Some(n) = t.get("native").and_then(Value::as_str) {
        parts.push(format!("{n}=native"));
    }
    parts.join(",")
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

/// A list of strings `k` of `v`, comma-separated.
fn joined(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub(crate) fn table(head: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(head.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Human-readable output for a result.
pub(crate) fn render(req: &Request, v: &Value) -> String {
    let empty = Vec::new();
    let arr = v.as_array().unwrap_or(&empty);
    match req {
        Request::Ports {} => table(
            &["ID", "NAME", "NETWORK", "KIND", "LOOP", "ISOLATED", "LIMIT"],
            arr.iter()
                .map(|p| {
                    vec![
                        s(p, "id"),
                        s(p, "name"),
                        network_col(p),
                        s(p, "kind"),
                        s(p, "event_loop"),
                        s(p, "isolated"),
                        crate::port_limit::limit_col(p),
                    ]
                })
                .collect(),
        ),
        Request::Networks {} => table(
            &["NAME", "PORTS", "FDB", "FDB_MAX", "AGING_S"],
            arr.iter()
                .map(|n| {
                    vec![
                        s(n, "name"),
                        joined(n, "ports"),
                        s(n, "fdb_entries"),
                        s(n, "fdb_max_entries"),
                        s(n, "fdb_aging_secs"),
                    ]
                })
                .collect(),
        ),
        Request::Fdb { .. } => table(
            &["NETWORK", "VLAN", "MAC", "PORT", "AGE_S", "STATIC", "VTEP"],
            arr.iter()
                .map(|e| {
                    vec![
                        s(e, "network"),
                        s(e, "vlan"),
                        s(e, "mac"),
                        s(e, "port"),
                        format!(
                            "{:.1}",
                            e.get("age_secs").and_then(Value::as_f64).unwrap_or(0.0)
                        ),
                        if e.get("cluster").and_then(Value::as_bool) == Some(true) {
                            "cluster".to_string()
                        } else {
                            s(e, "is_static")
                        },
                        s(e, "vtep"),
                    ]
                })
                .collect(),
        ),
        Request::Stats {} => {
            let mut out = stats_table(arr);
            let vx: Vec<&Value> = arr.iter().filter(|r| r.get("vxlan").is_some()).collect();
            if !vx.is_empty() {
                out.push('\n');
                out.push_str(&table(
                    &[
                        "VXLAN_PORT",
                        "VNI",
                        "MTU",
                        "RX",
                        "TX",
                        "TX_DATAGRAMS",
                        "DROPS",
                    ],
                    vx.iter()
                        .map(|r| {
                            let v = &r["vxlan"];
                            vec![
                                s(r, "port"),
                                s(v, "vni"),
                                s(v, "mtu"),
                                s(v, "rx_frames"),
                                s(v, "tx_frames"),
                                s(v, "tx_datagrams"),
                                nonzero(v.get("drops")),
                            ]
                        })
                        .collect(),
                ));
            }
            out
        }
        Request::VxlanRemotes { .. } => table(
            &["REMOTE", "MACS", "RX_FRAMES", "TX_FRAMES"],
            arr.iter()
                .map(|r| {
                    vec![
                        s(r, "remote"),
                        s(r, "macs"),
                        s(r, "rx_frames"),
                        s(r, "tx_frames"),
                    ]
                })
                .collect(),
        ),
        Request::Metrics {} => v.as_str().unwrap_or_default().to_string(),
        Request::PolicyLs { .. } => crate::policy::render(v),
        Request::ForwardLs { .. } => table(
            &[
                "ID", "NETWORK", "PUBLISH", "BALANCE", "TO", "STATE", "LIVE", "CONNS",
            ],
            arr.iter()
                .flat_map(|f| {
                    let eps = f["endpoints"].as_array().cloned().unwrap_or_default();
                    let head = [
                        s(f, "id"),
                        s(f, "network"),
                        s(f, "publish"),
                        s(f, "balance"),
                    ];
                    let blank = || vec![String::new(); 4];
                    eps.into_iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let mut row = if i == 0 { head.to_vec() } else { blank() };
                            row.extend([
                                s(&e, "to"),
                                s(&e, "state"),
                                s(&e, "live"),
                                s(&e, "connections"),
                            ]);
                            row
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
        ),
        Request::Owners { .. } => table(
            &["NETWORK", "PORT", "SECURITY", "MACS", "IPS"],
            arr.iter()
                .map(|o| {
                    let list = |k: &str| {
                        o[k].as_array()
                            .map(|v| {
                                v.iter()
                                    .map(|p| {
                                        format!(
                                            "{}({})",
                                            p[0].as_str().unwrap_or_default(),
                                            p[1].as_str().unwrap_or_default()
                                        )
                                    })
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default()
                    };
                    vec![
                        s(o, "network"),
                        s(o, "port"),
                        if o["port_security"] == true {
                            "on"
                        } else {
                            "off"
                        }
                        .into(),
                        list("macs"),
                        list("ips"),
                    ]
                })
                .collect(),
        ),
        Request::Leases { .. } => table(
            &[
                "NETWORK",
                "MAC",
                "IP",
                "HOSTNAME",
                "STATE",
                "EXPIRES_S",
                "STATIC",
            ],
            arr.iter()
                .map(|l| {
                    vec![
                        s(l, "network"),
                        s(l, "mac"),
                        s(l, "ip"),
                        s(l, "hostname"),
                        s(l, "state"),
                        s(l, "expires_in_secs"),
                        s(l, "is_static"),
                    ]
                })
                .collect(),
        ),
        Request::DnsLs { .. } => table(
            &["NETWORK", "NAME", "ADDRESS"],
            arr.iter()
                .map(|r| vec![s(r, "network"), s(r, "name"), s(r, "addr")])
                .collect(),
        ),
        Request::DnsPolicy { .. } => {
            let p = v.get("policy").filter(|p| !p.is_null());
            let list = |k: &str| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let field = |k: &str, none: &str| {
                p.and_then(|p| p.get(k))
                    .and_then(Value::as_str)
                    .unwrap_or(none)
                    .to_string()
            };
            table(
                &["NETWORK", "DEFAULT", "ANSWER", "ALLOW", "DENY", "DENIED"],
                vec![vec![
                    s(v, "network"),
                    field("default", "allow"),
                    field("answer", "nxdomain"),
                    list("allow"),
                    list("deny"),
                    s(v, "denied"),
                ]],
            )
        }
        Request::Gateways {} => table(
            &["NETWORK", "MAC", "IPV4", "IPV6", "DOMAIN", "COUNTERS"],
            arr.iter()
                .map(|g| {
                    let c = g
                        .get("counters")
                        .and_then(Value::as_object)
                        .map(|m| {
                            m.iter()
                                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                                .map(|(k, n)| format!("{k}={n}"))
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default();
                    vec![
                        s(g, "network"),
                        s(g, "mac"),
                        s(g, "ipv4"),
                        s(g, "ipv6"),
                        s(g, "domain"),
                        c,
                    ]
                })
                .collect(),
        ),
        Request::Cluster {} => cluster(v),
        _ => match v {
            Value::Null => "ok\n".to_string(),
            other => format!("{other}\n"),
        },
    }
}

/// `ctl cluster`: a summary line, the nodes, this node's cluster networks.
fn cluster(v: &Value) -> String {
    let empty = Vec::new();
    let list = |k: &str| v.get(k).and_then(Value::as_array).unwrap_or(&empty).clone();
    let mut out = format!(
        "node {} vtep {} prefix {} state {} revision {} lease {:x} malformed {} conflicts {} \
         requests {}\n",
        s(v, "node"),
        s(v, "vtep"),
        s(v, "prefix"),
        s(v, "state"),
        s(v, "revision"),
        v.get("lease").and_then(Value::as_i64).unwrap_or(0),
        s(v, "malformed"),
        s(v, "conflicts"),
        s(v, "requests"),
    );
    if let Some(e) = v.get("last_error").and_then(Value::as_str) {
        out.push_str(&format!("last error: {e}\n"));
    }
    out.push('\n');
    out.push_str(&table(
        &["NODE", "VTEP", "NETWORKS"],
        list("nodes")
            .iter()
            .map(|n| {
                let nets = n
                    .get("networks")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, vni)| format!("{k}={vni}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                let me = if n.get("local") == Some(&Value::Bool(true)) {
                    " (this node)"
                } else {
                    ""
                };
                vec![s(n, "name") + me, s(n, "vtep"), nets]
            })
            .collect(),
    ));
    out.push('\n');
    out.push_str(&table(
        &["NETWORK", "VNI", "PORT", "REMOTES", "CLAIMED", "SPARE"],
        list("networks")
            .iter()
            .map(|n| {
                vec![
                    s(n, "name"),
                    s(n, "vni"),
                    s(n, "port"),
                    joined(n, "remotes"),
                    s(n, "claimed"),
                    s(n, "spare"),
                ]
            })
            .collect(),
    ));
    let services = list("services");
    if !services.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "SERVICE", "NETWORK", "BALANCE", "REFUSED", "ENDPOINT", "STATE", "LIVE", "CONNS",
            ],
            services
                .iter()
                .flat_map(|v| {
                    let head = [
                        s(v, "publish"),
                        s(v, "network"),
                        s(v, "balance"),
                        s(v, "refused"),
                    ];
                    let eps = v["endpoints"].as_array().cloned().unwrap_or_default();
                    if eps.is_empty() {
                        let mut row = head.to_vec();
                        row.extend([
                            "(none yet)".to_string(),
                            String::new(),
                            String::new(),
                            String::new(),
                        ]);
                        return vec![row];
                    }
                    eps.iter()
                        .enumerate()
                        .map(|(i, e)| {
                            let mut row = if i == 0 {
                                head.to_vec()
                            } else {
                                vec![String::new(); 4]
                            };
                            row.extend([
                                s(e, "to"),
                                s(e, "state"),
                                s(e, "live"),
                                s(e, "connections"),
                            ]);
                            row
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
        ));
    }
    out
}

/// The `ctl stats` table (also printed by the demo).
pub(crate) fn stats_table(rows: &[Value]) -> String {
    table(
        &[
            "PORT",
            "NETWORK",
            "RX_FRAMES",
            "RX_BYTES",
            "TX_FRAMES",
            "TX_BYTES",
            "FORWARDED",
            "DROPS",
        ],
        rows.iter()
            .map(|r| {
                let st = r.get("stats").cloned().unwrap_or(Value::Null);
                let drops = st
                    .get("drops")
                    .and_then(Value::as_object)
                    .map(|m| {
                        let mut d: Vec<String> = m
                            .iter()
                            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                            .map(|(k, n)| format!("{k}={n}"))
                            .collect();
                        if let Some(n) = r.get("capture_dropped").and_then(Value::as_u64)
                            && n > 0
                        {
                            d.push(format!("capture_dropped={n}"));
                        }
                        if d.is_empty() {
                            "-".into()
                        } else {
                            d.join(",")
                        }
                    })
                    .unwrap_or_default();
                vec![
                    s(r, "port"),
                    s(r, "network"),
                    s(&st, "rx_frames"),
                    s(&st, "rx_bytes"),
                    s(&st, "tx_frames"),
                    s(&st, "tx_bytes"),
                    s(&st, "forwarded"),
                    drops,
                ]
            })
            .collect(),
    )
}

/// The non-zero counters of an object as `k=n,...`, or `-`.
fn nonzero(m: Option<&Value>) -> String {
    let d: Vec<String> = m
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        })
        .unwrap_or_default();
    if d.is_empty() {
        "-".into()
    } else {
        d.join(",")
    }
}
