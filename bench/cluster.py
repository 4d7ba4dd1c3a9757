#!/usr/bin/env python3
"""Cluster suite (issue 15): the control plane's figures, on "hosts" that are namespaces joined
by a bridged veth underlay (172.31.0.0/24, host i at 172.31.0.(i+1)), etcd (Debian's
`etcd-server`, one member) in the underlay's namespace on 172.31.0.254:2379, each host running
its own `usernet up` with a `[cluster]` section and the cluster network `web` (VNI 70,
10.70.0.0/24), each guest a netns port with `ips = ["auto"]` (an address from the shared pool).

  join      a new node: from starting its `usernet up` to its guest answering a ping from a
            guest of another host (median of --reps; the node stops cleanly between reps)
  leave     a dead node (SIGKILL): from the kill to its leaving the other node's `ctl cluster`
            (and its VXLAN remotes), next to its `ttl_s` (--ttl)
  requests  etcd requests per container start: `usernet attach --ip auto` of --ports new
            namespaces on a running node, the node's `ctl cluster` `requests` counter before
            and after, less its idle rate (keep-alives) over the same time

Writes bench/results/NAME.{md,json} (NAME: `cluster`, or --name). Needs root, `etcd`, `curl`,
`ping`, a usernet built with `--features cluster` (--usernet; default target/release/usernet).
Stdlib only:  python3 bench/cluster.py [--reps 5] [--ttl 3] [--ports 24]
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import (HERE, PREFIX, REPO, RES, CaseFailed, Interrupted, Proc, log, nsexec,  # noqa: E402
                    run, usernet_ctl, usernet_up, wait_until)

UL = PREFIX + "cul"
ETCD = "172.31.0.254"
SUBNET = "10.70.0.0/24"


def host_ip(i):
    return f"172.31.0.{i + 1}"


class Lab:
    """The underlay namespace with bridge br0 and etcd on it; hosts, each with a guest."""

    def __init__(self, usernet):
        self.usernet = usernet
        RES.add_ns(UL)
        run(["ip", "-n", UL, "link", "add", "br0", "type", "bridge"], timeout=10)
        run(["ip", "-n", UL, "addr", "add", f"{ETCD}/24", "dev", "br0"], timeout=10)
        run(["ip", "-n", UL, "link", "set", "br0", "up"], timeout=10)
        data = os.path.join(RES.tmpdir, "etcd")
        ep = f"http://{ETCD}:2379"
        self.etcd = Proc("etcd", ["etcd", "--name", "n0", "--data-dir", data,
                                  "--listen-client-urls", ep, "--advertise-client-urls", ep,
                                  "--listen-peer-urls", "http://127.0.0.1:2380",
                                  "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                                  "--initial-cluster", "n0=http://127.0.0.1:2380"], ns=UL)
        wait_until("etcd healthy", lambda: '"true"' in run(
            nsexec(UL, ["curl", "-s", "-m", "2", f"{ep}/health"]), timeout=5,
            check=False).stdout, [self.etcd], timeout=20)
        self.hosts = []

    def add_host(self):
        """Host namespace (underlay address host_ip(i)) and its guest namespace; returns i."""
        i = len(self.hosts)
        h, g = RES.add_ns(f"{PREFIX}ch{i}"), RES.add_ns(f"{PREFIX}cg{i}")
        a, b = f"{PREFIX}u{i}", "ul0"
        run(["ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", h],
            timeout=10)
        run(["ip", "link", "set", a, "netns", UL], timeout=10)
        run(["ip", "-n", UL, "link", "set", a, "master", "br0", "up"], timeout=10)
        run(["ip", "-n", h, "addr", "add", f"{host_ip(i)}/24", "dev", b], timeout=10)
        run(["ip", "-n", h, "link", "set", b, "up"], timeout=10)
        self.hosts.append((h, g))
        return i

    def config(self, i, ttl):
        """Host i's config: node h{i}, the cluster network `web`, its guest with an address
        from the shared pool."""
        return (f'[cluster]\netcd = ["http://{ETCD}:2379"]\nnode = "h{i}"\n'
                f'vtep = "{host_ip(i)}"\nttl_s = {ttl}\n\n'
                f'[[network]]\nname = "web"\nscope = "cluster"\nvni = 70\n'
                f'subnet = "{SUBNET}"\nipv6 = "off"\ndns_upstreams = ["127.0.0.1:9"]\n\n'
                f'[[port]]\nnetwork = "web"\nname = "g{i}"\n'
                f'netns = "/run/netns/{self.hosts[i][1]}"\nips = ["auto"]\n')

    def start(self, i, ttl, key):
        """Starts host i's usernet; (Proc, control socket) once its guest has eth0."""
        h, g = self.hosts[i]
        return usernet_up(self.usernet, key, self.config(i, ttl), [g], ns=h)


def guest_addr(ns):
    r = run(["ip", "-n", ns, "-4", "-br", "addr", "show", "eth0"], timeout=5, check=False)
    parts = r.stdout.split()
    return parts[2].split("/")[0] if len(parts) > 2 else None


def pings(src_ns, ip):
    return run(nsexec(src_ns, ["ping", "-c", "1", "-W", "0.3", ip]), timeout=5,
               check=False).returncode == 0


def nodes(usernet, sock):
    c = usernet_ctl(usernet, sock, "cluster")
    return {n.get("name") for n in c.get("nodes", [])} if isinstance(c, dict) else set()


def measure_join(lab, reps, ttl):
    """A new node's guest reachable from host 0's guest, from the start of its usernet."""
    g0 = lab.hosts[0][1]
    sock0 = lab.sock0
    i = lab.add_host()
    g = lab.hosts[i][1]
    out = []
    for rep in range(reps):
        t0 = time.monotonic()
        p, _ = lab.start(i, ttl, f"h{i}-{rep}")
        try:
            state = {}

            def reachable():
                ip = guest_addr(g)
                if ip is not None and "addr_s" not in state:
                    state["addr_s"] = time.monotonic() - t0
                state["ip"] = ip
                return ip is not None and pings(g0, ip)

            wait_until("the new node's guest answering", reachable, [p], timeout=30)
            secs = time.monotonic() - t0
            out.append({"s": round(secs, 3), "addr_s": round(state["addr_s"], 3),
                        "ip": state["ip"]})
            log(f"  join rep {rep}: pingable after {secs:.2f} s (address after "
                f"{state['addr_s']:.2f} s)")
        finally:
            p.stop()
        # Its TAP (and the address on it) goes with the process; the next rep starts clean.
        wait_until("the stopped node's TAP gone", lambda: "eth0" not in common.list_links(g),
                   timeout=10)
        # The next rep's guest may get the same address with a new MAC: host 0's guest
        # forgets the old one (as after a gratuitous ARP).
        run(["ip", "-n", g0, "neigh", "flush", "all"], timeout=5, check=False)
        wait_until("the stopped node gone from h0", lambda: f"h{i}" not in nodes(
            lab.usernet, sock0), timeout=15)
    return {"reps": out, "median_s": round(statistics.median(r["s"] for r in out), 3)}


def measure_leave(lab, reps, ttl):
    """A node killed with SIGKILL: until host 0 drops it, next to its ttl_s."""
    i = len(lab.hosts) - 1
    out = []
    for rep in range(reps):
        p, _ = lab.start(i, ttl, f"h{i}-kill{rep}")
        wait_until("h0 sees the node", lambda: f"h{i}" in nodes(lab.usernet, lab.sock0),
                   [p], timeout=15)
        RES.stop(p.popen, sig=signal.SIGKILL)
        t0 = time.monotonic()
        wait_until("the killed node gone from h0", lambda: f"h{i}" not in nodes(
            lab.usernet, lab.sock0), timeout=ttl * 3 + 10)
        secs = time.monotonic() - t0
        out.append(round(secs, 3))
        log(f"  leave rep {rep}: gone after {secs:.2f} s (ttl_s {ttl})")
    return {"ttl_s": ttl, "reps_s": out, "median_s": round(statistics.median(out), 3)}


def requests(lab):
    c = usernet_ctl(lab.usernet, lab.sock0, "cluster")
    if "requests" not in c:
        raise CaseFailed(f"`ctl cluster` has no requests counter: {c}")
    return c["requests"]


def measure_requests(lab, n, idle_s=6.0):
    """etcd requests per `attach --ip auto` on host 0, less the idle rate."""
    time.sleep(1.0)
    r0, t0 = requests(lab), time.monotonic()
    time.sleep(idle_s)
    r1, t1 = requests(lab), time.monotonic()
    idle_rate = (r1 - r0) / (t1 - t0)
    lat = []
    for k in range(n):
        ns = RES.add_ns(f"{PREFIX}cc{k}")
        a = time.monotonic()
        r = run([lab.usernet, "attach", "--netns", f"/run/netns/{ns}", "--name", f"c{k}",
                 "--network", "web", "--ip", "auto", "--socket", lab.sock0], timeout=30,
                check=False)
        if r.returncode != 0:
            raise CaseFailed(f"attach c{k}: {r.stderr.strip()[-300:]}")
        lat.append(time.monotonic() - a)
    time.sleep(1.0)  # the names published, the spare claims topped up
    r2, t2 = requests(lab), time.monotonic()
    net = (r2 - r1) - idle_rate * (t2 - t1)
    res = {"ports": n, "idle_requests_per_s": round(idle_rate, 2),
           "requests_during": r2 - r1, "seconds": round(t2 - t1, 2),
           "requests_per_start": round(net / n, 2),
           "attach_median_ms": round(statistics.median(lat) * 1000, 1)}
    log(f"  requests: {res['requests_per_start']} per container start "
        f"({r2 - r1} in {t2 - t1:.1f} s for {n}, idle {idle_rate:.2f}/s)")
    return res


def markdown(doc):
    m, r = doc["machine"], doc["results"]
    lines = ["# Cluster mode: join, leave, etcd requests", "",
             f"{m.get('timestamp')} on {m.get('cpu_model')} ({m.get('nproc')} CPUs), "
             f"usernet {m.get('usernet_rev')} (`{m.get('usernet_binary')}`), "
             f"etcd {doc['params'].get('etcd_version')}. "
             f"Command: `{doc['params']['command']}`.", "",
             "| figure | value | detail |", "|---|---|---|"]
    j = r.get("join")
    if j:
        lines.append(f"| new node reachable (start of `usernet up` → its guest answers a "
                     f"ping from another host) | **{j['median_s']} s** median | "
                     f"reps {[x['s'] for x in j['reps']]} s |")
    lv = r.get("leave")
    if lv:
        lines.append(f"| dead node leaves (SIGKILL → gone from the other node's `ctl "
                     f"cluster`) | **{lv['median_s']} s** median | ttl_s {lv['ttl_s']}, "
                     f"reps {lv['reps_s']} s |")
    q = r.get("requests")
    if q:
        lines.append(f"| etcd requests per container start (`attach --ip auto`) | "
                     f"**{q['requests_per_start']}** | {q['requests_during']} requests in "
                     f"{q['seconds']} s for {q['ports']} ports, idle "
                     f"{q['idle_requests_per_s']}/s subtracted; attach median "
                     f"{q['attach_median_ms']} ms |")
    for k, e in r.get("errors", {}).items():
        lines.append(f"| {k} | failed | {e} |")
    lines += ["", "Service failover time is reported by the services bench, not here.", ""]
    return "\n".join(lines)


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--usernet", default=os.path.join(REPO, "target", "release", "usernet"))
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ttl", type=int, default=3, help="ttl_s of the nodes (leave figure)")
    ap.add_argument("--ports", type=int, default=24, help="container starts to count")
    ap.add_argument("--name", default="cluster")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py: needs root (namespaces)")
    for tool in ("etcd", "curl", "ping"):
        if not shutil.which(tool):
            sys.exit(f"bench/cluster.py: {tool} not found")
    if not os.access(args.usernet, os.X_OK):
        sys.exit(f"bench/cluster.py: {args.usernet} not found; cargo build --release "
                 "--features cluster, or --usernet PATH")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    status = 0
    try:
        RES.tmpdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
        src = os.path.abspath(args.usernet)
        usernet = os.path.join(RES.tmpdir, "usernet")
        shutil.copy2(src, usernet)
        machine = common.machine_info(src, usernet)
        etcd_v = run(["etcd", "--version"], timeout=10, check=False).stdout.split("\n")[0]
        results = {"errors": {}}
        lab = Lab(usernet)
        lab.add_host()
        _, lab.sock0 = lab.start(0, args.ttl, "h0")
        lab.add_host()
        lab.start(1, args.ttl, "h1")
        for name, fn in (("join", lambda: measure_join(lab, args.reps, args.ttl)),
                         ("leave", lambda: measure_leave(lab, max(3, args.reps // 2),
                                                         args.ttl)),
                         ("requests", lambda: measure_requests(lab, args.ports))):
            log(f"cluster {name}")
            try:
                results[name] = fn()
            except CaseFailed as e:
                results["errors"][name] = str(e)
                log(f"  {name} FAILED: {e}")
                status = 1
        doc = {"machine": machine,
               "params": {"command": "python3 bench/cluster.py " + " ".join(argv or sys.argv[1:]),
                          "reps": args.reps, "ttl_s": args.ttl, "ports": args.ports,
                          "etcd_version": etcd_v.replace("etcd Version: ", "")},
               "results": results}
        out = os.path.join(HERE, "results", args.name)
        with open(out + ".json", "w") as f:
            json.dump(doc, f, indent=1)
        md = markdown(doc)
        with open(out + ".md", "w") as f:
            f.write(md)
        print(md)
    except Interrupted as e:
        log(f"interrupted: {e}")
        status = 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        RES.cleanup()
        left = RES.leftovers()
        if left:
            log(f"warning: left behind: {left}")
    return status


if __name__ == "__main__":
    sys.exit(main())
