"""Markdown tables, the goal check and the SVG chart of one benchmark run (stdlib only)."""

import html

from common import fmt, get, median, ratio, usernet_drops

L2_LABELS = {"veth": "veth pair", "bridge": "Linux bridge", "usernet": "usernet",
             "copyloop": "copy loop TAP→TAP (ceiling)",
             "usernet-bp": "usernet, busy-polling", "usernet-ps": "usernet, port security",
             "usernet-tc": "usernet, policy + limits + capture",
             "ovs": "OVS userspace",
             "ovs-tso": "OVS userspace + TSO", "vde": "vde_switch"}
COLORS = {"usernet": "#d62728", "copyloop": "#8c564b", "usernet-bp": "#e377c2", "usernet-ps": "#bcbd22",
          "usernet-tc": "#f7b6d2", "usernet splice": "#8c1c13",
          "veth": "#c7c7c7", "bridge": "#7f7f7f", "ovs": "#1f77b4",
          "ovs-tso": "#17becf", "vde": "#9467bd", "slirp4netns": "#ff7f0e",
          "pasta tap": "#2ca02c", "pasta splice": "#98df8a", "usernet 1 loop": "#ff9896",
          "usernet 2 loops": "#e377c2", "usernet 4 loops": "#7b4173",
          "kernel vxlan": "#393b79", "kernel routed": "#525252"}
SERIES_LABELS = dict(L2_LABELS, **{"usernet splice": "usernet (splice = true)",
                                   "slirp4netns": "slirp4netns", "pasta tap": "pasta (tap)",
                                   "pasta splice": "pasta (splice)",
                                   "kernel vxlan": "Linux vxlan + bridge",
                                   "kernel routed": "kernel, routed (no NAT)"})
MB = 1e6  # the memory goal is in MB (10^6 bytes)


def _span(x, lo, hi, reps):
    if x is None:
        return None
    if reps > 1 and lo is not None:
        return f"{x:.2f} ({lo:.2f}–{hi:.2f})"
    return f"{x:.2f}"


def _status(r, notes, what):
    status = r["status"]
    errs = [r["error"]] if r.get("error") else []
    for k in ("tcp", "udp64", "udp64_fixed", "ping"):
        if get(r, k, "error"):
            errs.append(f"{k}: {get(r, k, 'error')}")
    for label, v in (r.get("variants") or {}).items():
        for t in ("egress", "download", "forward"):
            if get(v, t, "error"):
                errs.append(f"{label} {t}: {get(v, t, 'error')}")
    if errs:
        notes.append(f"- **{what}: {status}** — " + "; ".join(errs))
    return status


def l2_table(results, args, notes):
    out = ["| MTU | system | TCP Gbit/s | ×bridge | CPU s/Gbit | machine CPU s/Gbit "
           "| UDP 64 B rx kpps | ×bridge "
           f"| loss % at {0.95:.2f}×bridge rate | ping median µs | +µs vs bridge | status |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mtu in sorted({r["mtu"] for r in results}):
        rows = [r for r in results if r["mtu"] == mtu]
        base = next((r for r in rows if r["system"] == "bridge"), {})
        b_tcp, b_udp = get(base, "tcp", "gbps"), get(base, "udp64", "rx_pps")
        b_rtt = get(base, "ping", "median_us")
        for r in rows:
            what = f"L2 {L2_LABELS[r['system']]} MTU {mtu}"
            status = _status(r, notes, what)
            tcp = get(r, "tcp", "gbps")
            udp = get(r, "udp64", "rx_pps")
            rtt = get(r, "ping", "median_us")
            cpu = get(r, "tcp", "cpu_s_per_gbit")
            out.append("| " + " | ".join([
                str(mtu), L2_LABELS[r["system"]],
                _span(tcp, get(r, "tcp", "gbps_min"), get(r, "tcp", "gbps_max"), args.reps)
                or ("failed" if r["status"] != "ok" else "–"),
                fmt(ratio(tcp, b_tcp), ".2f"),
                fmt(cpu, ".3f") if r["system"] not in ("veth", "bridge") else "(kernel)",
                fmt(get(r, "tcp", "machine_cpu_s_per_gbit"), ".3f"),
                fmt(None if udp is None else udp / 1e3, ".0f"), fmt(ratio(udp, b_udp), ".2f"),
                fmt(get(r, "udp64_fixed", "loss_pct"), ".2f"),
                fmt(rtt, ".0f"),
                fmt(None if rtt is None or b_rtt is None else rtt - b_rtt, "+.0f"),
                status]) + " |")
            _drop_note(notes, f"usernet L2 MTU {mtu}", r)
    return out


def nat_table(results, args, notes):
    tests = ("egress", "download", "forward")
    out = ["| MTU | system | egress Gbit/s | usernet ÷ this | download Gbit/s | usernet ÷ this "
           "| forward Gbit/s | usernet ÷ this | CPU s/Gbit egress / download / forward "
           "| max RSS MiB | status |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for mtu in sorted({r["mtu"] for r in results}):
        rows = [r for r in results if r["mtu"] == mtu]
        un = next((r for r in rows if r["system"] == "usernet"), {})
        unv = get(un, "variants", "usernet") or {}
        for r in rows:
            variants = r.get("variants") or {r["system"]: {}}
            status = _status(r, notes, f"NAT {r['system']} MTU {mtu}")
            if r.get("note"):
                notes.append(f"- NAT {r['system']} MTU {mtu}: {r['note']}")
            if r.get("connectivity") not in (None, "ok"):
                notes.append(f"- NAT {r['system']} MTU {mtu}: {r['connectivity']}")
            for label, v in variants.items():
                row = [str(mtu), label]
                for t in tests:
                    x = get(v, t, "gbps")
                    row.append(_span(x, get(v, t, "gbps_min"), get(v, t, "gbps_max"), args.reps)
                               or ("failed" if get(v, t, "error") or r["status"] == "failed"
                                   else "–"))
                    row.append("–" if label == "usernet splice"
                               else fmt(ratio(get(unv, t, "gbps"), x), ".2f"))
                    st = get(v, t, "stalled_intervals")
                    if st:
                        n = sum(x["intervals"] for x in get(v, t, "reps"))
                        notes.append(f"- {label} MTU {mtu} {t}: the sender stalled (0 bytes) in "
                                     f"{st} of {n} one-second intervals")
                row.append("(kernel)" if r["system"] == "kernel" else
                           " / ".join(fmt(get(v, t, "cpu_s_per_gbit"), ".3f") for t in tests))
                rss = r.get("max_rss_kib")
                row += [fmt(None if rss is None else rss / 1024, ".1f"), status]
                out.append("| " + " | ".join(row) + " |")
    return out


def mem_table(results, notes):
    out = ["| system | namespaces | processes | RSS MiB (sum) | peak RSS MiB (sum) | status |",
           "|---|---:|---:|---:|---:|---|"]
    for r in results:
        status = r["status"]
        if r.get("error"):
            notes.append(f"- **memory {r['label']} ×{r['namespaces']}: {status}** — "
                         f"{r['error']}")
        rss, hwm = r.get("rss_kib"), r.get("max_rss_kib")
        out.append("| " + " | ".join([
            r["label"], str(r["namespaces"]), fmt(r.get("processes"), "d"),
            fmt(None if rss is None else rss / 1024, ".1f"),
            fmt(None if hwm is None else hwm / 1024, ".1f"), status]) + " |")
    return out


def scale_table(results, args, notes):
    """Rows: pair counts; columns: the bridge, then usernet at each loop count with its ratios to
    the bridge and to usernet's fewest loops (same pairs, same run)."""
    loops = sorted({r["loops"] for r in results if r["system"] == "usernet"})
    base_l = loops[0] if loops else None
    head = ["pairs", "Linux bridge Gbit/s"]
    align = ["---:", "---:"]
    for n in loops:
        head += [f"usernet {n} loop{'s' if n > 1 else ''} Gbit/s", "×bridge"]
        if n != base_l:
            head.append(f"×{base_l} loop{'s' if base_l > 1 else ''}")
        head.append("CPU s/Gbit")
        align += ["---:"] * (4 if n != base_l else 3)
    out = ["| " + " | ".join(head + ["status"]) + " |", "|" + "|".join(align + ["---"]) + "|"]
    seen = set()
    for pairs in sorted({r["pairs"] for r in results}):
        rows = [r for r in results if r["pairs"] == pairs]
        br = next((r for r in rows if r["system"] == "bridge"), {})
        un = {r["loops"]: r for r in rows if r["system"] == "usernet"}
        b = get(br, "tcp", "gbps")
        u0 = get(un.get(base_l), "tcp", "gbps")

        def cell(r):
            return (_span(get(r, "tcp", "gbps"), get(r, "tcp", "gbps_min"),
                          get(r, "tcp", "gbps_max"), args.reps)
                    or ("failed" if r.get("status", "failed") != "ok" else "–"))

        row = [str(pairs), cell(br) if br else "not run"]
        for n in loops:
            r = un.get(n, {})
            x = get(r, "tcp", "gbps")
            row += [cell(r) if r else "not run", fmt(ratio(x, b), ".2f")]
            if n != base_l:
                row.append(fmt(ratio(x, u0), ".2f"))
            row.append(fmt(get(r, "tcp", "cpu_s_per_gbit"), ".3f"))
        bad = [r for r in rows if r["status"] != "ok"]
        row.append("; ".join(f"{r['label']}: {r['status']}" for r in bad) or "ok")
        out.append("| " + " | ".join(row) + " |")
        for r in rows:
            what = f"scale {r['label']} × {pairs} pair{'s' if pairs > 1 else ''}"
            _status(r, notes, what)
            if r.get("note") and r["note"] not in seen:
                seen.add(r["note"])
                notes.append(f"- scale usernet: {r['note']}")
            _drop_note(notes, what, r)
    return out


def overlay_table(results, args, notes):
    """Rows: the kernel's vxlan + bridge, then usernet's VXLAN ports (same topology, same run)."""
    out = ["| system | TCP Gbit/s | ×kernel | CPU s/Gbit | machine CPU s/Gbit "
           "| ping median µs | +µs vs kernel | status |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    base = next((r for r in results if r["system"] == "kernel"), {})
    b_tcp, b_rtt = get(base, "tcp", "gbps"), get(base, "ping", "median_us")
    for r in results:
        status = _status(r, notes, f"overlay {r['label']}")
        tcp, rtt = get(r, "tcp", "gbps"), get(r, "ping", "median_us")
        out.append("| " + " | ".join([
            r["label"],
            _span(tcp, get(r, "tcp", "gbps_min"), get(r, "tcp", "gbps_max"), args.reps) or "–",
            fmt(ratio(tcp, b_tcp), ".2f"), fmt(get(r, "tcp", "cpu_s_per_gbit"), ".3f"),
            fmt(get(r, "tcp", "machine_cpu_s_per_gbit"), ".3f"), fmt(rtt, ".0f"),
            fmt(None if rtt is None or b_rtt is None else rtt - b_rtt, "+.0f"), status]) + " |")
    return out


def _drop_note(notes, what, r):
    """A note with usernet's drop counters over case `r`, if any counted."""
    drops = usernet_drops(r.get("usernet_stats"))
    if drops:
        notes.append(f"- {what}: drop counters over the case: "
                     + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())))


def _l2(results, system, mtu):
    return next((r for r in results if r.get("suite") == "l2" and r["system"] == system
                 and r["mtu"] == mtu), {})


def _nat(results, system, mtu):
    return next((r for r in results if r.get("suite") == "nat" and r["system"] == system
                 and r["mtu"] == mtu), {})


def rx(x):
    return "no ratio" if x is None else f"{x:.2f}×"


TC_GOAL = 0.95  # issue 16: usernet-tc / usernet


def pair_ratios(base, tc, key):
    """Per repetition i: tc's figure ÷ base's (repetitions of the interleaved runs pair up)."""
    return [y[key] / x[key] for x, y in zip(get(base, "reps") or [], get(tc, "reps") or [])
            if x.get(key) and y.get(key) is not None]


def capture_summary(*tests):
    """Frames the usernet-tc captures recorded and dropped over the repetitions of `tests`."""
    caps = [r["capture"] for t in tests for r in (get(t, "reps") or []) if r.get("capture")]
    if not caps:
        return "no capture recorded"
    frames = sum(c.get("frames") or 0 for c in caps)
    dropped = sum(c.get("dropped") or 0 for c in caps)
    cpu = [c["ctl_cpu_s"] for c in caps if c.get("ctl_cpu_s") is not None]
    # The capture's whole writing cost per GB written: the daemon's writer (the control
    # connection's thread, `usernet-ctl-con`) + the ctl process (which writes the file itself
    # only in the streamed form; with the file passed to the daemon it just waits).
    spent = gb = 0.0
    for t in tests:
        for r in get(t, "reps") or []:
            c = r.get("capture") or {}
            if c.get("file_bytes") and c.get("ctl_cpu_s") is not None:
                spent += c["ctl_cpu_s"] + sum(
                    v for k, v in (r.get("thread_cpu_s") or {}).items()
                    if k.startswith("usernet-ctl-con"))
                gb += c["file_bytes"] / 1e9
    return (f"capture: {frames} frames written, {dropped} dropped "
            f"({100 * dropped / max(1, frames + dropped):.1f} %)"
            + (f", `ctl capture` {median(cpu):.2f} CPU s per run" if cpu else "")
            + (f", writer + ctl {spent / gb:.2f} CPU s per GB written" if gb else ""))


def tc_goals(results):
    """[(goal, measured, verdict)]: usernet-tc ÷ usernet per interleaved pair, median and
    min–max, for L2 TCP at each MTU, L2 64 B UDP, NAT egress and forward at each MTU."""
    rows = []

    def add(what, base, tc, key, scale, unit, interleaved):
        rs = pair_ratios(base, tc, key)
        if not rs and not base and not tc:
            return
        if not rs:
            rows.append((what, "no ratio: " + (get(tc, "error") or get(base, "error")
                                               or ("usernet not run" if not base
                                                   else "not measured")), "–"))
            return
        m = median(rs)
        rows.append((what, f"median {m:.3f} ({min(rs):.3f}–{max(rs):.3f}) over {len(rs)} "
                     f"{'interleaved ' if interleaved else ''}pairs "
                     f"({get(tc, key) * scale:.2f} vs {get(base, key) * scale:.2f} {unit}, "
                     f"medians); {capture_summary(tc)}", verdict_of(m >= TC_GOAL)))

    for mtu in sorted({r["mtu"] for r in results if r.get("suite") == "l2"}):
        un, tc = _l2(results, "usernet", mtu), _l2(results, "usernet-tc", mtu)
        if not tc:
            continue
        inter = tc.get("interleaved_with") == "usernet"
        add(f"traffic control overhead, L2 TCP MTU {mtu}: usernet-tc ÷ usernet ≥ {TC_GOAL}",
            un.get("tcp"), tc.get("tcp"), "gbps", 1, "Gbit/s", inter)
        if tc.get("udp64"):
            add(f"traffic control overhead, L2 64 B UDP rx kpps MTU {mtu}: usernet-tc ÷ "
                f"usernet ≥ {TC_GOAL}", un.get("udp64"), tc.get("udp64"), "rx_pps", 1e-3,
                "kpps", inter)
    for mtu in sorted({r["mtu"] for r in results if r.get("suite") == "nat"}):
        un, tc = _nat(results, "usernet", mtu), _nat(results, "usernet-tc", mtu)
        if not tc:
            continue
        inter = tc.get("interleaved_with") == "usernet"
        for t in ("egress", "forward"):
            b, c = get(un, "variants", "usernet", t), get(tc, "variants", "usernet-tc", t)
            if b is None and c is None:
                continue
            add(f"traffic control overhead, NAT {t} TCP MTU {mtu}: usernet-tc ÷ usernet ≥ "
                f"{TC_GOAL}", b, c, "gbps", 1, "Gbit/s", inter)
    return rows


def verdict_of(ok):
    return "–" if ok is None else ("**met**" if ok else "**missed**")


def goals(results):
    """[(goal, measured text, verdict)] for every goal of issue 6 that the run measured."""
    out = []

    def verdict(ok):
        return "–" if ok is None else ("**met**" if ok else "**missed**")

    for mtu, want in ((1500, 1.0), (9000, 0.8), (65520, 0.8)):
        un, br = _l2(results, "usernet", mtu), _l2(results, "bridge", mtu)
        if not un and not br:
            continue
        x = ratio(get(un, "tcp", "gbps"), get(br, "tcp", "gbps"))
        out.append((f"L2 TCP, MTU {mtu}: ≥ {want:.1f}× Linux bridge",
                    f"{rx(x)} ({fmt(get(un, 'tcp', 'gbps'), '.2f')} vs "
                    f"{fmt(get(br, 'tcp', 'gbps'), '.2f')} Gbit/s)",
                    verdict(None if x is None else x >= want)))
    for mtu in (1500, 9000, 65520):
        # Issue 18: usernet against the ceiling any userspace switch on a TAP has here.
        un, cl = _l2(results, "usernet", mtu), _l2(results, "copyloop", mtu)
        x = ratio(get(un, "tcp", "gbps"), get(cl, "tcp", "gbps"))
        if x is None:
            continue
        out.append((f"L2 TCP, MTU {mtu}: ≥ 0.95× the copy-loop ceiling (TAP→TAP, no switch)",
                    f"{rx(x)} ({fmt(get(un, 'tcp', 'gbps'), '.2f')} vs "
                    f"{fmt(get(cl, 'tcp', 'gbps'), '.2f')} Gbit/s)", verdict(x >= 0.95)))
    un, br = _l2(results, "usernet", 1500), _l2(results, "bridge", 1500)
    x = ratio(get(un, "udp64", "rx_pps"), get(br, "udp64", "rx_pps"))
    loss = get(un, "udp64_fixed", "loss_pct")
    if x is not None or loss is not None:
        out.append(("64 B UDP received ≥ 0.95× bridge, loss < 5 %",
                    f"{fmt(x, '.2f')}× at full rate; loss {fmt(loss, '.2f')} % offered at "
                    f"0.95× the bridge's rate",
                    verdict(None if x is None or loss is None else x >= 0.95 and loss < 5)))
    b = get(br, "ping", "median_us")
    for system, what in (("usernet", ""), ("usernet-bp", ", usernet busy-polling")):
        a = get(_l2(results, system, 1500), "ping", "median_us")
        if a is not None and b is not None:
            out.append((f"ping RTT added over the bridge ≤ 15 µs (MTU 1500, median{what})",
                        f"{a - b:+.0f} µs ({a:.0f} vs {b:.0f} µs)", verdict(a - b <= 15)))
    for mtu, want in ((1500, 5.0), (65520, 2.0)):
        u = get(_nat(results, "usernet", mtu), "variants", "usernet", "egress", "gbps")
        s = get(_nat(results, "slirp4netns", mtu), "variants", "slirp4netns", "egress", "gbps")
        if u is None and s is None:
            continue
        x = ratio(u, s)
        out.append((f"NAT egress TCP, MTU {mtu}: ≥ {want:.0f}× slirp4netns",
                    f"{rx(x)} ({fmt(u, '.2f')} vs {fmt(s, '.2f')} Gbit/s)",
                    verdict(None if x is None else x >= want)))
    for mtu in sorted({r["mtu"] for r in results if r.get("suite") == "nat"}):
        # Issue 18: NAT against the routed kernel path, and download against upload.
        un = get(_nat(results, "usernet", mtu), "variants", "usernet") or {}
        kr = get(_nat(results, "kernel", mtu), "variants", "kernel routed") or {}
        for t, want in (("egress", 0.8), ("download", 0.7)):
            u, k = get(un, t, "gbps"), get(kr, t, "gbps")
            if u is None and k is None:
                continue
            x = ratio(u, k)
            out.append((f"NAT {t} TCP, MTU {mtu}: ≥ {want:.1f}× the routed kernel path",
                        f"{rx(x)} ({fmt(u, '.2f')} vs {fmt(k, '.2f')} Gbit/s)",
                        verdict(None if x is None else x >= want)))
        d, e = get(un, "download", "gbps"), get(un, "egress", "gbps")
        if d is not None and e is not None:
            x = ratio(d, e)
            out.append((f"NAT download within 1.2× of upload (egress), MTU {mtu}",
                        f"download ÷ upload {rx(x)} ({d:.2f} vs {e:.2f} Gbit/s)",
                        verdict(None if x is None else x >= 1 / 1.2)))
    for mtu in sorted({r["mtu"] for r in results if r.get("suite") == "nat"}):
        # The goal: loopback clients at least as fast as pasta's splice path while real
        # clients keep their address. A `splice = true` forward does both (loopback clients are
        # spliced, real clients take the regular path); the regular path is shown against
        # pasta's own path for real clients (its tap path), for reference, not as a goal.
        un = _nat(results, "usernet", mtu)
        p = get(_nat(results, "pasta", mtu), "variants", "pasta splice", "forward", "gbps")
        for label, what, goal in (
                ("usernet splice", "loopback client, usernet splice = true", True),
                ("usernet", "usernet's regular path, which real clients take", False)):
            if label not in (un.get("variants") or {}) and label != "usernet":
                continue
            u = get(un, "variants", label, "forward", "gbps")
            x = ratio(u, p)
            name = f"port forward TCP, MTU {mtu}: "
            name += (f"≥ 1.0× pasta's splice path ({what})" if goal
                     else f"for reference, {what}, vs pasta's splice path")
            out.append((name,
                        f"{rx(x)} ({fmt(u, '.2f')} vs {fmt(p, '.2f')} Gbit/s)",
                        verdict(None if x is None else x >= 1.0) if goal else "–"))
    ov = {r["system"]: r for r in results if r.get("suite") == "overlay"}
    if ov:
        u, k = get(ov.get("usernet"), "tcp", "gbps"), get(ov.get("kernel"), "tcp", "gbps")
        x = ratio(u, k)
        out.append(("overlay TCP (VXLAN, inner MTU 1500): ≥ 0.8× the kernel's vxlan + bridge",
                    f"{rx(x)} ({fmt(u, '.2f')} vs {fmt(k, '.2f')} Gbit/s)",
                    verdict(None if x is None else x >= 0.8)))
    m = next((r for r in results if r.get("suite") == "mem" and r["system"] == "usernet"
              and r["namespaces"] == 20), None)
    if m is not None:
        rss = m.get("rss_kib")
        peers = []
        for s in ("slirp4netns", "pasta"):
            p = next((r for r in results if r.get("suite") == "mem" and r["system"] == s
                      and r["namespaces"] == 20 and r.get("rss_kib")), None)
            if p:
                peers.append(f"{s} {p['rss_kib'] * 1024 / MB:.1f} MB")
        out.append(("one usernet serving 20 namespaces: RSS ≤ 20 MB",
                    (f"{rss * 1024 / MB:.1f} MB" if rss else "–")
                    + (f" (sum over 20 processes: {', '.join(peers)})" if peers else ""),
                    verdict(None if rss is None or m["status"] == "failed"
                            else rss * 1024 <= 20 * MB)))
    for mtu in sorted({r["mtu"] for r in results if r.get("suite") == "l2"}):
        u = get(_l2(results, "usernet", mtu), "tcp", "cpu_s_per_gbit")
        for o in ("ovs", "ovs-tso"):
            peer = _l2(results, o, mtu)
            c = get(peer, "tcp", "cpu_s_per_gbit")
            if u is None and c is None and not peer:
                continue
            x = ratio(u, c)
            if x is None:
                text = (f"no ratio: {L2_LABELS[o]} {peer.get('status', 'not run')} at this MTU"
                        if c is None else "no ratio: usernet has no figure")
            else:
                text = f"{x:.2f}× ({u:.3f} vs {c:.3f} s/Gbit)"
            out.append((f"CPU s per Gbit, L2 TCP MTU {mtu}: usernet ≤ 0.5× {L2_LABELS[o]}",
                        text, verdict(None if x is None else x <= 0.5)))
    return out + tc_goals(results)


def markdown(doc, chart_name=None):
    m, p, results = doc["machine"], doc["params"], doc["results"]
    v = m["versions"]

    class A:  # the few params the tables need
        reps = p["reps"]

    notes = []
    L = [f"### usernet benchmark — {m['timestamp']}", ""]
    L.append(f"{m['nproc']} vCPU ({m['cpu_model']}), kernel {m['kernel']}, {m['os']}; usernet "
             f"{m['usernet_rev']}"
             + (" (**binary older than the source**)" if m.get("usernet_binary_older_than_source")
                else "")
             + f"; {v['iperf3']}, Open vSwitch {v['openvswitch']}, vde2 {v['vde2']}, "
             f"slirp4netns {v['slirp4netns']}, passt {v['passt']}. iperf3 -t {p['time_s']}, "
             f"median of {p['reps']} (min–max); one system at a time. Load average (1 min) "
             f"{m['loadavg_start'][0]:.2f} at start, {m.get('loadavg_end', [0])[0]:.2f} at end; "
             f"the run took {doc.get('duration_s', 0) / 60:.1f} min.")
    L.append("")
    L.append(f"Command: `{p['command']}`")
    g = goals(results)
    if g:
        L += ["", "**Goals (issues 6, 16 and 18), ratios within this run:**", "",
              "| goal | measured | verdict |", "|---|---|---|"]
        L += [f"| {a} | {b} | {c} |" for a, b, c in g]
    l2r = [r for r in results if r.get("suite") == "l2"]
    if l2r:
        L += ["", "**L2: two namespaces joined by one switch** (iperf3 TCP A→B; 64 B UDP; "
              f"ping -c {p['pings']} -i 0.01)", ""]
        L += l2_table(l2r, A, notes)
    natr = [r for r in results if r.get("suite") == "nat"]
    if natr:
        L += ["", "**NAT: egress (namespace → host loopback through the gateway), download "
              "(the same with iperf3 -R: host → namespace) and port forward (host 127.0.0.1 → "
              "namespace); kernel routed: a veth pair, no NAT**", ""]
        L += nat_table(natr, A, notes)
    memr = [r for r in results if r.get("suite") == "mem"]
    if memr:
        L += ["", "**Memory: one system serving N namespaces** (after a ping and 1 MiB of TCP "
              "from each; RSS summed over all the system's processes)", ""]
        L += mem_table(memr, notes)
    scaler = [r for r in results if r.get("suite") == "scale"]
    if scaler:
        cpus = scaler[0].get("cpus") or m["nproc"]
        L += ["", "**Scaling: P isolated namespace pairs, one TCP flow each, all at once** "
              f"(iperf3 A_i→B_i, received Gbit/s summed over the P flows; MTU "
              f"{scaler[0]['mtu']}; one Linux bridge per pair, or one usernet process with one "
              f"network per pair and L event loops; {cpus} CPUs)", ""]
        L += scale_table(scaler, A, notes)
    ovr = [r for r in results if r.get("suite") == "overlay"]
    if ovr:
        L += ["", "**Overlay: two hosts' guests over VXLAN** (namespaces as hosts joined by a "
              f"veth underlay; iperf3 TCP guest A→guest B, inner MTU {ovr[0]['mtu']})", ""]
        L += overlay_table(ovr, A, notes)
    if chart_name:
        L += ["", f"![throughput chart]({chart_name})"]
    legend = []
    if l2r or natr:
        legend.append(
            "×bridge divides by the Linux bridge at the same MTU; usernet ÷ this divides "
            "usernet's figure by the row's: above 1, usernet is faster. CPU s/Gbit: user+system "
            "seconds of the system's own processes (usernet; ovs-vswitchd + ovsdb-server; "
            "vde_switch + both vde_plug2tap; slirp4netns; pasta) per Gbit received, median over "
            "the TCP runs; the kernel paths (veth, bridge) spend theirs in softirq, not in a "
            "process. Machine CPU s/Gbit: the whole machine's busy time (both iperf3 ends, "
            "softirq, the switch; and whatever else ran) per Gbit. UDP: kpps received with an "
            "unlimited sender (iperf3 -u -l 64 -b 0), and loss when offered 0.95× what the "
            "bridge received.")
    if scaler:
        legend.append(
            "Scaling: ×bridge divides by the Linux bridge with the same pairs, ×N loops by "
            "usernet with the fewest loops measured, N, and the same pairs; CPU s/Gbit is "
            "usernet's user+system seconds (all its threads) per Gbit received by all the "
            "flows, median over the runs.")
    if legend:
        L += ["", " ".join(legend)]
    if notes:
        L += ["", "Failures and notes:", ""] + notes
    return "\n".join(L) + "\n"


# -------------------------------------------------------------------------------- chart ----

def chart_groups(results):
    """[(group title, [(series key, value or None, failed reason, (min, max))])]."""
    groups = []
    l2 = [r for r in results if r.get("suite") == "l2"]
    for mtu in sorted({r["mtu"] for r in l2}):
        bars = []
        for r in (r for r in l2 if r["mtu"] == mtu):
            x = get(r, "tcp", "gbps")
            bars.append((r["system"], x, None if x is not None else (r.get("error") or "failed"),
                         (get(r, "tcp", "gbps_min"), get(r, "tcp", "gbps_max"))))
        groups.append((f"L2 TCP, MTU {mtu}", bars))
    nat = [r for r in results if r.get("suite") == "nat"]
    for t in ("egress", "download", "forward"):
        for mtu in sorted({r["mtu"] for r in nat}):
            bars = []
            for r in (r for r in nat if r["mtu"] == mtu):
                variants = r.get("variants") or {}
                if not variants:
                    variants = ({"pasta tap": {}, "pasta splice": {}} if r["system"] == "pasta"
                                else {r["system"]: {}})
                for label, v in variants.items():
                    x = get(v, t, "gbps")
                    if x is None and not get(v, t, "error") and r["status"] != "failed":
                        continue  # not measured (usernet splice has no egress): no bar
                    bars.append((label, x, None if x is not None else "failed",
                                 (get(v, t, "gbps_min"), get(v, t, "gbps_max"))))
            groups.append((f"NAT {t}, MTU {mtu}", bars))
    ov = [r for r in results if r.get("suite") == "overlay"]
    if ov:
        groups.append((f"overlay TCP, inner MTU {ov[0]['mtu']}", [
            ("kernel vxlan" if r["system"] == "kernel" else "usernet", get(r, "tcp", "gbps"),
             None if get(r, "tcp", "gbps") is not None else (r.get("error") or "failed"),
             (get(r, "tcp", "gbps_min"), get(r, "tcp", "gbps_max"))) for r in ov]))
    scale = [r for r in results if r.get("suite") == "scale"]
    for pairs in sorted({r["pairs"] for r in scale}):
        bars = []
        for r in (r for r in scale if r["pairs"] == pairs):
            x = get(r, "tcp", "gbps")
            bars.append(("bridge" if r["system"] == "bridge" else r["label"], x,
                         None if x is not None else (r.get("error") or "failed"),
                         (get(r, "tcp", "gbps_min"), get(r, "tcp", "gbps_max"))))
        groups.append((f"scale Σ, {pairs} pair{'s' if pairs > 1 else ''}", bars))
    return groups


def svg(doc):
    groups = [g for g in chart_groups(doc["results"]) if g[1]]
    if not groups:
        return None
    bw, gap, top, left, plot_h = 14, 26, 50, 56, 300
    series = []
    for _, bars in groups:
        for k, *_ in bars:
            if k not in series:
                series.append(k)
    width = left + sum(len(b) * bw + gap for _, b in groups) + 20
    width = max(width, 820)
    vmax = max([x for _, b in groups for _, x, _, (_, hi) in b for x in (x, hi)
                if x is not None] + [1.0])
    step = next(s for s in (0.5, 1, 2, 5, 10, 20, 50, 100) if vmax / s <= 8)
    ymax = step * (int(vmax / step) + 1)
    legend_rows = (len(series) + 4) // 5
    height = top + plot_h + 60 + legend_rows * 18
    y = lambda v: top + plot_h - v / ymax * plot_h  # noqa: E731
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
         f'<rect width="{width}" height="{height}" fill="white"/>',
         f'<text x="{left}" y="20" font-size="14" font-weight="bold">TCP throughput, Gbit/s '
         f'(iperf3, median of {doc["params"]["reps"]}; all in one run)</text>',
         f'<text x="{left}" y="36" fill="#555">{html.escape(doc["machine"]["timestamp"][:16])}, '
         f'{doc["machine"]["nproc"]} vCPU, kernel '
         f'{html.escape(doc["machine"]["kernel"])}; usernet '
         f'{html.escape(doc["machine"]["usernet_rev"])}; whiskers: min–max; ✗: failed, see the '
         f'table</text>']
    v = 0.0
    while v <= ymax + 1e-9:
        o.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                 f'stroke="#ddd"/>')
        o.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    x = left + gap / 2
    for title, bars in groups:
        gx = x
        for k, val, fail, (lo, hi) in bars:
            c = COLORS.get(k, "#444")
            if val is None:
                o.append(f'<text x="{x + bw / 2:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle" '
                         f'fill="{c}" font-weight="bold">✗<title>{html.escape(SERIES_LABELS.get(k, k))}: '
                         f'{html.escape(str(fail)[:200])}</title></text>')
            else:
                o.append(f'<rect x="{x:.1f}" y="{y(val):.1f}" width="{bw - 2}" '
                         f'height="{y(0) - y(val):.1f}" fill="{c}"><title>'
                         f'{html.escape(SERIES_LABELS.get(k, k))}: {val:.2f} Gbit/s</title></rect>')
                if lo is not None and hi is not None and hi > lo:
                    cx = x + (bw - 2) / 2
                    o.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(lo):.1f}" '
                             f'y2="{y(hi):.1f}" stroke="#000" stroke-width="1"/>')
                if k == "usernet" or k.endswith(("loop", "loops")):
                    o.append(f'<text x="{x + bw / 2:.1f}" y="{y(max(val, hi or 0)) - 3:.1f}" '
                             f'text-anchor="middle" font-size="9">{val:.1f}</text>')
            x += bw
        o.append(f'<text x="{(gx + x) / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                 f'{html.escape(title.split(", ")[0])}</text>')
        o.append(f'<text x="{(gx + x) / 2:.1f}" y="{top + plot_h + 30}" text-anchor="middle">'
                 f'{html.escape(title.split(", ")[1])}</text>')
        x += gap
    o.append(f'<line x1="{left}" x2="{width - 10}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
             f'stroke="#000"/>')
    for i, k in enumerate(series):
        lx = left + (i % 5) * 140
        ly = top + plot_h + 50 + (i // 5) * 18
        o.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" '
                 f'fill="{COLORS.get(k, "#444")}"/>')
        o.append(f'<text x="{lx + 14}" y="{ly}">{html.escape(SERIES_LABELS.get(k, k))}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"
