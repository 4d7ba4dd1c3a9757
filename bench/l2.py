#!/usr/bin/env python3
"""L2 suite: two namespaces A (10.99.0.1) and B (10.99.0.2) joined by one switch at a time.

Systems (each set up and torn down on its own, one at a time):

  veth      a plain veth pair A.eth0 <-> B.eth0 (reference: the cheapest possible path)
  bridge    the Linux bridge in a third namespace, two veth pairs (baseline of the ratios)
  usernet   `usernet up`, two netns ports (usernet creates a TAP eth0 inside A and B)
  usernet-tc  the same with traffic control (issue 16): a network policy of 10 rules that the
            traffic does not match, rate limits far above the rates reached on both ports, a
            live capture of port e0 running during every measurement; measured interleaved
            with `usernet` (both set up at once, runs alternating) when both are selected
  ovs       Open vSwitch, userspace datapath (datapath_type=netdev), two type=tap ports moved
            into A and B; ovsdb-server and ovs-vswitchd run in the third namespace with a
            private database and run directory
  ovs-tso   the same with other_config:userspace-tso-enable=true
  vde       vde_switch and one vde_plug2tap per namespace (TAP eth0 created inside A and B)

Per system and MTU: TCP throughput (iperf3, median of reps), CPU seconds of the system's
processes per Gbit moved, ping RTT; at the UDP MTUs (default 1500) 64-byte UDP: the most
packets/s received with an unlimited sender, and the loss at a fixed offered rate of 0.95x what
the bridge received in the same run.

Run through bench/run.py (`python3 bench/run.py --suites l2`); `python3 bench/l2.py ARGS` is the
same thing.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys

from common import (RES, TC_POLICY, TC_RATE_LIMIT, CaseFailed, Meter, Proc, TcCapture,
                    case_failed, iperf3, link_mtu, list_links, log, median, nsexec, proc_comm,
                    proc_cpu_s, run, sum_status_kib, summarize_tcp, tcp_rep, usernet_config,
                    usernet_ctl, usernet_drops, usernet_up, wait_until, PREFIX)

IP_A = "10.99.0.1"
IP_B = "10.99.0.2"
PORT = 5201
# The bridge first: it is the UDP reference.
SYSTEMS = ("bridge", "veth", "copyloop", "usernet", "usernet-bp", "usernet-ps", "usernet-tc",
           "ovs", "ovs-tso", "vde")
LABELS = {"veth": "veth pair", "bridge": "Linux bridge", "usernet": "usernet",
          "copyloop": "copy loop TAP→TAP (ceiling)",
          "usernet-bp": "usernet, busy-polling", "usernet-ps": "usernet, port security",
          "usernet-tc": "usernet, policy + limits + capture",
          "ovs": "OVS userspace", "ovs-tso": "OVS userspace+TSO", "vde": "vde_switch"}
UDP_FRACTION = 0.95  # fixed-rate UDP offers this fraction of the bridge's received rate


class Topology:
    """Endpoint namespaces joined by one system; `procs` are the system's processes.

    n endpoints (default: A and B) in `segments` isolated L2 segments of n / segments endpoints
    each: the bridge gets one Linux bridge per segment, usernet one network per segment (ovs and
    vde have one segment only). `loops`: usernet's [engine] loops (default --loops)."""

    def __init__(self, system, mtu, ctx, n=2, tag="l", segments=1, loops=None):
        if n % segments:
            raise ValueError(f"{n} endpoints do not split into {segments} segments")
        self.system = system
        self.mtu = mtu
        self.ctx = ctx
        self.loops = ctx.args.loops if loops is None else loops
        self.key = f"{tag}{mtu}-n{n}"
        base = f"{PREFIX}{tag}{mtu}"
        # Endpoint i: namespace base+"e"+i in segment s = i // (n / segments), eth0
        # 10.99.s.(j+1)/24 for its index j in the segment (segments <= 256, j <= 200).
        per = n // segments
        self.eps = [f"{base}e{i}" for i in range(n)]
        self.segment = [i // per for i in range(n)]
        self.ips = [f"10.99.{i // per}.{i % per + 1}" for i in range(n)]
        self.segments = segments
        self.a, self.b, self.sw = self.eps[0], self.eps[1 % n], base + "s"
        self.procs = []
        self.sock = None  # usernet control socket
        self.info = {}

    def __enter__(self):
        try:
            for ns in self.eps:
                RES.add_ns(ns)
            getattr(self, "_up_" + self.system.replace("-", "_"))()
            for ns, ip in zip(self.eps, self.ips):
                got = link_mtu(ns, "eth0")
                if got != self.mtu:
                    run(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(self.mtu)],
                        timeout=10)
                run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"], timeout=10)
                run(["ip", "-n", ns, "link", "set", "eth0", "up"], timeout=10)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in reversed(self.procs):
            p.stop()
        for ns in [self.sw] + self.eps[::-1]:
            if ns in RES.namespaces:
                RES.del_ns(ns)
        return False

    # -- systems ------------------------------------------------------------------------------

    def one_segment(self):
        if self.segments != 1:
            raise CaseFailed(f"{self.system}: one segment only (asked for {self.segments})")

    def _up_veth(self):
        if len(self.eps) != 2:
            raise CaseFailed("a veth pair joins two namespaces only")
        m = str(self.mtu)
        run(["ip", "-n", self.a, "link", "add", "eth0", "mtu", m, "type", "veth",
             "peer", "name", "eth0", "netns", self.b, "mtu", m], timeout=10)

    def _up_bridge(self):
        RES.add_ns(self.sw)
        s, m = self.sw, str(self.mtu)
        for seg in range(self.segments):
            run(["ip", "-n", s, "link", "add", f"br{seg}", "mtu", m, "type", "bridge",
                 "stp_state", "0", "forward_delay", "0"], timeout=10)
        for i, ns in enumerate(self.eps):
            port = f"p{i}"
            run(["ip", "-n", s, "link", "add", port, "mtu", m, "type", "veth",
                 "peer", "name", "eth0", "netns", ns, "mtu", m], timeout=10)
            run(["ip", "-n", s, "link", "set", port, "master", f"br{self.segment[i]}"],
                timeout=10)
            run(["ip", "-n", s, "link", "set", port, "up"], timeout=10)
        for seg in range(self.segments):
            run(["ip", "-n", s, "link", "set", f"br{seg}", "mtu", m], timeout=10)
            run(["ip", "-n", s, "link", "set", f"br{seg}", "up"], timeout=10)

    def _up_copyloop(self):
        """The ceiling (issue 18): examples/copyloop.rs, a TAP in each namespace created with
        usernet's own link code and frames copied between them in one thread, with the same
        syscalls and offloads as usernet but no switching."""
        self.one_segment()
        if len(self.eps) != 2:
            raise CaseFailed("the copy loop joins two namespaces only")
        if not self.ctx.copyloop_bin:
            raise CaseFailed("no copy loop binary: cargo build --release --example copyloop")
        p = Proc(f"copyloop-{self.key}", [self.ctx.copyloop_bin, self.a, self.b, str(self.mtu)])
        self.procs.append(p)
        wait_until("the copy loop's TAPs", lambda: all("eth0" in list_links(n)
                                                      for n in self.eps), [p], timeout=20)

    def _up_usernet_bp(self):
        self._up_usernet(busy_poll_us=self.ctx.args.busy_poll_us)

    def _up_usernet_ps(self):
        self._up_usernet(port_security=True)

    def _up_usernet_tc(self):
        self._up_usernet(tc=True)

    def _up_usernet(self, busy_poll_us=0, port_security=False, tc=False):
        engine = {"loops": self.loops, "mtu": self.mtu}
        if busy_poll_us:  # only then: a binary without the key still runs the plain case
            engine["busy_poll_us"] = busy_poll_us
        text = usernet_config(
            engine,
            [dict({"name": f"n{seg}", "gateway": False},
                  **({"port_security": True} if port_security else {}),
                  **({"policy": TC_POLICY} if tc and "policy" in self.ctx.args.tc_parts
                     else {}))
             for seg in range(self.segments)],
            [dict({"network": f"n{self.segment[i]}", "name": f"e{i}",
                   "netns": f"/run/netns/{ns}", "mtu": self.mtu},
                  **({"rate_limit": TC_RATE_LIMIT} if tc and "limits" in self.ctx.args.tc_parts
                     else {}))
             for i, ns in enumerate(self.eps)])
        p, self.sock = usernet_up(self.ctx.usernet_bin, self.key, text, self.eps)
        self.procs.append(p)
        for ns in self.eps:
            got = link_mtu(ns, "eth0")
            if got != self.mtu:
                raise CaseFailed(f"usernet's TAP in {ns} has mtu {got}, wanted {self.mtu}")

    def _up_ovs(self, tso=False):
        self.one_segment()
        for tool in ("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"):
            if not shutil.which(tool):
                raise CaseFailed(f"{tool} not installed (apt-get install openvswitch-switch)")
        RES.add_ns(self.sw)
        d = os.path.join(RES.tmpdir, f"{self.system}-{self.key}")
        os.makedirs(d)
        env = dict(os.environ, OVS_RUNDIR=d, OVS_LOGDIR=d, OVS_DBDIR=d, OVS_SYSCONFDIR=d)
        self.ovs_env = env
        db = os.path.join(d, "conf.db")
        self.ovs_db = "unix:" + os.path.join(d, "db.sock")
        run(["ovsdb-tool", "create", db, "/usr/share/openvswitch/vswitch.ovsschema"],
            timeout=10)
        srv = Proc(f"ovsdb-server-{self.system}-{self.key}", [
            "env", f"OVS_RUNDIR={d}", f"OVS_LOGDIR={d}", f"OVS_DBDIR={d}",
            f"OVS_SYSCONFDIR={d}", "ovsdb-server", db,
            f"--remote=punix:{d}/db.sock", f"--unixctl={d}/ovsdb.ctl",
            f"--pidfile={d}/ovsdb.pid", f"--log-file={d}/ovsdb.log"], ns=self.sw)
        self.procs.append(srv)
        wait_until("ovsdb-server socket", lambda: os.path.exists(f"{d}/db.sock"), [srv])
        self.vsctl("--no-wait", "init")
        # Read once at start-up: set before ovs-vswitchd runs.
        self.vsctl("--no-wait", "set", "Open_vSwitch", ".",
                   f"other_config:userspace-tso-enable={'true' if tso else 'false'}")
        vsd = Proc(f"ovs-vswitchd-{self.system}-{self.key}", [
            "env", f"OVS_RUNDIR={d}", f"OVS_LOGDIR={d}", f"OVS_DBDIR={d}",
            f"OVS_SYSCONFDIR={d}", "ovs-vswitchd", self.ovs_db,
            f"--unixctl={d}/vswitchd.ctl", f"--pidfile={d}/vswitchd.pid",
            f"--log-file={d}/vswitchd.log"], ns=self.sw)
        self.procs.append(vsd)
        wait_until("ovs-vswitchd control socket", lambda: os.path.exists(f"{d}/vswitchd.ctl"),
                   [srv, vsd])
        self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        for i, ns in enumerate(self.eps):
            port = f"p{i}"
            self.vsctl("add-port", "br0", port, "--", "set", "Interface", port, "type=tap",
                       f"mtu_request={self.mtu}")
            wait_until(f"OVS tap {port}", lambda: port in list_links(self.sw), [srv, vsd])
            # OVS applies mtu_request by interface name: wait for it before the tap leaves
            # OVS's namespace.
            wait_until(f"OVS tap {port} mtu {self.mtu}",
                       lambda: self.vsctl("get", "Interface", port, "mtu").stdout.strip()
                       == str(self.mtu) and link_mtu(self.sw, port) == self.mtu, [srv, vsd])
        for i, ns in enumerate(self.eps):
            run(["ip", "-n", self.sw, "link", "set", f"p{i}", "netns", ns], timeout=10)
            run(["ip", "-n", ns, "link", "set", f"p{i}", "name", "eth0"], timeout=10)
        self.info["ovs_log_path"] = f"{d}/vswitchd.log"
        if tso:
            with open(f"{d}/vswitchd.log", errors="replace") as f:
                if "Userspace TCP Segmentation Offloading support enabled" not in f.read():
                    raise CaseFailed("ovs-vswitchd did not log that userspace TSO is enabled")

    def _up_ovs_tso(self):
        self._up_ovs(tso=True)

    def vsctl(self, *argv):
        return run(["ovs-vsctl", f"--db={self.ovs_db}", "--timeout=10"] + list(argv),
                   timeout=15, env=self.ovs_env)

    def _up_vde(self):
        self.one_segment()
        for tool in ("vde_switch", "vde_plug2tap"):
            if not shutil.which(tool):
                raise CaseFailed(f"{tool} not installed (apt-get install vde2)")
        d = os.path.join(RES.tmpdir, f"vde-{self.key}")
        # stdin stays an open pipe: vde_switch reads console commands from it and exits on EOF.
        sw = Proc(f"vde_switch-{self.key}", ["vde_switch", "-s", d, "-n", "32"],
                  stdin=subprocess.PIPE)
        self.procs.append(sw)
        wait_until("vde_switch socket", lambda: os.path.exists(os.path.join(d, "ctl")), [sw])
        for ns in self.eps:
            p = Proc(f"vde_plug2tap-{ns}", ["vde_plug2tap", "-s", d, "eth0"], ns=ns)
            self.procs.append(p)
            wait_until(f"vde_plug2tap TAP in {ns}", lambda: "eth0" in list_links(ns), [sw, p])

    # -- state --------------------------------------------------------------------------------

    def pids(self):
        return [p.pid for p in self.procs]

    def alive(self):
        for p in self.procs:
            if not p.alive():
                raise CaseFailed(f"{p.label} died (exit {p.popen.returncode}): {p.tail()}")

    def counters(self):
        if not self.system.startswith("usernet") or not self.procs or not self.procs[0].alive():
            return None
        return usernet_drops(usernet_ctl(self.ctx.usernet_bin, self.sock, "stats"))

    def meter(self):
        return Meter(self.pids(), self.counters if self.system.startswith("usernet") else None)

    def measuring(self):
        """What runs around each measurement: usernet-tc's live capture of port e0."""
        if self.system == "usernet-tc" and "capture" in self.ctx.args.tc_parts:
            return TcCapture(self.ctx.usernet_bin, self.sock, "e0", self.key,
                             self.ctx.args.tc_capture_null, self.ctx.args.tc_snaplen)
        return contextlib.nullcontext()

    def hint(self):
        """What is known about a failure of this system (appended to the reason)."""
        if self.system == "vde" and self.mtu > 1500:
            return (" — vde_switch 2.3.2 holds a frame in a fixed buffer of 14 + 1500 (+32 "
                    "optional header) bytes (vde2 src/vde_switch/port.h, struct packet), so "
                    "larger frames do not pass")
        if self.system.startswith("ovs") and self.mtu > 1500:
            try:
                with open(self.info["ovs_log_path"], errors="replace") as f:
                    nodev = sum(1 for x in f if "No such device" in x)
            except (OSError, KeyError):
                nodev = 0
            seen = (f"; ovs-vswitchd.log has {nodev} 'No such device' messages: it addresses "
                    "the taps by name in its own namespace, which they have left")
            if self.system == "ovs":
                return (" — most likely cause: OVS's netdev-linux sizes a tap's receive buffer "
                        "from the MTU it reads by interface name, and takes 1500 when that read "
                        "fails" + seen)
            return " — cause not investigated" + seen
        return ""

    def log_tails(self):
        out = {p.label: p.tail(8) for p in self.procs}
        if "ovs_log_path" in self.info:
            try:
                with open(self.info["ovs_log_path"], errors="replace") as f:
                    lines = [x.rstrip() for x in f if "|WARN|" in x or "|ERR|" in x]
                out["ovs-vswitchd.log warnings"] = " | ".join(lines[-8:])
            except OSError:
                pass
        return out


# ------------------------------------------------------------------------------- tests ----

def warmup(topo):
    """Connectivity check, then a full-size don't-fragment ping at the configured MTU."""
    r = run(nsexec(topo.a, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", IP_B]),
            timeout=15, check=False)
    topo.alive()
    if r.returncode != 0:
        raise CaseFailed(f"no connectivity A->B (ping {IP_B}): {r.stdout.strip()[-160:]}")
    size = topo.mtu - 28
    r = run(nsexec(topo.a, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "-M", "do",
                            "-s", str(size), IP_B]), timeout=15, check=False)
    topo.alive()
    if r.returncode != 0:
        got = re.search(r"\d+ received", r.stdout)
        raise CaseFailed(f"full-MTU ping ({size} B payload, DF) A->B: "
                         f"{got.group(0) if got else (r.stdout + r.stderr).strip()[-160:]} "
                         f"of 2; {probe_sizes(topo)}{topo.hint()}")


def probe_sizes(topo):
    """Which DF ping payloads pass (one try each), to say where large frames stop."""
    ok, lost = [], []
    for size in (1472, 1476, 1477, 4000, 8972, 16000, 32000, 65492):
        if size > topo.mtu - 28:
            break
        r = run(nsexec(topo.a, ["ping", "-c", "1", "-W", "1", "-q", "-M", "do", "-s",
                                str(size), IP_B]), timeout=10, check=False)
        (ok if r.returncode == 0 else lost).append(size)
    return (f"DF ping payloads that passed: {','.join(map(str, ok)) or 'none'} B; lost: "
            f"{','.join(map(str, lost)) or 'none'} B")


def _with_capture(rep, cap):
    if cap is not None:
        rep["capture"] = cap.result
        c = cap.result
        log(f"    capture of {c['port']}: {c['frames']} frames, {c['dropped']} dropped "
            f"(port capture_dropped +{c['port_capture_dropped']}), {c['file_bytes']} B")
    return rep


def tcp_once(topo, args, i=0):
    """One TCP repetition A->B (usernet-tc: with its capture running)."""
    with topo.measuring() as cap:
        j, m = iperf3(topo.b, ["-B", IP_B], PORT, topo.a, IP_B, PORT, args.time,
                      meter=topo.meter(), alive=topo.alive)
    rep = tcp_rep(j, m)
    log(f"  {topo.system} tcp {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s, retr "
        f"{rep['retransmits']}, proc cpu {rep['proc_cpu_s']}")
    return _with_capture(rep, cap)


def measure_tcp(topo, args):
    return summarize_tcp([tcp_once(topo, args, i) for i in range(args.reps)])


def udp_once(topo, args, rate, i=0):
    """One 64 B UDP repetition at iperf3 -b RATE: received pps and loss."""
    with topo.measuring() as cap:
        j, m = iperf3(topo.b, ["-B", IP_B], PORT, topo.a, IP_B, PORT, args.time,
                      client_args=["-u", "-l", "64", "-b", str(rate)], meter=topo.meter(),
                      alive=topo.alive)
    s, sent = j["end"]["sum_received"], j["end"]["sum_sent"]
    rx = s["packets"] - s["lost_packets"]
    rep = {"rx_pps": rx / (s["seconds"] or args.time),
           "tx_pps": sent["packets"] / (sent["seconds"] or args.time),
           "loss_pct": s["lost_percent"], "rx_packets": rx,
           "lost_packets": s["lost_packets"], **m}
    log(f"  {topo.system} udp64 -b {rate} {i + 1}/{args.reps}: rx {rep['rx_pps'] / 1e3:.1f} "
        f"kpps, tx {rep['tx_pps'] / 1e3:.1f} kpps, loss {rep['loss_pct']:.1f}%")
    return _with_capture(rep, cap)


def summarize_udp(reps, rate):
    return {"offered_bps": rate, "reps": reps,
            "rx_pps": median([r["rx_pps"] for r in reps]),
            "tx_pps": median([r["tx_pps"] for r in reps]),
            "loss_pct": median([r["loss_pct"] for r in reps])}


def measure_udp(topo, args, rate):
    """64 B UDP at iperf3 -b RATE, repeated --reps times: median received pps and loss."""
    return summarize_udp([udp_once(topo, args, rate, i) for i in range(args.reps)], rate)


def measure_ping(topo, args):
    with topo.measuring(), topo.meter() as m:
        r = run(nsexec(topo.a, ["ping", "-c", str(args.pings), "-i", "0.01", "-W", "1",
                                IP_B]), timeout=args.pings * 0.01 + 20, check=False)
    topo.alive()
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
    loss = re.search(r"([\d.]+)% packet loss", r.stdout)
    each = [float(x) * 1e3 for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
    if not rtt or not each:
        raise CaseFailed(f"ping: no RTT in output: {r.stdout.strip()[-200:]}")
    # The median resists the odd slow reply when other work shares the CPUs.
    out = {"median_us": median(each), "avg_us": float(rtt.group(2)) * 1e3,
           "min_us": float(rtt.group(1)) * 1e3, "max_us": float(rtt.group(3)) * 1e3,
           "mdev_us": float(rtt.group(4)) * 1e3, "rtt_us": [round(x, 1) for x in each],
           "loss_pct": float(loss.group(1)) if loss else None, **m.as_dict()}
    log(f"  ping: median {out['median_us']:.0f} us, avg {out['avg_us']:.0f} "
        f"(min {out['min_us']:.0f})")
    return out


def record_state(res, topo, cpu0):
    """After a case's tests: the system's memory, its CPU seconds since cpu0 ({pid: s}),
    usernet's counters, the processes' log tails."""
    pids = topo.pids()
    if pids and all(p.alive() for p in topo.procs):
        res["max_rss_kib"] = sum_status_kib(pids, "VmHWM")
        res["rss_kib"] = sum_status_kib(pids, "VmRSS")
        res["case_cpu_s"] = round(sum((proc_cpu_s(p) or 0) - (cpu0[p] or 0) for p in pids), 2)
    if topo.system.startswith("usernet") and topo.procs and topo.procs[0].alive():
        res["usernet_stats"] = usernet_ctl(topo.ctx.usernet_bin, topo.sock, "stats")
    if pids:
        res["log_tail"] = topo.log_tails()


def run_case(system, mtu, ctx):
    args = ctx.args
    res = {"suite": "l2", "system": system, "label": LABELS[system], "mtu": mtu,
           "status": "ok", "error": None}
    log(f"l2 {system} mtu {mtu}")
    tests = [("tcp", lambda t: measure_tcp(t, args))]
    if mtu in args.udp_mtus:
        def udp_max(t):
            out = measure_udp(t, args, args.udp_rate)
            if system == "bridge":
                ctx.udp_ref[mtu] = out["rx_pps"]
            return out

        def udp_fixed(t):
            ref = ctx.udp_ref.get(mtu)
            if not ref:
                raise CaseFailed("no reference: the bridge's 64 B UDP rate was not measured")
            # iperf3 -b counts payload bits: 64 B x 8 per packet.
            return measure_udp(t, args, int(ref * UDP_FRACTION * 64 * 8))

        tests += [("udp64", udp_max), ("udp64_fixed", udp_fixed)]
    tests.append(("ping", lambda t: measure_ping(t, args)))
    try:
        with Topology(system, mtu, ctx) as topo:
            res["processes"] = [proc_comm(p) for p in topo.pids()]
            cpu0 = {p: proc_cpu_s(p) for p in topo.pids()}
            try:
                warmup(topo)
                for name, fn in tests:
                    try:
                        res[name] = fn(topo)
                    except CaseFailed as e:
                        res[name] = {"error": str(e)}
                        res["status"] = "partial"
                        log(f"  {name} FAILED: {e}")
                        topo.alive()  # a dead switch ends the case
            finally:
                record_state(res, topo, cpu0)
    except CaseFailed as e:
        case_failed(res, e)
    return res


def run_tc_pair(mtu, ctx):
    """`usernet` and `usernet-tc` measured interleaved: both topologies are up at once (two
    usernet processes; the idle one costs nothing) and each test's repetitions alternate
    between them, ABBA (pair i runs usernet first when i is even, usernet-tc first when odd),
    so that repetition i of the one and of the other make a pair measured under the same load
    of the machine. Returns the two cases' results, shaped as run_case's."""
    args = ctx.args
    systems = ("usernet", "usernet-tc")
    out = [{"suite": "l2", "system": s, "label": LABELS[s], "mtu": mtu, "status": "ok",
            "error": None, "interleaved_with": o} for s, o in zip(systems, systems[::-1])]
    log(f"l2 usernet + usernet-tc interleaved, mtu {mtu}")
    tests = [("tcp", args.reps, lambda t, i: tcp_once(t, args, i), summarize_tcp)]
    if mtu in args.udp_mtus:
        tests.append(("udp64", args.reps, lambda t, i: udp_once(t, args, args.udp_rate, i),
                      lambda reps: summarize_udp(reps, args.udp_rate)))
        ref = ctx.udp_ref.get(mtu)
        if ref:
            rate = int(ref * UDP_FRACTION * 64 * 8)
            tests.append(("udp64_fixed", args.reps, lambda t, i: udp_once(t, args, rate, i),
                          lambda reps: summarize_udp(reps, rate)))
        else:
            for res in out:
                res["udp64_fixed"] = {"error": "no reference: the bridge's 64 B UDP rate was "
                                      "not measured"}
                res["status"] = "partial"
    tests.append(("ping", 1, lambda t, i: measure_ping(t, args), lambda reps: reps[0]))
    try:
        with Topology(systems[0], mtu, ctx) as ta, \
                Topology(systems[1], mtu, ctx, tag="t") as tb:
            topos = (ta, tb)
            cpu0 = []
            for res, t in zip(out, topos):
                res["processes"] = [proc_comm(p) for p in t.pids()]
                cpu0.append({p: proc_cpu_s(p) for p in t.pids()})
            try:
                for t in topos:
                    warmup(t)
                for name, n, once, summarize in tests:
                    reps = ([], [])
                    try:
                        for i in range(n):
                            for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                                reps[k].append(once(topos[k], i))
                        for res, r in zip(out, reps):
                            res[name] = summarize(r)
                    except CaseFailed as e:
                        for res in out:
                            res[name] = {"error": str(e)}
                            res["status"] = "partial"
                        log(f"  {name} FAILED: {e}")
                        for t in topos:
                            t.alive()  # a dead switch ends the case
            finally:
                for res, t, c in zip(out, topos, cpu0):
                    record_state(res, t, c)
    except CaseFailed as e:
        for res in out:
            case_failed(res, e)
    return out


def run_suite(ctx):
    """All L2 cases, one system at a time; the bridge runs before the systems compared to it.
    With both usernet and usernet-tc selected, the two run interleaved (run_tc_pair)."""
    args = ctx.args
    systems = [s for s in SYSTEMS if s in args.l2_systems]
    paired = "usernet" in systems and "usernet-tc" in systems
    results = []
    for mtu in args.mtus:
        for system in systems:
            if paired and system == "usernet":
                results += run_tc_pair(mtu, ctx)
            elif not (paired and system == "usernet-tc"):
                results.append(run_case(system, mtu, ctx))
    return results


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "l2"] + sys.argv[1:]))
