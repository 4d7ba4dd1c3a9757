#!/usr/bin/env python3
"""Scaling suite: P isolated namespace pairs, P TCP flows at once, through one usernet with L
event loops, and through the Linux bridge (the reference, same pairs, same run).

For each pair count P (--scale-pairs, default 1,2,4), one system at a time:

  bridge    one switch namespace holding P Linux bridges (one per pair) and 2P veth pairs
  usernet   ONE `usernet up` with [engine] loops = L (each of --scale-loops, default 1,2): one
            network without gateway per pair (pairs are isolated, as containers of different
            networks are) and one netns port per namespace (TAP eth0 inside it), ports in the
            order A0, B0, A1, B1, ... (usernet puts each on the loop with the fewest ports)

Pair i: namespaces A_i (10.99.i.1/24) and B_i (10.99.i.2/24), MTU 1500. After a ping A_i -> B_i
in every pair, P iperf3 clients run in parallel, A_i -> B_i port 5201+i, for --time seconds;
the received Gbit/s of the P flows are summed, median of --reps. CPU s/Gbit: usernet's
user+system seconds over the total Gbit received; machine CPU s/Gbit as in the L2 suite.

Run through bench/run.py (`python3 bench/run.py --suites scale`); `python3 bench/scale.py ARGS`
is the same thing.
"""

import os
import sys

from common import (CaseFailed, case_failed, iperf3_many, log, nsexec, proc_comm, proc_cpu_s, run,
                    summarize_tcp, tcp_rep_many, usernet_ctl)
import l2

MTU = 1500
PORT = 5201  # pair i's iperf3 server listens on PORT + i


def label(system, loops):
    if system == "bridge":
        return "Linux bridge"
    return f"usernet {loops} loop" + ("" if loops == 1 else "s")


def pairs_of(topo):
    """[(A_i namespace, B_i namespace, B_i address)]"""
    return [(topo.eps[k], topo.eps[k + 1], topo.ips[k + 1]) for k in range(0, len(topo.eps), 2)]


def check(topo):
    """One ping A_i -> B_i in every pair; the first pair that fails fails the case."""
    for i, (a, _, ip_b) in enumerate(pairs_of(topo)):
        r = run(nsexec(a, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", ip_b]), timeout=15,
                check=False)
        topo.alive()
        if r.returncode != 0:
            raise CaseFailed(f"no connectivity in pair {i} (ping {ip_b}): "
                             f"{r.stdout.strip()[-160:]}")


def measure(topo, args):
    flows = [(b, ["-B", ip_b], PORT + i, a, ip_b, PORT + i)
             for i, (a, b, ip_b) in enumerate(pairs_of(topo))]
    reps = []
    for i in range(args.reps):
        js, m = iperf3_many(flows, args.time, meter=topo.meter(), alive=topo.alive)
        rep = tcp_rep_many(js, m)
        reps.append(rep)
        log(f"  tcp x{len(flows)} {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s ("
            + " + ".join(f"{f['gbps']:.2f}" for f in rep["flows"])
            + f"), retr {rep['retransmits']}, proc cpu {rep['proc_cpu_s']}")
    return summarize_tcp(reps)


def run_case(system, pairs, loops, ctx):
    cpus = os.cpu_count()
    res = {"suite": "scale", "system": system, "label": label(system, loops), "pairs": pairs,
           "loops": loops, "mtu": MTU, "cpus": cpus, "status": "ok", "error": None}
    if loops and loops > cpus:
        res["note"] = f"{loops} loops on {cpus} CPUs"
    log(f"scale {res['label']} x{pairs} pairs")
    tag = f"s{pairs}" + ("b" if system == "bridge" else f"u{loops}") + "-"
    try:
        with l2.Topology(system, MTU, ctx, n=2 * pairs, tag=tag, segments=pairs,
                         loops=loops) as topo:
            res["processes"] = [proc_comm(p) for p in topo.pids()]
            cpu0 = {p: proc_cpu_s(p) for p in topo.pids()}
            try:
                if system == "usernet":
                    ports = usernet_ctl(ctx.usernet_bin, topo.sock, "ports")
                    if isinstance(ports, list):
                        # Which loop each port landed on: {"e0": 0, "e1": 1, ...}.
                        res["port_loops"] = {p.get("name"): p.get("event_loop") for p in ports}
                check(topo)
                res["tcp"] = measure(topo, ctx.args)
            finally:
                l2.record_state(res, topo, cpu0)
    except CaseFailed as e:
        case_failed(res, e)
    return res


def run_suite(ctx):
    """Per pair count: the bridge first, then usernet at each loop count."""
    results = []
    for pairs in ctx.args.scale_pairs:
        results.append(run_case("bridge", pairs, None, ctx))
        for loops in ctx.args.scale_loops:
            results.append(run_case("usernet", pairs, loops, ctx))
    return results


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "scale"] + sys.argv[1:]))
