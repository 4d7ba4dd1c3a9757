#!/usr/bin/env python3
"""NAT suite: usernet's gateway NAT and port forward next to slirp4netns and pasta.

  egress   iperf3 client in a guest namespace -> the gateway address that the system maps to the
           host's loopback -> iperf3 server on the host's 127.0.0.1
  forward  iperf3 client on the host -> 127.0.0.1:HOSTPORT (Docker -p / hostfwd / pasta -t)
           -> iperf3 server in the guest

The "host" is a sandbox namespace that has only loopback and a carrier-less TAP holding the
default route, so nothing can leave it: the NAT processes run there and every host-side socket
they open goes to the sandbox's own addresses. pasta is measured on two paths: its tap path
(guest -> gateway address; host -> a non-loopback host address), like usernet and slirp4netns,
and its splice path (loopback to loopback, -T/-t: no tap, no TCP stack).

The starters (`start_usernet`, `start_slirp4netns`, `start_pasta`) and `Sandbox` are shared with
mem.py. Run through bench/run.py (`python3 bench/run.py --suites nat`).

`usernet-tc` is usernet with traffic control (issue 16): a network policy of 10 rules that the
traffic does not match, rate limits far above the rates reached on the guest's port, and a live
capture of that port running during every measurement. With both usernet and usernet-tc
selected, the two are set up at once and measured interleaved (runs alternating); usernet's
splice forward is measured after the pairs.
"""

import contextlib
import os
import shutil
import sys

from common import (RES, TC_POLICY, TC_RATE_LIMIT, CaseFailed, Meter, Proc, PREFIX, TcCapture,
                    case_failed, iperf3, link_has_addr, link_mtu, list_links, listening, log,
                    nsexec, proc_comm, proc_cpu_s, run, slirp_api, sum_status_kib,
                    summarize_tcp, tcp_rep, usernet_config, usernet_ctl, usernet_drops,
                    usernet_up, wait_until)

EGRESS_PORT = 5301  # host iperf3 server, on 127.0.0.1 in the sandbox host
GUEST_PORT = 5201  # guest iperf3 server (forward target)
FWD_PORT = 6201  # published host port
SPLICE_PORT = 6202  # usernet: the same forward with splice = true
HOST_ADDR = "10.77.0.2"  # the sandbox host's non-loopback address (on the uplink)
HOST_GW = "10.77.0.1"  # nothing answers there: the uplink has no carrier
SYSTEMS = ("usernet", "usernet-tc", "slirp4netns", "pasta")
TESTS = ("egress", "forward")
UN_GW = "10.88.0.1"
SL_GW, SL_GUEST = "10.0.2.2", "10.0.2.100"  # slirp4netns defaults (--cidr 10.0.2.0/24)
PA_GW, PA_GUEST = "10.0.2.2", "10.0.2.100"  # pasta: explicit addresses


def un_guest(i):
    return f"10.88.0.{i + 2}"


class Sandbox:
    """The sandbox "host" namespace: loopback plus a carrier-less TAP with the default route."""

    def __init__(self, tag):
        self.h = f"{PREFIX}{tag}h"
        self.uplink = "uplink0"  # inside our own namespace: no prefix needed

    def up(self):
        h = self.h
        RES.add_ns(h)
        # Let ping sockets be opened (ICMP through pasta and usernet's NAT), as desktop
        # distributions (systemd) configure it; the kernel default "1 0" allows nobody.
        run(["ip", "netns", "exec", h, "sysctl", "-qw",
             "net.ipv4.ping_group_range=0 2147483647"], timeout=10)
        run(["ip", "-n", h, "tuntap", "add", "mode", "tap", "name", self.uplink], timeout=10)
        run(["ip", "-n", h, "addr", "add", f"{HOST_ADDR}/24", "dev", self.uplink], timeout=10)
        run(["ip", "-n", h, "link", "set", self.uplink, "up"], timeout=10)
        run(["ip", "-n", h, "route", "add", "default", "via", HOST_GW], timeout=10)

    def down(self):
        if self.h in RES.namespaces:
            RES.del_ns(self.h)


def guest_static(g, mtu, addr, gw):
    run(["ip", "-n", g, "link", "set", "eth0", "mtu", str(mtu)], timeout=10)
    run(["ip", "-n", g, "addr", "add", f"{addr}/24", "dev", "eth0"], timeout=10)
    run(["ip", "-n", g, "link", "set", "eth0", "up"], timeout=10)
    run(["ip", "-n", g, "route", "add", "default", "via", gw], timeout=10)


def usernet_splice_supported(ctx):
    """Whether this usernet has spliced forwards ([[forward]] splice = true)."""
    if getattr(ctx, "splice_ok", None) is None:
        r = run([ctx.usernet_bin, "ctl", "forward", "add", "--help"], timeout=10, check=False)
        ctx.splice_ok = "--splice" in (r.stdout + r.stderr)
    return ctx.splice_ok


def start_usernet(ctx, h, guests, mtu, key, forward=True, splice=True, tc=False):
    """One `usernet up` in h serving every guest namespace (gateway, NAT; a forward to guest 0,
    and the same spliced on SPLICE_PORT when the binary has it). Returns (proc, control
    socket); guest i gets un_guest(i) statically. `tc`: the network gets TC_POLICY and each
    port TC_RATE_LIMIT (the usernet-tc system)."""
    forwards = []
    if forward:
        forwards.append({"network": "n", "publish": f"127.0.0.1:{FWD_PORT}:{GUEST_PORT}/tcp",
                         "to": un_guest(0)})
        if splice and usernet_splice_supported(ctx):
            # A spliced forward names the netns port (usernet enters its namespace).
            forwards.append({"network": "n",
                             "publish": f"127.0.0.1:{SPLICE_PORT}:{GUEST_PORT}/tcp",
                             "to": "g0", "splice": True})
    text = usernet_config(
        {"loops": ctx.args.loops, "mtu": mtu},
        [dict({"name": "n", "subnet": "10.88.0.0/24", "ipv6": "off",
               "dns_upstreams": ["127.0.0.1:9"], "mtu": mtu},
              **({"policy": TC_POLICY} if tc and "policy" in ctx.args.tc_parts else {}))],
        [dict({"network": "n", "name": f"g{i}", "netns": f"/run/netns/{g}", "mtu": mtu},
              **({"rate_limit": TC_RATE_LIMIT} if tc and "limits" in ctx.args.tc_parts
                 else {}))
         for i, g in enumerate(guests)], forwards)
    p, sock = usernet_up(ctx.usernet_bin, key, text, guests, ns=h)
    for i, g in enumerate(guests):
        guest_static(g, mtu, un_guest(i), UN_GW)
    return p, sock


def start_slirp4netns(h, g, mtu, key, forward=True):
    if not shutil.which("slirp4netns"):
        raise CaseFailed("slirp4netns not installed (apt-get install slirp4netns)")
    sock = os.path.join(RES.tmpdir, f"slirp-{key}.sock")
    # Host loopback is reachable at 10.0.2.2 by default (no --disable-host-loopback);
    # --disable-dns: no 10.0.2.3 -> host resolver redirect.
    p = Proc(f"slirp4netns-{key}", [
        "slirp4netns", "--netns-type=path", "--configure", f"--mtu={mtu}", "--disable-dns",
        f"--api-socket={sock}", f"/run/netns/{g}", "eth0"], ns=h)
    wait_until("slirp4netns: guest eth0 configured", lambda: os.path.exists(sock)
               and "eth0" in list_links(g) and link_has_addr(g, "eth0", SL_GUEST), [p])
    if forward:
        ans = slirp_api(sock, {"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": "127.0.0.1", "host_port": FWD_PORT,
            "guest_port": GUEST_PORT}})
        if "return" not in ans:
            raise CaseFailed(f"slirp4netns add_hostfwd: {ans}")
    return p


def start_pasta(h, g, mtu, key, forward=True):
    if not shutil.which("pasta"):
        raise CaseFailed("pasta not installed (apt-get install passt)")
    # -f: foreground (we own the pid); --runas 0: as root the 2023 build otherwise drops to
    # nobody before joining the namespace and fails; -4: IPv4 only; -D 127.0.0.1: DNS
    # information local (no --dns-forward: pasta forwards no DNS); -t: the port forward;
    # -T: ns 127.0.0.1:EGRESS_PORT -> host 127.0.0.1:EGRESS_PORT (the splice path);
    # the gateway address maps to the host's loopback (no --no-map-gw).
    fwd = (["-t", f"{FWD_PORT}:{GUEST_PORT}", "-T", str(EGRESS_PORT)] if forward
           else ["-t", "none", "-T", "none"])
    p = Proc(f"pasta-{key}", [
        "pasta", "-f", "--runas", "0", "-4", "--config-net", "-I", "eth0", "-m", str(mtu),
        "-a", PA_GUEST, "-n", "24", "-g", PA_GW, "-D", "127.0.0.1", "-u", "none", "-U", "none"]
        + fwd + ["--netns", f"/run/netns/{g}"], ns=h)
    wait_until("pasta: guest eth0 configured", lambda: "eth0" in list_links(g)
               and link_has_addr(g, "eth0", PA_GUEST), [p])
    if link_mtu(g, "eth0") != mtu:
        run(["ip", "-n", g, "link", "set", "eth0", "mtu", str(mtu)], timeout=10)
    if forward:
        # pasta listens on the host's ports a moment after configuring the guest.
        wait_until("pasta -t listener", lambda: listening(h, FWD_PORT), [p], timeout=5)
    return p


class Topology:
    """A sandbox host, one guest namespace, and one NAT system joining them.

    `variants`: the paths measured, (label, egress target (ip, port) from the guest, forward
    target (ip, port) from the host)."""

    def __init__(self, system, mtu, ctx, tag="n", splice=True):
        self.system = system
        self.mtu = mtu
        self.ctx = ctx
        self.tag = tag
        self.want_splice = splice
        self.sandbox = Sandbox(f"{tag}{mtu}")
        self.h = self.sandbox.h
        self.g = f"{PREFIX}{tag}{mtu}g"
        self.proc = None
        self.sock = None
        self.variants = []
        self.splice_error = None

    def __enter__(self):
        try:
            self.sandbox.up()
            RES.add_ns(self.g)
            key = f"nat{self.tag}{self.mtu}"
            if self.system == "usernet-tc":
                self.proc, self.sock = start_usernet(self.ctx, self.h, [self.g], self.mtu, key,
                                                     splice=False, tc=True)
                self.variants = [("usernet-tc", (UN_GW, EGRESS_PORT),
                                  ("127.0.0.1", FWD_PORT))]
            elif self.system == "usernet":
                splice = self.want_splice and usernet_splice_supported(self.ctx)
                try:
                    self.proc, self.sock = start_usernet(self.ctx, self.h, [self.g], self.mtu,
                                                         key)
                except CaseFailed as e:
                    if not splice or "splice" not in str(e):
                        raise
                    # Measure the rest rather than lose the whole row.
                    self.splice_error = str(e)
                    splice = False
                    RES.del_ns(self.g)
                    RES.add_ns(self.g)
                    self.proc, self.sock = start_usernet(self.ctx, self.h, [self.g], self.mtu,
                                                         key + "b", splice=False)
                self.variants = [("usernet", (UN_GW, EGRESS_PORT), ("127.0.0.1", FWD_PORT))]
                if splice:
                    # splice = true applies to forwards only: no egress for this variant.
                    self.variants.append(("usernet splice", None, ("127.0.0.1", SPLICE_PORT)))
            elif self.system == "slirp4netns":
                self.proc = start_slirp4netns(self.h, self.g, self.mtu, key)
                self.variants = [("slirp4netns", (SL_GW, EGRESS_PORT), ("127.0.0.1", FWD_PORT))]
            else:
                self.proc = start_pasta(self.h, self.g, self.mtu, key)
                self.variants = [
                    ("pasta tap", (PA_GW, EGRESS_PORT), (HOST_ADDR, FWD_PORT)),
                    ("pasta splice", ("127.0.0.1", EGRESS_PORT), ("127.0.0.1", FWD_PORT))]
            got = link_mtu(self.g, "eth0")
            if got != self.mtu:
                raise CaseFailed(f"guest eth0 has mtu {got}, wanted {self.mtu}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.stop()
        if self.g in RES.namespaces:
            RES.del_ns(self.g)
        self.sandbox.down()
        return False

    def alive(self):
        if self.proc is not None and not self.proc.alive():
            raise CaseFailed(f"{self.system} died (exit {self.proc.popen.returncode}): "
                             f"{self.proc.tail()}")

    def counters(self):
        if not self.system.startswith("usernet") or not self.proc.alive():
            return None
        return usernet_drops(usernet_ctl(self.ctx.usernet_bin, self.sock, "stats"))

    def meter(self):
        return Meter([self.proc.pid],
                     self.counters if self.system.startswith("usernet") else None)

    def measuring(self):
        """What runs around each measurement: usernet-tc's live capture of the guest's port."""
        if self.system == "usernet-tc" and "capture" in self.ctx.args.tc_parts:
            return TcCapture(self.ctx.usernet_bin, self.sock, "g0", f"nat{self.tag}{self.mtu}",
                             self.ctx.args.tc_capture_null, self.ctx.args.tc_snaplen)
        return contextlib.nullcontext()


def measure_once(topo, test, target, args, i=0):
    """One TCP repetition of `test` (egress or forward) to target (ip, port)."""
    ip, port = target
    if test == "egress":  # server on the host's loopback, client in the guest
        srv_ns, srv_args, srv_port, cli_ns = topo.h, ["-B", "127.0.0.1"], port, topo.g
    else:  # forward: server in the guest (all addresses), client on the host
        srv_ns, srv_args, srv_port, cli_ns = topo.g, [], GUEST_PORT, topo.h
    with topo.measuring() as cap:
        j, m = iperf3(srv_ns, srv_args, srv_port, cli_ns, ip, port, args.time,
                      meter=topo.meter(), alive=topo.alive)
    rep = tcp_rep(j, m)
    log(f"  {topo.system} {test} {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s, retr "
        f"{rep['retransmits']}, {topo.system} cpu {rep['proc_cpu_s']}"
        + (f", STALLED {rep['stalled_intervals']}/{rep['intervals']} s"
           if rep["stalled_intervals"] else ""))
    if cap is not None:
        rep["capture"] = c = cap.result
        log(f"    capture of {c['port']}: {c['frames']} frames, {c['dropped']} dropped "
            f"(port capture_dropped +{c['port_capture_dropped']}), {c['file_bytes']} B")
    return rep


def measure(topo, test, target, args):
    ip, port = target
    return summarize_tcp([measure_once(topo, test, target, args, i) for i in range(args.reps)],
                         {"target": f"{ip}:{port}"})


def connectivity(topo):
    """Connectivity first: the host's address pinged from the guest through the NAT. A failure
    is noted but does not end the case (the TCP tests say for themselves whether TCP passes)."""
    r = run(nsexec(topo.g, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", HOST_ADDR]),
            timeout=15, check=False)
    topo.alive()
    return ("ok" if r.returncode == 0 else
            f"ping {HOST_ADDR} from the guest failed: {r.stdout.strip()[-120:]}")


def run_case(system, mtu, ctx):
    args = ctx.args
    res = {"suite": "nat", "system": system, "mtu": mtu, "status": "ok", "error": None,
           "variants": {}}
    log(f"nat {system} mtu {mtu}")
    if system == "usernet" and not usernet_splice_supported(ctx):
        res["note"] = "this usernet binary has no spliced forwards (splice = true): not measured"
    try:
        with Topology(system, mtu, ctx) as topo:
            res["processes"] = [proc_comm(topo.proc.pid)]
            if topo.splice_error:
                res["status"] = "partial"
                res["note"] = f"usernet splice: failed to start with splice = true: " \
                    f"{topo.splice_error}"
            res["connectivity"] = connectivity(topo)
            try:
                for label, egress, forward in topo.variants:
                    v = res["variants"].setdefault(label, {})
                    for test in args.nat_tests:
                        target = egress if test == "egress" else forward
                        if target is None:
                            continue
                        log(f" {label} {test} -> {target[0]}:{target[1]}")
                        try:
                            v[test] = measure(topo, test, target, args)
                        except CaseFailed as e:
                            v[test] = {"target": f"{target[0]}:{target[1]}", "error": str(e)}
                            res["status"] = "partial"
                            log(f"  {label} {test} FAILED: {e}")
                            topo.alive()  # a dead NAT process ends the case
            finally:
                if topo.proc.alive():
                    res["max_rss_kib"] = sum_status_kib([topo.proc.pid], "VmHWM")
                    res["total_cpu_s"] = proc_cpu_s(topo.proc.pid)
                    if system.startswith("usernet"):
                        res["usernet_stats"] = usernet_ctl(ctx.usernet_bin, topo.sock, "stats")
                        res["usernet_gateways"] = usernet_ctl(ctx.usernet_bin, topo.sock,
                                                              "gateway")
                res["log_tail"] = topo.proc.tail(10)
    except CaseFailed as e:
        case_failed(res, e)
    return res


def run_tc_pair(mtu, ctx):
    """`usernet` and `usernet-tc` measured interleaved (then usernet's splice forward): both
    sandboxes are up at once and each test's repetitions alternate between them, ABBA (pair i
    runs usernet first when i is even), so that repetition i of each makes a pair measured
    under the same load of the machine. Returns the two cases' results, shaped as run_case's."""
    args = ctx.args
    systems = ("usernet", "usernet-tc")
    out = [{"suite": "nat", "system": s, "mtu": mtu, "status": "ok", "error": None,
            "variants": {}, "interleaved_with": o} for s, o in zip(systems, systems[::-1])]
    out[0]["note"] = ("measured interleaved with usernet-tc (its splice forward after the "
                      "pairs, not interleaved)")
    log(f"nat usernet + usernet-tc interleaved, mtu {mtu}")
    try:
        with Topology(systems[0], mtu, ctx) as ta, \
                Topology(systems[1], mtu, ctx, tag="c") as tb:
            topos = (ta, tb)
            for res, t in zip(out, topos):
                res["processes"] = [proc_comm(t.proc.pid)]
                res["connectivity"] = connectivity(t)
            try:
                for test in args.nat_tests:
                    vs = [dict((lab, (e, f)) for lab, e, f in t.variants) for t in topos]
                    targets = [vs[0]["usernet"], vs[1]["usernet-tc"]]
                    targets = [e if test == "egress" else f for e, f in targets]
                    reps = ([], [])
                    try:
                        for i in range(args.reps):
                            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                                reps[k].append(measure_once(topos[k], test, targets[k], args, i))
                        for res, r, tg in zip(out, reps, targets):
                            res["variants"].setdefault(res["system"], {})[test] = \
                                summarize_tcp(r, {"target": f"{tg[0]}:{tg[1]}"})
                    except CaseFailed as e:
                        for res, tg in zip(out, targets):
                            res["variants"].setdefault(res["system"], {})[test] = {
                                "target": f"{tg[0]}:{tg[1]}", "error": str(e)}
                            res["status"] = "partial"
                        log(f"  {test} FAILED: {e}")
                        for t in topos:
                            t.alive()
                # usernet's spliced forward (its own goal), alone: usernet-tc has none.
                for label, _, forward in ta.variants:
                    if label == "usernet splice" and "forward" in args.nat_tests:
                        v = out[0]["variants"].setdefault(label, {})
                        try:
                            v["forward"] = measure(ta, "forward", forward, args)
                        except CaseFailed as e:
                            v["forward"] = {"target": f"{forward[0]}:{forward[1]}",
                                            "error": str(e)}
                            out[0]["status"] = "partial"
                            ta.alive()
            finally:
                for res, t in zip(out, topos):
                    if t.proc.alive():
                        res["max_rss_kib"] = sum_status_kib([t.proc.pid], "VmHWM")
                        res["total_cpu_s"] = proc_cpu_s(t.proc.pid)
                        res["usernet_stats"] = usernet_ctl(ctx.usernet_bin, t.sock, "stats")
                    res["log_tail"] = t.proc.tail(10)
    except CaseFailed as e:
        for res in out:
            case_failed(res, e)
    return out


def run_suite(ctx):
    """With both usernet and usernet-tc selected, the two run interleaved (run_tc_pair)."""
    systems = [s for s in SYSTEMS if s in ctx.args.nat_systems]
    paired = "usernet" in systems and "usernet-tc" in systems
    results = []
    for mtu in ctx.args.nat_mtus:
        for system in systems:
            if paired and system == "usernet":
                results += run_tc_pair(mtu, ctx)
            elif not (paired and system == "usernet-tc"):
                results.append(run_case(system, mtu, ctx))
    return results


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "nat"] + sys.argv[1:]))
