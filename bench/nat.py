#!/usr/bin/env python3
"""NAT suite: usernet's gateway NAT and port forward next to the routed kernel path,
slirp4netns and pasta.

  egress   iperf3 client in a guest namespace -> the gateway address that the system maps to the
           host's loopback -> iperf3 server on the host's 127.0.0.1 (upload: guest -> host)
  download the same connection with `iperf3 -R`: the server on the host sends, the guest
           receives (host -> guest through the NAT)
  forward  iperf3 client on the host -> 127.0.0.1:HOSTPORT (Docker -p / hostfwd / pasta -t)
           -> iperf3 server in the guest

The "host" is a sandbox namespace that has only loopback and a carrier-less TAP holding the
default route, so nothing can leave it: the NAT processes run there and every host-side socket
they open goes to the sandbox's own addresses. pasta is measured on two paths: its tap path
(guest -> gateway address; host -> a non-loopback host address), like usernet and slirp4netns,
and its splice path (loopback to loopback, -T/-t: no tap, no TCP stack). The `kernel` system is
the reference without NAT: a veth pair between the sandbox host and the guest, routed (the guest
reaches the host's veth address, the host the guest's).

The starters (`start_usernet`, `start_slirp4netns`, `start_pasta`) and `Sandbox` are shared with
mem.py. Run through bench/run.py (`python3 bench/run.py --suites nat`).
"""

import os
import shutil
import sys

from common import (RES, CaseFailed, Meter, Proc, PREFIX, case_failed, iperf3, link_has_addr,
                    link_mtu, list_links, listening, log, nsexec, proc_comm, proc_cpu_s, run,
                    slirp_api, sum_status_kib, summarize_tcp, tcp_rep, usernet_config,
                    usernet_ctl, usernet_drops, usernet_up, wait_until)

EGRESS_PORT = 5301  # host iperf3 server, on 127.0.0.1 in the sandbox host
GUEST_PORT = 5201  # guest iperf3 server (forward target)
FWD_PORT = 6201  # published host port
SPLICE_PORT = 6202  # usernet: the same forward with splice = true
HOST_ADDR = "10.77.0.2"  # the sandbox host's non-loopback address (on the uplink)
HOST_GW = "10.77.0.1"  # nothing answers there: the uplink has no carrier
SYSTEMS = ("kernel", "usernet", "slirp4netns", "pasta")
TESTS = ("egress", "download", "forward")
# The routed reference: a veth pair, host side KR_HOST, guest side KR_GUEST.
KR_HOST, KR_GUEST = "10.66.0.1", "10.66.0.2"
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


def start_usernet(ctx, h, guests, mtu, key, forward=True, splice=True):
    """One `usernet up` in h serving every guest namespace (gateway, NAT; a forward to guest 0,
    and the same spliced on SPLICE_PORT when the binary has it). Returns (proc, control
    socket); guest i gets un_guest(i) statically."""
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
        [{"name": "n", "subnet": "10.88.0.0/24", "ipv6": "off",
          "dns_upstreams": ["127.0.0.1:9"], "mtu": mtu}],
        [{"network": "n", "name": f"g{i}", "netns": f"/run/netns/{g}", "mtu": mtu}
         for i, g in enumerate(guests)], forwards)
    p, sock = usernet_up(ctx.usernet_bin, key, text, guests, ns=h)
    for i, g in enumerate(guests):
        guest_static(g, mtu, un_guest(i), UN_GW)
    return p, sock


def start_kernel(h, g, mtu):
    """The routed reference: a veth pair between the sandbox host h and the guest g (no NAT,
    no process); the guest's default route is the host's end."""
    run(["ip", "-n", h, "link", "add", "kr0", "mtu", str(mtu), "type", "veth", "peer", "name",
         "eth0", "mtu", str(mtu), "netns", g], timeout=10)
    run(["ip", "-n", h, "addr", "add", f"{KR_HOST}/24", "dev", "kr0"], timeout=10)
    run(["ip", "-n", h, "link", "set", "kr0", "up"], timeout=10)
    run(["ip", "-n", g, "link", "set", "lo", "up"], timeout=10)
    guest_static(g, mtu, KR_GUEST, KR_HOST)


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
    target (ip, port) from the host). The download test uses the egress target. `host_bind`:
    the address the host's server listens on for egress and download (its loopback, which the
    NAT systems map their gateway address to; the routed reference's veth address)."""

    def __init__(self, system, mtu, ctx):
        self.system = system
        self.mtu = mtu
        self.ctx = ctx
        self.sandbox = Sandbox(f"n{mtu}")
        self.h = self.sandbox.h
        self.g = f"{PREFIX}n{mtu}g"
        self.proc = None
        self.sock = None
        self.variants = []
        self.splice_error = None
        self.host_bind = "127.0.0.1"

    def __enter__(self):
        try:
            self.sandbox.up()
            RES.add_ns(self.g)
            key = f"nat{self.mtu}"
            if self.system == "kernel":
                start_kernel(self.h, self.g, self.mtu)
                self.host_bind = KR_HOST
                self.variants = [("kernel routed", (KR_HOST, EGRESS_PORT),
                                  (KR_GUEST, GUEST_PORT))]
            elif self.system == "usernet":
                splice = usernet_splice_supported(self.ctx)
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
        if self.system != "usernet" or not self.proc.alive():
            return None
        return usernet_drops(usernet_ctl(self.ctx.usernet_bin, self.sock, "stats"))

    def meter(self):
        if self.proc is None:  # the kernel path: no process (machine CPU only)
            return Meter()
        return Meter([self.proc.pid], self.counters if self.system == "usernet" else None)


def measure(topo, test, target, args):
    ip, port = target
    client_args = []
    if test in ("egress", "download"):  # server on the host, client in the guest
        srv_ns, srv_args, srv_port, cli_ns = topo.h, ["-B", topo.host_bind], port, topo.g
        if test == "download":  # the host's server sends: host -> guest
            client_args = ["-R"]
    else:  # forward: server in the guest (all addresses), client on the host
        srv_ns, srv_args, srv_port, cli_ns = topo.g, [], GUEST_PORT, topo.h
    reps = []
    for i in range(args.reps):
        j, m = iperf3(srv_ns, srv_args, srv_port, cli_ns, ip, port, args.time,
                      client_args=client_args, meter=topo.meter(), alive=topo.alive)
        rep = tcp_rep(j, m)
        reps.append(rep)
        log(f"  {test} {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s, retr "
            f"{rep['retransmits']}, {topo.system} cpu {rep['proc_cpu_s']}"
            + (f", STALLED {rep['stalled_intervals']}/{rep['intervals']} s"
               if rep["stalled_intervals"] else ""))
    return summarize_tcp(reps, {"target": f"{ip}:{port}"})


def run_case(system, mtu, ctx):
    args = ctx.args
    res = {"suite": "nat", "system": system, "mtu": mtu, "status": "ok", "error": None,
           "variants": {}}
    log(f"nat {system} mtu {mtu}")
    if system == "usernet" and not usernet_splice_supported(ctx):
        res["note"] = "this usernet binary has no spliced forwards (splice = true): not measured"
    try:
        with Topology(system, mtu, ctx) as topo:
            res["processes"] = [proc_comm(topo.proc.pid)] if topo.proc else []
            if topo.splice_error:
                res["status"] = "partial"
                res["note"] = f"usernet splice: failed to start with splice = true: " \
                    f"{topo.splice_error}"
            # Connectivity first: ping the host's address through the NAT. A failure is noted
            # but does not end the case (the TCP tests say for themselves whether TCP passes).
            r = run(nsexec(topo.g, ["ping", "-c", "2", "-i", "0.2", "-W", "2", "-q",
                                    HOST_ADDR]), timeout=15, check=False)
            topo.alive()
            res["connectivity"] = ("ok" if r.returncode == 0 else
                                   f"ping {HOST_ADDR} from the guest failed: "
                                   f"{r.stdout.strip()[-120:]}")
            try:
                for label, egress, forward in topo.variants:
                    v = res["variants"].setdefault(label, {})
                    for test in args.nat_tests:
                        target = forward if test == "forward" else egress
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
                if topo.proc is not None and topo.proc.alive():
                    res["max_rss_kib"] = sum_status_kib([topo.proc.pid], "VmHWM")
                    res["total_cpu_s"] = proc_cpu_s(topo.proc.pid)
                    if system == "usernet":
                        res["usernet_stats"] = usernet_ctl(ctx.usernet_bin, topo.sock, "stats")
                        res["usernet_gateways"] = usernet_ctl(ctx.usernet_bin, topo.sock,
                                                              "gateway")
                if topo.proc is not None:
                    res["log_tail"] = topo.proc.tail(10)
    except CaseFailed as e:
        case_failed(res, e)
    return res


def run_suite(ctx):
    results = []
    for mtu in ctx.args.nat_mtus:
        for system in SYSTEMS:
            if system in ctx.args.nat_systems:
                results.append(run_case(system, mtu, ctx))
    return results


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "nat"] + sys.argv[1:]))
