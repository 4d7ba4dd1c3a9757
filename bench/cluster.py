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
  failover  a service (`[[service]]` 8080:80/tcp -> web1, web2, web3, health interval_ms 500,
            fall 1, rise 1) on 3 more hosts, each guest with the DHCP name webN (busybox udhcpc
            -x hostname:webN) serving /who (busybox httpd); a client (curl from the underlay's
            namespace) asks host 0's published port every ~50 ms. Per rep: a node's usernet
            killed (SIGKILL), an endpoint's server stopped on another node, and the first node
            cut off the underlay (link down), each: the time from the kill/stop/cut to the end
            of the last client request that failed or was answered by the gone endpoint, next
            to 2 health intervals (median of --reps; what went is restarted between reps).
            The other cases' nodes are stopped first.

Writes bench/results/NAME.{md,json} (NAME: `cluster`, or --name). Needs root, `etcd`, `curl`,
`ping`, `busybox` (udhcpc, httpd), a usernet built with `--features cluster` (--usernet; default
target/release/usernet).
Stdlib only:  python3 bench/cluster.py [--reps 5] [--ttl 3] [--ports 24] [--cases ...]
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
CASES = ("join", "leave", "requests", "failover")
# The service of the failover case: its health checks (ms) and the client's pace.
HEALTH = {"interval_ms": 500, "timeout_ms": 200, "fall": 1, "rise": 1}
CLIENT_GAP_S = 0.05
WINDOW_S = 3.0  # how long the client asks after a kill/stop/cut


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
        self.procs = []  # the usernets of hosts 0 and 1 (join/leave/requests)

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

    def service_config(self, i, ttl):
        """Host i's config for the failover case: as config(), its guest without address (it
        takes one by DHCP, with its name), and the service on every endpoint name."""
        health = ", ".join(f"{k} = {v}" for k, v in HEALTH.items())
        return (self.config(i, ttl).replace('ips = ["auto"]\n', '')
                + '\n[[service]]\nnetwork = "web"\npublish = "8080:80/tcp"\n'
                  'to = ["web1", "web2", "web3"]\n'
                  f'health = {{ {health} }}\n')

    def start(self, i, ttl, key, service=False):
        """Starts host i's usernet; (Proc, control socket) once its guest has eth0."""
        h, g = self.hosts[i]
        cfg = self.service_config(i, ttl) if service else self.config(i, ttl)
        return usernet_up(self.usernet, key, cfg, [g], ns=h)


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


# ------------------------------------------------------------------------- failover ----

def udhcpc(g, name):
    """busybox udhcpc once on eth0 of guest namespace g, sending the hostname `name`; its
    address."""
    lease = os.path.join(RES.tmpdir, f"lease-{g}")
    script = os.path.join(RES.tmpdir, f"udhcpc-{g}.sh")
    with open(script, "w") as f:
        f.write('#!/bin/sh\ncase "$1" in\n  bound|renew)\n    ip addr flush dev "$interface"\n'
                '    ip addr add "$ip/$mask" dev "$interface"\n'
                f'    echo "$ip" > {lease}\n    ;;\nesac\nexit 0\n')
    os.chmod(script, 0o755)
    if os.path.exists(lease):
        os.remove(lease)
    r = run(nsexec(g, ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T",
                       "1", "-s", script, "-O", "mtu", "-x", f"hostname:{name}"]),
            timeout=20, check=False)
    if r.returncode != 0 or not os.path.exists(lease):
        raise CaseFailed(f"udhcpc {name} in {g}: {(r.stderr or r.stdout).strip()[-300:]}")
    with open(lease) as f:
        return f.read().strip()


def httpd(g, name):
    """busybox httpd in guest namespace g serving /who = `name` on port 80 (a Proc)."""
    root = os.path.join(RES.tmpdir, f"www-{name}")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "who"), "w") as f:
        f.write(name + "\n")
    p = Proc(f"httpd-{name}", ["busybox", "httpd", "-f", "-p", "80", "-h", root], ns=g)
    wait_until(f"httpd {name} listening", lambda: common.listening(g, 80, p.pid), [p],
               timeout=10)
    return p


def who(i):
    """One GET /who from the underlay's namespace to host i's published port: the endpoint's
    name, or None (failed); and the request's start and end (monotonic)."""
    a = time.monotonic()
    try:
        r = run(nsexec(UL, ["curl", "-s", "-m", "2", f"http://{host_ip(i)}:8080/who"]),
                timeout=5, check=False)
        body = r.stdout.strip() if r.returncode == 0 else ""
    except CaseFailed:
        body = ""
    return (body if body.startswith("web") else None), a, time.monotonic()


def tally(i, n):
    m = {}
    for _ in range(n):
        w = who(i)[0] or "failed"
        m[w] = m.get(w, 0) + 1
    return m


def failover_window(i, gone, t0):
    """Asks host i every CLIENT_GAP_S for WINDOW_S after t0: the last bad request (failed, or
    answered by `gone`) as ms after t0 (its start and end; 0 if none), the number of bad and
    of all requests, the slowest request (ms) and the endpoints that answered after the last
    bad one."""
    last = (0.0, 0.0)
    bad = total = 0
    slowest = 0.0
    after = {}
    while time.monotonic() - t0 < WINDOW_S:
        w, a, b = who(i)
        total += 1
        slowest = max(slowest, b - a)
        if w is None or w == gone:
            bad += 1
            last = (a - t0, b - t0)
            after = {}
        else:
            after[w] = after.get(w, 0) + 1
        time.sleep(CLIENT_GAP_S)
    return {"ms": round(last[1] * 1000, 1), "issued_ms": round(last[0] * 1000, 1),
            "bad": bad, "requests": total, "slowest_ms": round(slowest * 1000, 1),
            "after": after}


def measure_failover(lab, reps, ttl):
    """A service over 3 new hosts' endpoints; a killed node and a stopped server, each until
    the last bad client request at host 0's published port."""
    for p in lab.procs:  # the other cases' nodes: out of the way (less load, no strays)
        p.stop()
    lab.procs = []
    hs = [lab.add_host() for _ in range(3)]
    names = [f"web{k + 1}" for k in range(3)]
    procs, servers = {}, {}
    socks = {}

    def up(k, key):
        i = hs[k]
        procs[k], socks[k] = lab.start(i, ttl, key, service=True)
        ip = udhcpc(lab.hosts[i][1], names[k])
        log(f"  {names[k]} on h{i} at {ip}")

    def balanced():  # round robin: 3 requests in a row reach all 3 when all are up
        m = tally(hs[0], 3)
        return all(w in m for w in names)

    try:
        for k in range(3):
            up(k, f"svc{k}")
            servers[k] = httpd(lab.hosts[hs[k]][1], names[k])
        t = time.monotonic()
        wait_until("host 0's port balancing over web1, web2, web3", balanced,
                   list(procs.values()), timeout=30)
        log(f"  the service reached every endpoint {time.monotonic() - t:.2f} s after the "
            "servers started")
        m = tally(hs[0], 9)
        log(f"  9 requests to h{hs[0]}:8080: {m}")
        killed, stopped, cut = [], [], []

        def window(rep, what, event, gone, t0):
            """Host 0's clients from t0 on, with `gone` out; logged."""
            res = failover_window(hs[0], gone, t0)
            log(f"  failover rep {rep}, {what}: last bad request ended {res['ms']} ms after "
                f"the {event} (issued at {res['issued_ms']} ms), {res['bad']} bad of "
                f"{res['requests']}, slowest {res['slowest_ms']} ms; then {res['after']}")
            return res

        for rep in range(reps):
            # (a) host 2's usernet killed; the client asks host 0.
            RES.stop(procs[2].popen, sig=signal.SIGKILL)
            t0 = time.monotonic()
            killed.append(window(rep, "node killed", "kill", names[2], t0))
            # Restart it: its TAP gone, its node gone from host 0 (same node name), a new
            # usernet and lease.
            g2 = lab.hosts[hs[2]][1]
            wait_until("the killed node's TAP gone", lambda: "eth0" not in
                       common.list_links(g2), timeout=10)
            wait_until("the killed node gone from host 0", lambda: f"h{hs[2]}" not in nodes(
                lab.usernet, socks[0]), [procs[0], procs[1]], timeout=ttl * 3 + 10)
            up(2, f"svc2-{rep}")
            wait_until("web3 back in the rotation", balanced, list(procs.values()),
                       timeout=30)
            # (b) host 1's server stopped; the client asks host 0.
            RES.stop(servers[1].popen, sig=signal.SIGKILL)
            t0 = time.monotonic()
            stopped.append(window(rep, "server stopped", "stop", names[1], t0))
            servers[1] = httpd(lab.hosts[hs[1]][1], names[1])
            wait_until("web2 back in the rotation", balanced, list(procs.values()),
                       timeout=30)
            # (c) host 2 cut off the underlay (its link down: nothing answers, no reset, as
            # a machine that died); the client asks host 0.
            h2 = lab.hosts[hs[2]][0]
            run(["ip", "-n", h2, "link", "set", "ul0", "down"], timeout=10)
            t0 = time.monotonic()
            try:
                cut.append(window(rep, "host cut off", "cut", names[2], t0))
            finally:
                run(["ip", "-n", h2, "link", "set", "ul0", "up"], timeout=10)
            wait_until("web3 back in the rotation after the cut", balanced,
                       list(procs.values()), timeout=30)

        def summary(rs):
            return {"reps_ms": [r["ms"] for r in rs],
                    "median_ms": round(statistics.median(r["ms"] for r in rs), 1),
                    "issued_ms": [r["issued_ms"] for r in rs],
                    "bad_per_rep": [r["bad"] for r in rs],
                    "requests_per_rep": [r["requests"] for r in rs],
                    "slowest_ms_per_rep": [r["slowest_ms"] for r in rs],
                    "after": [r["after"] for r in rs]}

        return {"health": dict(HEALTH), "two_intervals_ms": 2 * HEALTH["interval_ms"],
                "client_gap_ms": int(CLIENT_GAP_S * 1000), "window_s": WINDOW_S,
                "killed": f"web3@h{hs[2]}", "stopped": f"web2@h{hs[1]}",
                "node_killed": summary(killed), "server_stopped": summary(stopped),
                "node_cut_off": summary(cut)}
    finally:
        for p in list(servers.values()) + list(procs.values()):
            p.stop()


def markdown(doc):
    m, r = doc["machine"], doc["results"]
    lines = ["# Cluster mode: join, leave, etcd requests, service failover", "",
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
    f = r.get("failover")
    if f:
        iv = f["health"]["interval_ms"]
        for key, what in (("node_killed", "a node's usernet killed (SIGKILL)"),
                          ("server_stopped", "an endpoint's server stopped on another node"),
                          ("node_cut_off", "a node cut off the underlay (link down)")):
            c = f.get(key)
            if not c:
                continue
            lines.append(
                f"| service failover: {what} → end of the last failed or misrouted client "
                f"request | **{c['median_ms']} ms** median"
                + (", no bad request" if not any(c["bad_per_rep"]) else "")
                + f" (2 health intervals: {2 * iv} ms) | "
                f"reps {c['reps_ms']} ms; bad requests per rep {c['bad_per_rep']} of "
                f"{c['requests_per_rep']}; slowest request per rep {c['slowest_ms_per_rep']} "
                f"ms; health interval_ms {iv}, timeout_ms {f['health']['timeout_ms']}, fall "
                f"{f['health']['fall']}, rise {f['health']['rise']}; client every "
                f"{f['client_gap_ms']} ms for {f['window_s']} s |")
    for k, e in r.get("errors", {}).items():
        lines.append(f"| {k} | failed | {e} |")
    if f:
        lines += ["", "Service failover: 3 hosts, the service `8080:80/tcp -> web1, web2, "
                  "web3` on each, each guest `webN` (DHCP hostname) serving `/who`; a client "
                  "(`curl -m 2` in the underlay's namespace) asks host 0's published port "
                  f"every {f['client_gap_ms']} ms. A request is bad if it fails or is answered "
                  "by the endpoint that went; 0 ms: no request after the kill/stop/cut was bad "
                  "(a request that waited for a dead endpoint and was moved to another one "
                  "counts as good, its delay shows in the slowest request). Killed: the "
                  f"usernet of the node of `{f['killed']}` (its host's kernel lives on and "
                  "resets connections to the mesh port); cut off: the same node's underlay "
                  f"link set down (nothing answers); stopped: the server `{f['stopped']}`. "
                  "Each is restarted (link up) between reps. Latencies are noisy "
                  f"on this small machine ({m.get('nproc')} CPUs, load average "
                  f"{m.get('loadavg_start')} at the start, shared with other work)."]
    lines.append("")
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
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated, of {','.join(CASES)} (default all)")
    args = ap.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    if not cases or any(c not in CASES for c in cases):
        sys.exit(f"bench/cluster.py: --cases: of {','.join(CASES)}")
    if os.geteuid() != 0:
        sys.exit("bench/cluster.py: needs root (namespaces)")
    for tool in ("etcd", "curl", "ping", "busybox"):
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
        if set(cases) & {"join", "leave", "requests"}:
            lab.add_host()
            p0, lab.sock0 = lab.start(0, args.ttl, "h0")
            lab.add_host()
            p1, _ = lab.start(1, args.ttl, "h1")
            lab.procs = [p0, p1]
        for name, fn in (("join", lambda: measure_join(lab, args.reps, args.ttl)),
                         ("leave", lambda: measure_leave(lab, max(3, args.reps // 2),
                                                         args.ttl)),
                         ("requests", lambda: measure_requests(lab, args.ports)),
                         ("failover", lambda: measure_failover(lab, args.reps, args.ttl))):
            if name not in cases:
                continue
            if name == "leave" and "join" not in cases:
                lab.add_host()  # the host that join would have added
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
                          "cases": cases,
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
