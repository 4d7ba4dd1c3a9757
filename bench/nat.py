#!/usr/bin/env python3
"""Side-by-side NAT benchmark: usernet vs slirp4netns vs pasta (userspace NAT + port forwards).

Measures, one system at a time, TCP throughput (iperf3, median of --reps) of:

  egress   NAT egress: iperf3 client in a guest namespace -> the gateway address that the system
           maps to the host's loopback -> iperf3 server on the host's 127.0.0.1
  forward  port forward (Docker -p / hostfwd / pasta -t): iperf3 client on the host ->
           127.0.0.1:HOSTPORT -> iperf3 server inside the guest namespace

for usernet (`usernet up`, one netns port, a gateway with NAT and one [[forward]]), slirp4netns
(--configure, API-socket hostfwd) and pasta (--config-net, -t/-T). pasta is measured twice:
its tap path (guest -> gateway address; host -> a non-loopback host address) and its splice
path (loopback to loopback through -T/-t, no tap and no TCP stack: not comparable, but it is
what pasta does for 127.0.0.1). Also the CPU seconds and peak RSS of the NAT process.

Prints a Markdown table with absolute numbers and usernet's ratio to each peer in the same run,
and writes bench/results/nat-latest.{json,md}.

Stdlib only. Run as root:  sudo python3 bench/nat.py [--quick] [--mtus 1500,65520]

The "host" is a sandbox namespace (un<pid>h) that has only loopback and a carrier-less TAP
holding the default route, so no packet can leave it: every connection goes to its 127.0.0.1.
All namespaces (un<pid>*), every process started and the temporary directory are removed on
exit, on failure, and on SIGINT/SIGTERM/SIGHUP.
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
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PREFIX = f"un{os.getpid()}"
HOST_NS = f"{PREFIX}h"  # the sandbox "host": the NAT processes and the host-side iperf3
GUEST_NS = f"{PREFIX}g"  # the container
HOST_UPLINK = f"{PREFIX}u"  # carrier-less TAP in HOST_NS holding the default route
HOST_ADDR = "10.77.0.2"  # HOST_NS's non-loopback address (on the uplink)
HOST_GW = "10.77.0.1"  # nothing answers there: the uplink has no carrier
EGRESS_PORT = 5301  # host iperf3 server, on 127.0.0.1 in HOST_NS
GUEST_PORT = 5201  # guest iperf3 server (forward target)
FWD_PORT = 6201  # published host port
SYSTEMS = ("usernet", "slirp4netns", "pasta")
TESTS = ("egress", "forward")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# usernet network
UN_GW, UN_GUEST = "10.88.0.1", "10.88.0.2"
# slirp4netns defaults (--cidr 10.0.2.0/24): guest .100, gateway/host loopback .2
SL_GW, SL_GUEST = "10.0.2.2", "10.0.2.100"
# pasta: explicit addresses rather than a copy of the host's
PA_GW, PA_GUEST = "10.0.2.2", "10.0.2.100"


class Interrupted(Exception):
    pass


class CaseFailed(Exception):
    pass


def log(msg):
    print(f"[nat] {msg}", file=sys.stderr, flush=True)


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
        # No IPv6 (no DAD/RS/MLD chatter); loopback up.
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
    # `ip netns exec` execs the command in place: the Popen pid is the command's pid.
    return ["ip", "netns", "exec", ns] + argv


def strip_ansi(s):
    return re.sub(r"\x1b\[[0-9;]*m", "", s)


def link_mtu(ns, dev):
    r = run(["ip", "-n", ns, "-o", "link", "show", dev], timeout=10, check=False)
    m = re.search(r"mtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def link_has_addr(ns, dev, addr):
    r = run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", dev], timeout=10, check=False)
    return f"inet {addr}/" in r.stdout


# ------------------------------------------------------------------------------ topology ----

class Topology:
    """A sandbox host namespace, a guest namespace, and one NAT system joining them.

    `variants` lists the paths measured with this system: (label, egress target (ip, port)
    as seen from the guest, forward target (ip, port) as seen from the host).
    """

    def __init__(self, system, mtu, args):
        self.system = system
        self.mtu = mtu
        self.args = args
        self.h = HOST_NS
        self.g = GUEST_NS
        self.proc = None  # the NAT process (usernet, slirp4netns or pasta)
        self.sock = None
        self.logpath = None
        self.logf = None
        self.variants = []

    def __enter__(self):
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _setup(self):
        RES.add_ns(self.h)
        RES.add_ns(self.g)
        # The host sandbox: loopback plus a TAP without carrier that holds the default route
        # (pasta wants a template interface with a default route); anything not for
        # 127.0.0.1 or HOST_ADDR is dropped there.
        h = self.h
        run(["ip", "-n", h, "tuntap", "add", "mode", "tap", "name", HOST_UPLINK], timeout=10)
        run(["ip", "-n", h, "addr", "add", f"{HOST_ADDR}/24", "dev", HOST_UPLINK], timeout=10)
        run(["ip", "-n", h, "link", "set", HOST_UPLINK, "up"], timeout=10)
        run(["ip", "-n", h, "route", "add", "default", "via", HOST_GW], timeout=10)
        getattr(self, f"_up_{self.system}")()
        got = link_mtu(self.g, "eth0")
        if got != self.mtu:
            raise CaseFailed(f"guest eth0 has mtu {got}, wanted {self.mtu}")

    def __exit__(self, *exc):
        if self.proc is not None:
            RES.stop(self.proc)
        if self.logf is not None:
            self.logf.close()
            self.logf = None
        for ns in (self.g, self.h):
            if ns in RES.namespaces:
                RES.del_ns(ns)
        return False

    def _spawn_logged(self, name, argv):
        self.logpath = os.path.join(RES.tmpdir, f"{name}-{self.mtu}.log")
        self.logf = open(self.logpath, "w")
        self.proc = RES.spawn(nsexec(self.h, argv), stdout=self.logf, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)

    def _wait(self, what, cond, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise CaseFailed(f"{self.system} exited {self.proc.returncode} at startup: "
                                 f"{self.log_tail()}")
            if cond():
                return
            if time.monotonic() > deadline:
                raise CaseFailed(f"{self.system}: {what} not ready after {timeout}s: "
                                 f"{self.log_tail()}")
            time.sleep(0.05)

    def _guest_static(self, addr, gw):
        g = self.g
        run(["ip", "-n", g, "link", "set", "eth0", "mtu", str(self.mtu)], timeout=10)
        run(["ip", "-n", g, "addr", "add", f"{addr}/24", "dev", "eth0"], timeout=10)
        run(["ip", "-n", g, "link", "set", "eth0", "up"], timeout=10)
        run(["ip", "-n", g, "route", "add", "default", "via", gw], timeout=10)

    def _up_usernet(self):
        d = RES.tmpdir
        cfg = os.path.join(d, f"usernet-{self.mtu}.toml")
        self.sock = os.path.join(d, f"usernet-{self.mtu}.sock")
        with open(cfg, "w") as f:
            f.write(usernet_config(self.g, self.mtu, self.args.loops))
        self._spawn_logged("usernet", [self.args.usernet_bin, "up", "-c", cfg,
                                       "--socket", self.sock])
        self._wait("control socket and guest eth0", lambda: os.path.exists(self.sock)
                   and "eth0" in list_links(self.g))
        self._guest_static(UN_GUEST, UN_GW)
        self.variants = [("usernet", (UN_GW, EGRESS_PORT), ("127.0.0.1", FWD_PORT))]

    def _up_slirp4netns(self):
        if not shutil.which("slirp4netns"):
            raise CaseFailed("slirp4netns not installed (apt-get install slirp4netns)")
        self.sock = os.path.join(RES.tmpdir, f"slirp-{self.mtu}.sock")
        # Host loopback is reachable at 10.0.2.2 by default (no --disable-host-loopback);
        # --disable-dns: no 10.0.2.3 -> host resolver redirect.
        self._spawn_logged("slirp4netns", [
            "slirp4netns", "--netns-type=path", "--configure", f"--mtu={self.mtu}",
            "--disable-dns", f"--api-socket={self.sock}", f"/run/netns/{self.g}", "eth0"])
        self._wait("guest eth0 configured", lambda: os.path.exists(self.sock)
                   and "eth0" in list_links(self.g) and link_has_addr(self.g, "eth0", SL_GUEST))
        ans = slirp_api(self.sock, {"execute": "add_hostfwd", "arguments": {
            "proto": "tcp", "host_addr": "127.0.0.1", "host_port": FWD_PORT,
            "guest_port": GUEST_PORT}})
        if "return" not in ans:
            raise CaseFailed(f"slirp4netns add_hostfwd: {ans}")
        self.variants = [("slirp4netns", (SL_GW, EGRESS_PORT), ("127.0.0.1", FWD_PORT))]

    def _up_pasta(self):
        if not shutil.which("pasta"):
            raise CaseFailed("pasta not installed (apt-get install passt)")
        # -f: foreground (we own the pid); --runas 0: as root the 2023 build otherwise drops
        # to nobody before joining the namespace and fails; -4: IPv4 only; -D 127.0.0.1: DNS
        # information local (no --dns-forward: pasta forwards no DNS); -t: the port forward;
        # -T: ns 127.0.0.1:EGRESS_PORT -> host 127.0.0.1:EGRESS_PORT (the splice path);
        # the gateway address maps to the host's loopback (no --no-map-gw).
        self._spawn_logged("pasta", [
            "pasta", "-f", "--runas", "0", "-4", "--config-net", "-I", "eth0",
            "-m", str(self.mtu), "-a", PA_GUEST, "-n", "24", "-g", PA_GW, "-D", "127.0.0.1",
            "-t", f"{FWD_PORT}:{GUEST_PORT}", "-u", "none",
            "-T", str(EGRESS_PORT), "-U", "none", "--netns", f"/run/netns/{self.g}"])
        self._wait("guest eth0 configured", lambda: "eth0" in list_links(self.g)
                   and link_has_addr(self.g, "eth0", PA_GUEST))
        if link_mtu(self.g, "eth0") != self.mtu:
            run(["ip", "-n", self.g, "link", "set", "eth0", "mtu", str(self.mtu)], timeout=10)
        # pasta listens on HOST_NS's ports a moment after configuring the guest.
        self._wait("-t listener", lambda: listening(self.h, FWD_PORT), timeout=5)
        self.variants = [
            ("pasta tap", (PA_GW, EGRESS_PORT), (HOST_ADDR, FWD_PORT)),
            ("pasta splice", ("127.0.0.1", EGRESS_PORT), ("127.0.0.1", FWD_PORT)),
        ]

    def log_tail(self, n=6):
        if not self.logpath:
            return ""
        try:
            with open(self.logpath, errors="replace") as f:
                lines = [strip_ansi(x.rstrip()) for x in f
                         if x.strip() and "to syslog" not in x]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise CaseFailed(f"{self.system} died (exit {self.proc.returncode}): "
                             f"{self.log_tail()}")

    def usernet_ctl(self, what):
        if self.system != "usernet" or self.proc is None:
            return None
        r = run([self.args.usernet_bin, "ctl", "--socket", self.sock, "--json", what],
                timeout=10, check=False)
        if r.returncode != 0:
            return {"error": (r.stderr or r.stdout).strip()[-300:]}
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {"error": "unparsable: " + r.stdout[:300]}


def usernet_config(guest_ns, mtu, loops):
    return (f"[engine]\nloops = {loops}\nmtu = {mtu}\n\n"
            f'[[network]]\nname = "n"\nsubnet = "10.88.0.0/24"\nipv6 = "off"\n'
            f'dns_upstreams = ["127.0.0.1:9"]\nmtu = {mtu}\n\n'
            f'[[port]]\nnetwork = "n"\nname = "g"\nnetns = "/run/netns/{guest_ns}"\n'
            f"mtu = {mtu}\n\n"
            f'[[forward]]\nnetwork = "n"\npublish = "127.0.0.1:{FWD_PORT}:{GUEST_PORT}/tcp"\n'
            f'to = "{UN_GUEST}"\n')


def slirp_api(path, req, timeout=5.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps(req).encode())
        s.shutdown(socket.SHUT_WR)
        buf = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
    except OSError as e:
        raise CaseFailed(f"slirp4netns API {path}: {e}") from e
    finally:
        s.close()
    try:
        return json.loads(buf.decode(errors="replace"))
    except ValueError:
        raise CaseFailed(f"slirp4netns API: unparsable answer {buf[:200]!r}")


# --------------------------------------------------------------------------- measurement ----

def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_s(pid):
    """{thread name: user+system seconds} over the threads of pid (same names are summed)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        rest = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(rest[11]) + int(rest[12])) / CLK_TCK
    return out


def proc_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def system_busy_s():
    """Non-idle CPU seconds of the whole machine (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return (total - idle) / CLK_TCK


class Meter:
    """CPU accounting around one measurement: the NAT process and the whole machine."""

    def __init__(self, topo):
        self.topo = topo
        self.pid = topo.proc.pid if topo.proc is not None else None

    def __enter__(self):
        self.t0 = time.monotonic()
        self.sys0 = system_busy_s()
        self.p0 = proc_cpu_s(self.pid) if self.pid else None
        self.t0s = thread_cpu_s(self.pid) if self.pid else {}
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.sys_cpu = system_busy_s() - self.sys0
        p1 = proc_cpu_s(self.pid) if self.pid else None
        self.proc_cpu = (p1 - self.p0) if (p1 is not None and self.p0 is not None) else None
        t1s = thread_cpu_s(self.pid) if self.pid else {}
        self.threads = {k: round(v - self.t0s.get(k, 0.0), 3) for k, v in t1s.items()
                        if v - self.t0s.get(k, 0.0) > 0}
        return False

    def as_dict(self):
        return {"wall_s": round(self.wall, 3), "system_cpu_s": round(self.sys_cpu, 3),
                "nat_cpu_s": None if self.proc_cpu is None else round(self.proc_cpu, 3),
                "nat_thread_cpu_s": self.threads}


def listening(ns, port):
    r = run(nsexec(ns, ["ss", "-Hltn", f"sport = :{port}"]), timeout=5, check=False)
    return f":{port}" in r.stdout


def wait_listen(ns, port, server, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise CaseFailed(f"iperf3 server exited {server.returncode} before listening")
        r = run(nsexec(ns, ["ss", "-Hltnp", f"sport = :{port}"]), timeout=5, check=False)
        if f"pid={server.pid}," in r.stdout:
            return
        time.sleep(0.05)
    raise CaseFailed(f"iperf3 server in {ns} not listening on {port} after {timeout}s")


def iperf3(topo, test, target, secs):
    """One iperf3 run with a fresh one-off server. Returns (json, Meter)."""
    ip, port = target
    if test == "egress":  # server on the host's loopback, client in the guest
        srv_ns, srv = topo.h, ["-B", "127.0.0.1", "-p", str(port)]
        cli_ns = topo.g
    else:  # forward: server in the guest (all addresses), client on the host
        srv_ns, srv = topo.g, ["-p", str(GUEST_PORT)]
        cli_ns = topo.h
    server = RES.spawn(nsexec(srv_ns, ["iperf3", "-s", "-1"] + srv),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       stdin=subprocess.DEVNULL)
    try:
        wait_listen(srv_ns, int(srv[-1]), server)
        argv = nsexec(cli_ns, ["iperf3", "-c", ip, "-p", str(port), "-t", str(secs), "-J",
                               "--connect-timeout", "3000"])
        with Meter(topo) as m:
            r = run(argv, timeout=secs + 20, check=False)
        topo.check_alive()
        try:
            j = json.loads(r.stdout)
        except ValueError:
            raise CaseFailed(f"iperf3 exited {r.returncode}, no JSON: "
                             f"{(r.stderr or r.stdout).strip()[-300:]}")
        if j.get("error"):
            raise CaseFailed(f"iperf3 -c {ip} -p {port}: {j['error']}")
        return j, m
    finally:
        RES.stop(server, grace=3)


def measure(topo, test, target, args):
    reps = []
    for i in range(args.reps):
        j, m = iperf3(topo, test, target, args.time)
        end = j["end"]
        ivals = [iv["sum"] for iv in j.get("intervals", [])]
        # Stalls: whole intervals (1 s) in which the sender moved nothing.
        stalled = sum(1 for iv in ivals if iv.get("bytes", 0) == 0 and iv.get("seconds", 0) > 0.5)
        rep = {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
               "sender_gbps": end["sum_sent"]["bits_per_second"] / 1e9,
               "retransmits": end["sum_sent"].get("retransmits"),
               "stalled_intervals": stalled, "intervals": len(ivals),
               "interval_gbps": [round(iv.get("bits_per_second", 0) / 1e9, 3) for iv in ivals],
               **m.as_dict()}
        reps.append(rep)
        log(f"  {test} rep {i + 1}/{args.reps}: {rep['gbps']:.2f} Gbit/s, "
            f"retr {rep['retransmits']}, {topo.system} cpu {rep['nat_cpu_s']}"
            + (f", STALLED {stalled}/{len(ivals)} s" if stalled else ""))
    med = lambda k: median([r[k] for r in reps])  # noqa: E731
    return {"target": f"{target[0]}:{target[1]}", "reps": reps, "gbps": med("gbps"),
            "gbps_min": min(r["gbps"] for r in reps), "gbps_max": max(r["gbps"] for r in reps),
            "retransmits": med("retransmits"), "nat_cpu_s": med("nat_cpu_s"),
            "system_cpu_s": med("system_cpu_s"), "wall_s": med("wall_s"),
            "stalled_intervals": sum(r["stalled_intervals"] for r in reps)}


def run_case(system, mtu, args):
    res = {"system": system, "mtu": mtu, "status": "ok", "error": None, "variants": {}}
    log(f"{system} mtu {mtu}: setting up")
    try:
        with Topology(system, mtu, args) as topo:
            res["nat_pid_comm"] = proc_comm(topo.proc.pid)
            try:
                for label, egress, forward in topo.variants:
                    v = res["variants"].setdefault(label, {})
                    for test in args.tests:
                        target = egress if test == "egress" else forward
                        log(f" {label} {test} -> {target[0]}:{target[1]}")
                        try:
                            v[test] = measure(topo, test, target, args)
                        except CaseFailed as e:
                            v[test] = {"target": f"{target[0]}:{target[1]}", "error": str(e)}
                            res["status"] = "partial"
                            log(f"  {label} {test} FAILED: {e}")
                            topo.check_alive()  # a dead NAT process ends the case
            finally:
                if topo.proc.poll() is None:
                    res["nat_max_rss_kib"] = proc_hwm_kib(topo.proc.pid)
                    res["nat_total_cpu_s"] = proc_cpu_s(topo.proc.pid)
                    if system == "usernet":
                        res["usernet_stats"] = topo.usernet_ctl("stats")
                        res["usernet_gateways"] = topo.usernet_ctl("gateway")
                res["log_tail"] = topo.log_tail(10)
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
    out = {}
    if isinstance(stats, list):
        for p in stats:
            for k, v in (get(p, "stats", "drops") or {}).items():
                if v:
                    out[k] = out.get(k, 0) + v
    return out


def markdown(results, args, machine):
    lines = [f"### usernet NAT benchmark — {machine['timestamp']}", ""]
    lines.append(f"{machine['nproc']} CPU ({machine['cpu_model']}), kernel {machine['kernel']}, "
                 f"{machine['iperf3']}, usernet {machine['usernet_rev']}"
                 + (" (**binary built before HEAD's commit**)"
                    if machine.get("usernet_binary_older_than_head") else "")
                 + f", slirp4netns "
                 f"{machine['slirp4netns']}, pasta (passt) {machine['passt']}; iperf3 -t "
                 f"{args.time}, TCP, median of {args.reps} (min–max); load average (1 min) "
                 f"{machine['loadavg_start'][0]:.2f} at start, "
                 f"{machine.get('loadavg_end', [0])[0]:.2f} at end.")
    lines.append("")
    hdr = ("| MTU | system | egress Gbit/s | usernet ÷ this | forward Gbit/s | usernet ÷ this "
           "| NAT CPU s egress / forward | NAT max RSS MiB | status |")
    lines.append(hdr)
    lines.append("|" + "|".join(["---:"] * (hdr.count("|") - 1)) + "|")
    notes = []

    def cell(v, test):
        x = get(v, test, "gbps")
        if x is None:
            return "failed" if get(v, test, "error") else "–"
        if args.reps > 1:
            return f"{x:.2f} ({get(v, test, 'gbps_min'):.2f}–{get(v, test, 'gbps_max'):.2f})"
        return f"{x:.2f}"

    for mtu in args.mtus:
        un = next((r for r in results if r["mtu"] == mtu and r["system"] == "usernet"), {})
        unv = get(un, "variants", "usernet") or {}
        for r in (r for r in results if r["mtu"] == mtu):
            variants = r.get("variants") or {}
            if not variants:
                variants = {r["system"]: {}}
            for label, v in variants.items():
                status = r["status"]
                errs = [f"{t}: {get(v, t, 'error')}" for t in args.tests if get(v, t, "error")]
                if r.get("error") or errs:
                    notes.append(f"- {label} MTU {mtu}: **{status}** — "
                                 + "; ".join(([r["error"]] if r.get("error") else []) + errs))
                    status += " (see notes)"
                for t in args.tests:
                    st = get(v, t, "stalled_intervals")
                    if st:
                        n = sum(x["intervals"] for x in get(v, t, "reps"))
                        notes.append(f"- {label} MTU {mtu} {t}: stalled (0 bytes sent) in {st} "
                                     f"of {n} one-second intervals; per-second Gbit/s: "
                                     + " / ".join(",".join(f"{g:g}" for g in x["interval_gbps"])
                                                  for x in get(v, t, "reps")))
                cpu = " / ".join(fmt(get(v, t, "nat_cpu_s"), ".2f") for t in args.tests)
                rss = r.get("nat_max_rss_kib")
                rat = []
                for t in args.tests:
                    rat.append(fmt(ratio(get(unv, t, "gbps"), get(v, t, "gbps")), ".2f"))
                row = [str(mtu), label]
                for t, rt in zip(args.tests, rat):
                    row += [cell(v, t), rt]
                row += [cpu, fmt(None if rss is None else rss / 1024, ".1f"), status]
                lines.append("| " + " | ".join(row) + " |")
        drops = usernet_drops(un.get("usernet_stats"))
        if drops:
            notes.append(f"- usernet MTU {mtu}: drop counters (whole case) "
                         + ", ".join(f"{k}={v}" for k, v in sorted(drops.items())))
    if args.tests != list(TESTS):
        # Header names both tests; say which ran.
        lines.append("")
        lines.append(f"Only these tests ran: {', '.join(args.tests)}.")
    lines.append("")
    lines.append(
        "egress: iperf3 client in the guest namespace → the gateway address that the system "
        "maps to the host's loopback → iperf3 server on the host's 127.0.0.1 (usernet "
        f"{UN_GW}, slirp4netns {SL_GW}, pasta tap {PA_GW}; pasta splice: the guest's own "
        f"127.0.0.1:{EGRESS_PORT} forwarded by -T). forward: iperf3 client on the host → "
        f"127.0.0.1:{FWD_PORT} → iperf3 server on guest port {GUEST_PORT} (usernet [[forward]], "
        f"slirp4netns add_hostfwd, pasta -t; pasta tap: the client connects to the host's "
        f"non-loopback address {HOST_ADDR}:{FWD_PORT}, which pasta sends through its tap; "
        "from 127.0.0.1 it splices loopback to loopback). The splice path has no tap and no "
        "userspace TCP stack: it is listed for reference, not as a like-for-like peer. "
        "\"usernet ÷ this\" divides usernet's median by this row's, same MTU, same run: >1 "
        "means usernet is faster. NAT CPU s is the user+system time of the NAT process "
        f"(usernet, slirp4netns or pasta) during one {args.time} s run ({args.time} s = one core "
        "fully busy); its peak RSS (VmHWM) covers the whole case (both pasta paths share one "
        "process). Machine-wide CPU, retransmits and per-second rates are in the JSON.")
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
        except (CaseFailed, OSError):
            return ""

    rev = out(["git", "-c", f"safe.directory={REPO}", "rev-parse", "--short=12", "HEAD"],
              cwd=REPO) or "unknown"
    if out(["git", "-c", f"safe.directory={REPO}", "status", "--porcelain",
            "--untracked-files=no"], cwd=REPO):
        rev += "-dirty"
    sha = mtime = None
    if os.path.exists(args.usernet_src):
        with open(args.usernet_bin, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.datetime.fromtimestamp(
            os.path.getmtime(args.usernet_src), datetime.timezone.utc).isoformat(
            timespec="seconds")
    # HEAD can move (other work commits) after the binary was built: flag a binary older than
    # HEAD's commit, whose numbers then belong to an earlier revision.
    head_time = out(["git", "-c", f"safe.directory={REPO}", "log", "-1", "--format=%ct"],
                    cwd=REPO)
    stale = None
    if head_time.isdigit() and os.path.exists(args.usernet_src):
        stale = os.path.getmtime(args.usernet_src) < int(head_time)
    slirp = out(["slirp4netns", "--version"]) if shutil.which("slirp4netns") else ""
    sv = re.search(r"slirp4netns version (\S+)", slirp)
    lv = re.search(r"libslirp: (\S+)", slirp)
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
        "usernet_binary_older_than_head": stale,
        "iperf3": (out(["iperf3", "--version"]).splitlines() or ["unknown"])[0],
        "slirp4netns": (f"{sv.group(1)} (libslirp {lv.group(1) if lv else '?'})"
                        if sv else "not installed"),
        # pasta --version says "unknown version" in Debian's build: ask dpkg.
        "passt": out(["dpkg-query", "-W", "-f=${Version}", "passt"]) or
        ("installed" if shutil.which("pasta") else "not installed"),
        "python": platform.python_version(),
        # Other work on the machine skews every number: record how busy it was.
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


# ----------------------------------------------------------------------------------- main ----

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", type=int, default=5, help="seconds per iperf3 run (default 5)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, median (default 3)")
    ap.add_argument("--mtus", default="1500,65520",
                    help="comma-separated MTUs (default 1500,65520)")
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help=f"comma-separated subset of {','.join(SYSTEMS)}")
    ap.add_argument("--tests", default=",".join(TESTS),
                    help=f"comma-separated subset of {','.join(TESTS)}")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: MTU 1500 only, 1 rep, 3 s")
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
    a.tests = [t for t in TESTS if t in {s.strip() for s in a.tests.split(",")}]
    for s in a.systems:
        if s not in SYSTEMS:
            ap.error(f"unknown system {s!r}")
    if not a.tests:
        ap.error(f"--tests: pick from {','.join(TESTS)}")
    for m in a.mtus:
        if not 576 <= m <= 65520:
            ap.error(f"MTU {m} outside 576..65520")
    if a.reps < 1 or a.time < 1:
        ap.error("--reps and --time must be >= 1")
    return a


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    args = parse_args()
    if os.geteuid() != 0:
        sys.exit("nat.py: needs root (namespaces, TAP): sudo python3 bench/nat.py")
    for tool in ("ip", "iperf3", "ss"):
        if not shutil.which(tool):
            sys.exit(f"nat.py: {tool} not found in PATH")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    results = []
    try:
        if args.build:
            log("cargo build --release")
            run(["cargo", "build", "--release"], timeout=1800, cwd=REPO)
        if "usernet" in args.systems and not os.access(args.usernet, os.X_OK):
            sys.exit(f"nat.py: {args.usernet} not found; run `cargo build --release` or pass "
                     "--usernet PATH")
        RES.tmpdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
        args.usernet_src = os.path.abspath(args.usernet)
        # A private copy, so a concurrent rebuild cannot change the binary mid-run.
        args.usernet_bin = os.path.join(RES.tmpdir, "usernet")
        if os.path.exists(args.usernet_src):
            shutil.copy2(args.usernet_src, args.usernet_bin)
        else:
            args.usernet_bin = args.usernet_src
        machine = machine_info(args)
        log(f"prefix {PREFIX}; systems {args.systems}; tests {args.tests}; MTUs {args.mtus}; "
            f"{args.reps} rep(s) x {args.time}s")
        for mtu in args.mtus:
            for system in args.systems:
                results.append(run_case(system, mtu, args))
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        md = markdown(results, args, machine)
        os.makedirs(args.out, exist_ok=True)
        doc = {"machine": machine,
               "params": {"time_s": args.time, "reps": args.reps, "mtus": args.mtus,
                          "systems": args.systems, "tests": args.tests,
                          "usernet_loops": args.loops, "quick": args.quick,
                          "ports": {"host_egress_server": EGRESS_PORT,
                                    "guest_server": GUEST_PORT, "published": FWD_PORT}},
               "results": results}
        with open(os.path.join(args.out, "nat-latest.json"), "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        with open(os.path.join(args.out, "nat-latest.md"), "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {os.path.join(args.out, 'nat-latest.json')} and nat-latest.md")
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
