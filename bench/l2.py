#!/usr/bin/env python3
"""Side-by-side L2 throughput benchmark: veth pair vs Linux bridge vs usernet.

Measures, one system at a time, between two network namespaces that this script creates:

  veth     a plain veth pair (reference: the cheapest possible path)
  bridge   the Linux kernel bridge with two veth pairs (baseline for the ratios)
  usernet  usernet with two netns (TAP) ports

For each system and MTU: TCP throughput (iperf3, median of --reps), 64-byte UDP packet rate
and loss (iperf3 -u -l 64), ping RTT, and for usernet its CPU time and peak RSS. Prints a
Markdown table with absolute numbers and ratios to the kernel bridge from the same run, and
writes bench/results/l2-latest.{json,md}.

Stdlib only. Run as root:  sudo python3 bench/l2.py [--quick] [--mtus 1500,9000,65520]

All traffic stays inside namespaces named ub<pid>*; they, every process started and the
temporary directory are removed on exit, on failure, and on SIGINT/SIGTERM/SIGHUP.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PREFIX = f"ub{os.getpid()}"
IP_A = "10.99.0.1"
IP_B = "10.99.0.2"
PORT = 5201
SYSTEMS = ("veth", "bridge", "usernet")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Interrupted(Exception):
    pass


class CaseFailed(Exception):
    pass


def log(msg):
    print(f"[l2] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes ----

class Resources:
    """Everything we create, so that it can be torn down whatever happens."""

    def __init__(self):
        self.namespaces = []  # names, in creation order
        self.procs = []  # subprocess.Popen objects we started
        self.tmpdir = None

    def add_ns(self, name):
        run(["ip", "netns", "add", name], timeout=10)
        self.namespaces.append(name)
        # No IPv6 (no DAD/RS/MLD chatter during measurements); loopback up.
        for key in ("all", "default"):
            run(["ip", "netns", "exec", name, "sysctl", "-qw",
                 f"net.ipv6.conf.{key}.disable_ipv6=1"], timeout=10, check=False)
        run(["ip", "-n", name, "link", "set", "lo", "up"], timeout=10)
        return name

    def del_ns(self, name):
        r = run(["ip", "netns", "del", name], timeout=20, check=False)
        if r.returncode != 0 and os.path.exists(f"/run/netns/{name}"):
            log(f"warning: could not delete netns {name}: {r.stderr.strip()}")
        if name in self.namespaces:
            self.namespaces.remove(name)

    def spawn(self, argv, **kw):
        p = subprocess.Popen(argv, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, grace=5.0):
        """Stops one process we started, by pid; returns its exit code."""
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ignored signal {sig}; sending SIGKILL")
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    log(f"warning: pid {p.pid} did not die")
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def cleanup(self):
        for p in list(self.procs):
            self.stop(p)
        for ns in list(reversed(self.namespaces)):
            self.del_ns(ns)
        # Belt and braces: anything else carrying our prefix.
        for ns in list_netns():
            if ns.startswith(PREFIX):
                self.del_ns(ns)
        for link in list_links():
            if link.startswith(PREFIX):
                run(["ip", "link", "del", link], timeout=10, check=False)
        if self.tmpdir and os.path.isdir(self.tmpdir):
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


RES = Resources()


def run(argv, timeout, check=True, **kw):
    """subprocess.run with a mandatory timeout and captured text output."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise CaseFailed(f"timeout after {timeout}s: {' '.join(argv)}") from e
    if check and r.returncode != 0:
        raise CaseFailed(f"{' '.join(argv)} exited {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r


def list_netns():
    r = run(["ip", "netns", "list"], timeout=10, check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def list_links(ns=None):
    argv = ["ip", "-o", "link"] if ns is None else ["ip", "-n", ns, "-o", "link"]
    r = run(argv, timeout=10, check=False)
    out = []
    for line in r.stdout.splitlines():
        m = re.match(r"\d+:\s+([^:@]+)", line)
        if m:
            out.append(m.group(1))
    return out


def nsexec(ns, argv):
    return ["ip", "netns", "exec", ns] + argv


# ------------------------------------------------------------------------------ topology ----

class Topology:
    """Two endpoint namespaces A (10.99.0.1) and B (10.99.0.2) joined by one system."""

    def __init__(self, system, mtu, args):
        self.system = system
        self.mtu = mtu
        self.args = args
        self.a = f"{PREFIX}a"
        self.b = f"{PREFIX}b"
        self.sw = f"{PREFIX}s"  # bridge namespace
        self.proc = None  # usernet
        self.sock = None
        self.logpath = None

    def __enter__(self):
        RES.add_ns(self.a)
        RES.add_ns(self.b)
        getattr(self, f"_up_{self.system}")()
        for ns, ip in ((self.a, IP_A), (self.b, IP_B)):
            run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"], timeout=10)
            run(["ip", "-n", ns, "link", "set", "eth0", "up"], timeout=10)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            RES.stop(self.proc)
        for ns in (self.sw, self.b, self.a):
            if ns in RES.namespaces:
                RES.del_ns(ns)
        return False

    def _up_veth(self):
        run(["ip", "-n", self.a, "link", "add", "eth0", "mtu", str(self.mtu), "type", "veth",
             "peer", "name", "eth0", "netns", self.b, "mtu", str(self.mtu)], timeout=10)

    def _up_bridge(self):
        RES.add_ns(self.sw)
        s = self.sw
        run(["ip", "-n", s, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge",
             "stp_state", "0", "forward_delay", "0"], timeout=10)
        for ns, port in ((self.a, "pa"), (self.b, "pb")):
            run(["ip", "-n", s, "link", "add", port, "mtu", str(self.mtu), "type", "veth",
                 "peer", "name", "eth0", "netns", ns, "mtu", str(self.mtu)], timeout=10)
            run(["ip", "-n", s, "link", "set", port, "master", "br0"], timeout=10)
            run(["ip", "-n", s, "link", "set", port, "up"], timeout=10)
        run(["ip", "-n", s, "link", "set", "br0", "mtu", str(self.mtu)], timeout=10)
        run(["ip", "-n", s, "link", "set", "br0", "up"], timeout=10)

    def _up_usernet(self):
        d = RES.tmpdir
        cfg = os.path.join(d, f"usernet-{self.mtu}.toml")
        self.sock = os.path.join(d, f"usernet-{self.mtu}.sock")
        self.logpath = os.path.join(d, f"usernet-{self.mtu}.log")
        with open(cfg, "w") as f:
            f.write(usernet_config(self.a, self.b, self.mtu, self.args.loops))
        self.logf = open(self.logpath, "w")
        self.proc = RES.spawn([self.args.usernet_bin, "up", "-c", cfg, "--socket", self.sock],
                              stdout=self.logf, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise CaseFailed(f"usernet exited {self.proc.returncode} at startup: "
                                 f"{self.log_tail()}")
            ready = os.path.exists(self.sock) and all(
                "eth0" in list_links(ns) for ns in (self.a, self.b))
            if ready:
                break
            if time.monotonic() > deadline:
                raise CaseFailed(f"usernet not ready after 10s: {self.log_tail()}")
            time.sleep(0.05)
        for ns in (self.a, self.b):
            r = run(["ip", "-n", ns, "-o", "link", "show", "eth0"], timeout=10)
            m = re.search(r"mtu (\d+)", r.stdout)
            if m and int(m.group(1)) != self.mtu:
                raise CaseFailed(f"TAP in {ns} has mtu {m.group(1)}, wanted {self.mtu}")

    def log_tail(self, n=6):
        if not self.logpath:
            return ""
        try:
            with open(self.logpath, errors="replace") as f:
                lines = [strip_ansi(x.rstrip()) for x in f if x.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise CaseFailed(f"usernet died (exit {self.proc.returncode}): {self.log_tail()}")

    def usernet_stats(self):
        if self.proc is None:
            return None
        r = run([self.args.usernet_bin, "ctl", "--socket", self.sock, "--json", "stats"],
                timeout=10, check=False)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout).strip()[-300:]}
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {"error": "unparsable: " + r.stdout[:300]}


def usernet_config(ns_a, ns_b, mtu, loops):
    ports = "".join(
        f'[[port]]\nnetwork = "n"\nname = "{name}"\nnetns = "/run/netns/{ns}"\nmtu = {mtu}\n\n'
        for name, ns in (("a", ns_a), ("b", ns_b)))
    return (f"[engine]\nloops = {loops}\nmtu = {mtu}\n\n"
            f'[[network]]\nname = "n"\n\n{ports}')


def strip_ansi(s):
    return re.sub(r"\x1b\[[0-9;]*m", "", s)


# --------------------------------------------------------------------------- measurement ----

def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def proc_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def system_busy_s():
    """Non-idle CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])  # user..steal; guest is already counted in user
    return (total - idle) / CLK_TCK


class Meter:
    """CPU accounting around one measurement: usernet process and whole machine."""

    def __init__(self, topo):
        self.topo = topo
        self.pid = topo.proc.pid if topo.proc is not None else None
        self.drops = None

    def __enter__(self):
        self.d0 = usernet_drops(self.topo.usernet_stats()) if self.pid else None
        self.t0 = time.monotonic()
        self.sys0 = system_busy_s()
        self.p0 = proc_cpu_s(self.pid) if self.pid else None
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.sys_cpu = system_busy_s() - self.sys0
        p1 = proc_cpu_s(self.pid) if self.pid else None
        self.proc_cpu = (p1 - self.p0) if (p1 is not None and self.p0 is not None) else None
        if self.d0 is not None and exc[0] is None and self.topo.proc.poll() is None:
            d1 = usernet_drops(self.topo.usernet_stats())
            self.drops = {k: v - self.d0.get(k, 0) for k, v in d1.items()
                          if v - self.d0.get(k, 0)}
        return False

    def as_dict(self):
        return {"wall_s": round(self.wall, 3), "system_cpu_s": round(self.sys_cpu, 3),
                "usernet_cpu_s": None if self.proc_cpu is None else round(self.proc_cpu, 3),
                "usernet_drops": self.drops}


def wait_listen(ns, port, server, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CaseFailed(f"iperf3 server exited {server.returncode} before listening")
        r = run(nsexec(ns, ["ss", "-Hltn", f"sport = :{port}"]), timeout=5, check=False)
        if f":{port}" in r.stdout:
            return
        time.sleep(0.05)
    raise CaseFailed(f"iperf3 server in {ns} not listening on {port} after {timeout}s")


def iperf3(topo, client_args, secs):
    """One iperf3 run A -> B with a fresh one-off server. Returns (json, Meter)."""
    server = RES.spawn(nsexec(topo.b, ["iperf3", "-s", "-1", "-B", IP_B, "-p", str(PORT)]),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)
    try:
        wait_listen(topo.b, PORT, server)
        argv = nsexec(topo.a, ["iperf3", "-c", IP_B, "-p", str(PORT), "-t", str(secs), "-J",
                               "--connect-timeout", "3000"] + client_args)
        with Meter(topo) as m:
            r = run(argv, timeout=secs + 20, check=False)
        topo.check_alive()
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise CaseFailed(f"iperf3 exited {r.returncode}, no JSON: "
                             f"{(r.stderr or r.stdout).strip()[-300:]}")
        if j.get("error"):
            raise CaseFailed(f"iperf3: {j['error']}")
        return j, m
    finally:
        RES.stop(server, grace=3)


def measure_tcp(topo, args):
    reps = []
    for i in range(args.reps):
        j, m = iperf3(topo, [], args.time)
        end = j["end"]
        rep = {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
               "retransmits": end["sum_sent"].get("retransmits"), **m.as_dict()}
        reps.append(rep)
        log(f"  tcp rep {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s, "
            f"retr {rep['retransmits']}, usernet cpu {rep['usernet_cpu_s']}")
    med = lambda k: median([r[k] for r in reps])  # noqa: E731
    return {"reps": reps, "gbps": med("gbps"), "gbps_min": min(r["gbps"] for r in reps),
            "gbps_max": max(r["gbps"] for r in reps), "retransmits": med("retransmits"),
            "usernet_cpu_s": med("usernet_cpu_s"), "system_cpu_s": med("system_cpu_s"),
            "wall_s": med("wall_s")}


def measure_udp(topo, args):
    j, m = iperf3(topo, ["-u", "-l", "64", "-b", args.udp_rate], args.time)
    s = j["end"]["sum_received"]
    sent = j["end"]["sum_sent"]
    rx = s["packets"] - s["lost_packets"]
    secs = s["seconds"] or args.time
    out = {"rx_pps": rx / secs, "tx_pps": sent["packets"] / (sent["seconds"] or args.time),
           "loss_pct": s["lost_percent"], "rx_packets": rx, "lost_packets": s["lost_packets"],
           **m.as_dict()}
    log(f"  udp64: rx {out['rx_pps'] / 1e3:.1f} kpps, tx {out['tx_pps'] / 1e3:.1f} kpps, "
        f"loss {out['loss_pct']:.1f}%")
    return out


def warmup(topo):
    """ARP + connectivity check, bounded."""
    r = run(nsexec(topo.a, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-q", IP_B]),
            timeout=15, check=False)
    topo.check_alive()
    if r.returncode != 0:
        raise CaseFailed(f"no connectivity A->B: {r.stdout.strip()[-200:]} "
                         f"{topo.log_tail() if topo.proc else ''}")
    # A large ping at the configured MTU (DF set): verifies the path carries full-size frames.
    size = topo.mtu - 28
    r = run(nsexec(topo.a, ["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", "-M", "do",
                            "-s", str(size), IP_B]), timeout=15, check=False)
    topo.check_alive()
    if r.returncode != 0:
        raise CaseFailed(f"full-MTU ping ({size} B payload, DF) failed: "
                         f"{(r.stdout + r.stderr).strip()[-200:]}")


def measure_ping(topo, args):
    with Meter(topo) as m:
        r = run(nsexec(topo.a, ["ping", "-c", str(args.pings), "-i", "0.01", "-q", "-W", "1",
                                IP_B]), timeout=args.pings * 0.01 + 20, check=False)
    topo.check_alive()
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", r.stdout)
    loss = re.search(r"([\d.]+)% packet loss", r.stdout)
    if not rtt:
        raise CaseFailed(f"ping: no RTT in output: {r.stdout.strip()[-200:]}")
    out = {"avg_us": float(rtt.group(2)) * 1e3, "min_us": float(rtt.group(1)) * 1e3,
           "max_us": float(rtt.group(3)) * 1e3, "mdev_us": float(rtt.group(4)) * 1e3,
           "loss_pct": float(loss.group(1)) if loss else None, **m.as_dict()}
    log(f"  ping: avg {out['avg_us']:.0f} us (min {out['min_us']:.0f}, max {out['max_us']:.0f})")
    return out


def run_case(system, mtu, args):
    res = {"system": system, "mtu": mtu, "status": "ok", "error": None}
    log(f"{system} mtu {mtu}: setting up")
    try:
        with Topology(system, mtu, args) as topo:
            try:
                warmup(topo)
                for name, fn in (("tcp", measure_tcp), ("udp64", measure_udp),
                                 ("ping", measure_ping)):
                    try:
                        res[name] = fn(topo, args)
                    except CaseFailed as e:
                        res[name] = {"error": str(e)}
                        res["status"] = "partial"
                        log(f"  {name} FAILED: {e}")
                        topo.check_alive()  # a dead switch ends the case
            finally:
                if topo.proc is not None and topo.proc.poll() is None:
                    res["usernet_max_rss_kib"] = proc_hwm_kib(topo.proc.pid)
                    res["usernet_total_cpu_s"] = proc_cpu_s(topo.proc.pid)
                    res["usernet_stats"] = topo.usernet_stats()
                if topo.proc is not None:
                    res["usernet_log_tail"] = topo.log_tail(10)
    except CaseFailed as e:
        res["status"] = "failed"
        res["error"] = str(e)
        log(f"  FAILED: {e}")
    return res


# --------------------------------------------------------------------------------- report ----

def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def get(res, *path):
    for k in path:
        if not isinstance(res, dict) or res.get(k) is None:
            return None
        res = res[k]
    return res


def fmt(x, spec, none="–"):
    return none if x is None else format(x, spec)


def ratio(x, base):
    return None if (x is None or not base) else x / base


def usernet_drops(stats):
    """Non-zero drop counters of `ctl --json stats` summed over ports, e.g. {'ring_full': 12}."""
    out = {}
    if isinstance(stats, list):
        for p in stats:
            for k, v in (get(p, "stats", "drops") or {}).items():
                if v:
                    out[k] = out.get(k, 0) + v
    return out


def markdown(results, args, machine):
    lines = []
    lines.append(f"### usernet L2 benchmark — {machine['timestamp']}")
    lines.append("")
    lines.append(f"{machine['nproc']} CPU ({machine['cpu_model']}), kernel "
                 f"{machine['kernel']}, {machine['iperf3']}, usernet {machine['usernet_rev']}; "
                 f"iperf3 -t {args.time}, TCP median of {args.reps}, UDP 64 B payload "
                 f"-b {args.udp_rate}, ping -c {args.pings} -i 0.01.")
    lines.append("")
    hdr = ("| MTU | system | TCP Gbit/s | ×bridge | UDP64 rx kpps | ×bridge | UDP loss % "
           "| ping avg µs | +µs vs bridge | usernet CPU s TCP / UDP "
           "| usernet max RSS MiB | status |")
    lines.append(hdr)
    lines.append("|" + "|".join(["---:"] * (hdr.count("|") - 1)) + "|")
    notes = []
    for mtu in args.mtus:
        base = next((r for r in results if r["mtu"] == mtu and r["system"] == "bridge"), {})
        b_tcp, b_udp = get(base, "tcp", "gbps"), get(base, "udp64", "rx_pps")
        b_rtt = get(base, "ping", "avg_us")
        for r in (r for r in results if r["mtu"] == mtu):
            tcp = get(r, "tcp", "gbps")
            if tcp is not None and args.reps > 1:
                tcp_s = (f"{tcp:.2f} ({get(r, 'tcp', 'gbps_min'):.2f}–"
                         f"{get(r, 'tcp', 'gbps_max'):.2f})")
            else:
                tcp_s = fmt(tcp, ".2f")
            udp = get(r, "udp64", "rx_pps")
            rtt = get(r, "ping", "avg_us")
            added = None if (rtt is None or b_rtt is None) else rtt - b_rtt
            ucpu = "–"
            if r["system"] == "usernet":
                ucpu = (f"{fmt(get(r, 'tcp', 'usernet_cpu_s'), '.2f')} / "
                        f"{fmt(get(r, 'udp64', 'usernet_cpu_s'), '.2f')}")
            rss = r.get("usernet_max_rss_kib")
            status = r["status"]
            if r.get("error") or status != "ok":
                notes.append(f"- {r['system']} MTU {mtu}: **{status}** — "
                             + "; ".join(x for x in [r.get("error")] + [
                                 f"{k}: {get(r, k, 'error')}" for k in ("tcp", "udp64", "ping")
                                 if get(r, k, "error")] if x))
                status += " (see notes)"
            drops = usernet_drops(r.get("usernet_stats"))
            if drops:
                per = []
                for t in ("tcp", "udp64", "ping"):
                    runs = get(r, t, "reps") or ([r[t]] if isinstance(r.get(t), dict) else [])
                    tot = {}
                    for x in runs:
                        for k, v in (x.get("usernet_drops") or {}).items():
                            tot[k] = tot.get(k, 0) + v
                    if tot:
                        per.append(f"{t} " + ", ".join(f"{k}={v}" for k, v in sorted(tot.items())))
                notes.append(f"- {r['system']} MTU {mtu}: usernet drop counters (whole case) "
                             + ", ".join(f"{k}={v}" for k, v in sorted(drops.items()))
                             + (f"; by test: {'; '.join(per)}" if per else ""))
            lines.append("| " + " | ".join([
                str(mtu), r["system"], tcp_s, fmt(ratio(tcp, b_tcp), ".2f"),
                fmt(None if udp is None else udp / 1e3, ".0f"), fmt(ratio(udp, b_udp), ".2f"),
                fmt(get(r, "udp64", "loss_pct"), ".1f"), fmt(rtt, ".0f"),
                fmt(added, "+.0f"), ucpu,
                fmt(None if rss is None else rss / 1024, ".1f"), status]) + " |")
    lines.append("")
    lines.append("Ratios (×bridge) divide by the kernel bridge at the same MTU in this run; "
                 ">1 is better for throughput and packet rate. \"+µs vs bridge\" is the mean "
                 "RTT added over the bridge. usernet CPU s is the switch process's user+system "
                 f"time during one {args.time}s TCP / UDP run ({args.time} s = one core fully "
                 "busy). Machine-wide CPU time is in the JSON (system_cpu_s).")
    if notes:
        lines.append("")
        lines.append("Notes:")
        lines.extend(notes)
    return "\n".join(lines) + "\n"


def machine_info(args):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def out(argv, cwd=None):
        try:
            return run(argv, timeout=10, check=False, cwd=cwd).stdout.strip()
        except CaseFailed:
            return ""

    rev = out(["git", "-c", f"safe.directory={REPO}", "rev-parse", "--short=12", "HEAD"],
              cwd=REPO) or "unknown"
    if out(["git", "-c", f"safe.directory={REPO}", "status", "--porcelain",
            "--untracked-files=no"], cwd=REPO):
        rev += "-dirty"
    sha = mtime = None
    if os.path.exists(args.usernet_bin):
        with open(args.usernet_bin, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.datetime.fromtimestamp(
            os.path.getmtime(args.usernet_bin), datetime.timezone.utc).isoformat(
            timespec="seconds")
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": cpu,
        "usernet_rev": rev,
        "usernet_binary": args.usernet_src,
        "usernet_binary_sha256_16": sha,
        "usernet_binary_mtime": mtime,
        "iperf3": (out(["iperf3", "--version"]).splitlines() or ["unknown"])[0],
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------------- main ----

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=5, help="seconds per iperf3 run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="TCP repetitions, median (default 3)")
    ap.add_argument("--mtus", default="1500",
                    help="comma-separated MTUs, e.g. 1500,9000,65520 (default 1500)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: MTU 1500 only, 1 rep, 3 s")
    ap.add_argument("--udp-rate", default="0",
                    help="iperf3 -b for the 64-byte UDP test (default 0 = unlimited)")
    ap.add_argument("--pings", type=int, default=50, help="ping count (default 50)")
    ap.add_argument("--loops", type=int, default=1, help="usernet [engine] loops (default 1)")
    ap.add_argument("--usernet", default=os.path.join(REPO, "target", "release", "usernet"),
                    help="usernet binary (default target/release/usernet; build it first)")
    ap.add_argument("--build", action="store_true",
                    help="run `cargo build --release` first (needs cargo in PATH)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="results directory (default bench/results)")
    a = ap.parse_args()
    if a.quick:
        a.mtus, a.reps, a.time = "1500", 1, 3
    a.mtus = [int(x) for x in a.mtus.split(",") if x.strip()]
    a.systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    for s in a.systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    for m in a.mtus:
        if not 576 <= m <= 65535:
            ap.error(f"MTU {m} outside 576..65535")
    if a.reps < 1 or a.time < 1:
        ap.error("--reps and --time must be >= 1")
    return a


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("l2.py: needs root (namespaces, veth, TAP): sudo python3 bench/l2.py")
    for tool in ("ip", "iperf3", "ping", "ss"):
        if not shutil.which(tool):
            sys.exit(f"l2.py: {tool} not found in PATH")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    results = []
    try:
        if args.build:
            log("cargo build --release")
            run(["cargo", "build", "--release"], timeout=1800, cwd=REPO)
        if "usernet" in args.systems and not os.access(args.usernet, os.X_OK):
            sys.exit(f"l2.py: {args.usernet} not found; run `cargo build --release` or pass "
                     "--usernet PATH")
        RES.tmpdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
        args.usernet_src = os.path.abspath(args.usernet)
        # A private copy, so a concurrent rebuild cannot change the binary mid-run.
        args.usernet_bin = os.path.join(RES.tmpdir, "usernet")
        if "usernet" in args.systems:
            shutil.copy2(args.usernet_src, args.usernet_bin)
        else:
            args.usernet_bin = args.usernet_src
        machine = machine_info(args)
        log(f"prefix {PREFIX}; systems {args.systems}; MTUs {args.mtus}; "
            f"{args.reps} rep(s) x {args.time}s")
        for mtu in args.mtus:
            for system in args.systems:
                results.append(run_case(system, mtu, args))
        md = markdown(results, args, machine)
        os.makedirs(args.out, exist_ok=True)
        doc = {"machine": machine,
               "params": {"time_s": args.time, "reps": args.reps, "mtus": args.mtus,
                          "systems": args.systems, "udp_rate": args.udp_rate,
                          "udp_payload": 64, "pings": args.pings, "usernet_loops": args.loops,
                          "quick": args.quick},
               "results": results}
        with open(os.path.join(args.out, "l2-latest.json"), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, "l2-latest.md"), "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {os.path.join(args.out, 'l2-latest.json')} and l2-latest.md")
        return 0 if all(r["status"] == "ok" for r in results) else 1
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        RES.cleanup()
        left = [n for n in list_netns() if n.startswith(PREFIX)] + \
               [n for n in list_links() if n.startswith(PREFIX)]
        if left:
            log(f"warning: left behind: {left}")


if __name__ == "__main__":
    sys.exit(main())
