#!/usr/bin/env python3
"""Overlay suite: two "hosts" (namespaces H_A, H_B joined by a veth underlay) each with one guest
namespace (G_A 10.99.0.1, G_B 10.99.0.2), the guests on one L2 network stretched over VXLAN
(VNI 42, UDP 4789) between the hosts. One system at a time:

  kernel    the Linux kernel's vxlan device + a Linux bridge in each host, a veth into the guest
            (the reference of the ratios: what `ip link add type vxlan` gives)
  usernet   one `usernet up` in each host: a network without gateway, a netns port into the
            guest (TAP eth0) and a vxlan port (`vxlan = {vni, local, remotes, mtu}`)

The inner MTU is 1500 (the guests' eth0), so the underlay veth carries 1550 (VXLAN over IPv4
costs 50 bytes). Per system: TCP throughput G_A -> G_B (iperf3, median of --reps), CPU seconds of
the system's processes per Gbit moved (usernet: both daemons; the kernel spends its time in
softirq, counted in the machine's CPU s/Gbit), ping RTT.

Run through bench/run.py (`python3 bench/run.py --suites overlay`); `python3 bench/overlay.py
ARGS` is the same thing.
"""

import sys

from common import (RES, CaseFailed, case_failed, link_mtu, log, proc_comm, proc_cpu_s, run,
                    usernet_config, usernet_ctl, usernet_drops, usernet_up)
import l2

SYSTEMS = ("kernel", "usernet")
LABELS = {"kernel": "Linux vxlan + bridge", "usernet": "usernet VXLAN"}
MTU = 1500  # inner
OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
VNI = 42
UNDERLAY = ("172.30.9.1", "172.30.9.2")
GUESTS = (l2.IP_A, l2.IP_B)  # what l2's warmup and measurements use
PORT = 5201


class Topology(l2.Topology):
    """l2's two endpoints (G_A, G_B: addresses, MTU, teardown, process bookkeeping), joined by
    a VXLAN overlay between two host namespaces H_A, H_B instead of one switch."""

    def __init__(self, system, ctx):
        super().__init__(system, MTU, ctx, tag="o")
        self.hosts = [self.sw + "a", self.sw + "b"]
        self.socks = []

    def __exit__(self, *exc):
        super().__exit__(*exc)
        for ns in self.hosts[::-1]:
            if ns in RES.namespaces:
                RES.del_ns(ns)
        return False

    def _underlay(self):
        """H_A and H_B joined by a veth u0 (UNDERLAY addresses, MTU + OVERHEAD)."""
        for ns in self.hosts:
            RES.add_ns(ns)
        ha, hb = self.hosts
        m = str(MTU + OVERHEAD)
        run(["ip", "-n", ha, "link", "add", "u0", "mtu", m, "type", "veth", "peer", "name",
             "u0", "netns", hb, "mtu", m], timeout=10)
        for h, ip in zip(self.hosts, UNDERLAY):
            run(["ip", "-n", h, "addr", "add", f"{ip}/24", "dev", "u0"], timeout=10)
            run(["ip", "-n", h, "link", "set", "u0", "up"], timeout=10)
            run(["ip", "-n", h, "link", "set", "lo", "up"], timeout=10)

    def _up_kernel(self):
        self._underlay()
        for i, (h, g) in enumerate(zip(self.hosts, self.eps)):
            local, remote = UNDERLAY[i], UNDERLAY[1 - i]
            run(["ip", "-n", h, "link", "add", "vx0", "type", "vxlan", "id", str(VNI), "local",
                 local, "remote", remote, "dstport", "4789", "dev", "u0"], timeout=10)
            run(["ip", "-n", h, "link", "add", "br0", "mtu", str(MTU), "type", "bridge",
                 "stp_state", "0", "forward_delay", "0"], timeout=10)
            run(["ip", "-n", h, "link", "add", "p0", "mtu", str(MTU), "type", "veth", "peer",
                 "name", "eth0", "netns", g, "mtu", str(MTU)], timeout=10)
            for dev in ("vx0", "p0"):
                run(["ip", "-n", h, "link", "set", dev, "master", "br0"], timeout=10)
                run(["ip", "-n", h, "link", "set", dev, "up"], timeout=10)
            run(["ip", "-n", h, "link", "set", "br0", "up"], timeout=10)
            got = link_mtu(h, "vx0")
            if got != MTU:
                raise CaseFailed(f"the kernel's vx0 in {h} has mtu {got}, wanted {MTU}")

    def _up_usernet(self):
        self._underlay()
        for i, (h, g) in enumerate(zip(self.hosts, self.eps)):
            local, remote = UNDERLAY[i], UNDERLAY[1 - i]
            text = usernet_config(
                {"loops": self.loops, "mtu": MTU},
                [{"name": "ov", "gateway": False}],
                [{"network": "ov", "name": "guest", "netns": f"/run/netns/{g}", "mtu": MTU},
                 {"network": "ov", "name": "vx0",
                  "vxlan": {"vni": VNI, "local": local, "remotes": [remote], "port": 4789,
                            "mtu": MTU}}])
            p, sock = usernet_up(self.ctx.usernet_bin, f"ov{i}", text, [g], ns=h)
            self.procs.append(p)
            self.socks.append(sock)

    def counters(self):
        """Both daemons' drop counters, summed."""
        out = {}
        for p, sock in zip(self.procs, self.socks):
            if not p.alive():
                return None
            for k, v in usernet_drops(usernet_ctl(self.ctx.usernet_bin, sock, "stats")).items():
                out[k] = out.get(k, 0) + v
        return out


def run_case(system, ctx):
    args = ctx.args
    res = {"suite": "overlay", "system": system, "label": LABELS[system], "mtu": MTU,
           "status": "ok", "error": None}
    log(f"overlay {system} inner mtu {MTU}")
    try:
        with Topology(system, ctx) as topo:
            res["processes"] = [proc_comm(p) for p in topo.pids()]
            cpu0 = {p: proc_cpu_s(p) for p in topo.pids()}
            try:
                l2.warmup(topo)
                for name, fn in (("tcp", l2.measure_tcp), ("ping", l2.measure_ping)):
                    try:
                        res[name] = fn(topo, args)
                    except CaseFailed as e:
                        res[name] = {"error": str(e)}
                        res["status"] = "partial"
                        log(f"  {name} FAILED: {e}")
                        topo.alive()
            finally:
                pids = topo.pids()
                if pids and all(p.alive() for p in topo.procs):
                    res["case_cpu_s"] = round(
                        sum((proc_cpu_s(p) or 0) - (cpu0[p] or 0) for p in pids), 2)
                    res["usernet_stats_hosts"] = [usernet_ctl(ctx.usernet_bin, s, "stats")
                                            for s in topo.socks]
                if pids:
                    res["log_tail"] = topo.log_tails()
    except CaseFailed as e:
        case_failed(res, e)
    return res


def run_suite(ctx):
    """The kernel first (the reference), then usernet."""
    return [run_case(s, ctx) for s in SYSTEMS if s in ctx.args.overlay_systems]


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "overlay"] + sys.argv[1:]))
