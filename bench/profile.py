#!/usr/bin/env python3
"""Where usernet's time goes: one workload at a time, `perf record -g` on the usernet process
(by pid) while the traffic runs, then `perf stat` of its syscalls over a second window of the
same traffic.

Each case sets up one topology of the benchmark suites (bench/l2.py, nat.py, overlay.py: the
same namespaces, configs and addresses), checks connectivity, then:

  1. runs the workload (iperf3 or ping) for --time + 3 s and, from 1.5 s in, samples the
     system's processes for --time s: `perf record -e cpu-clock -F 999 -g -p PIDS`
     (cpu-clock: the VM has no hardware cycle counter);
  2. runs it again and counts syscalls for --time s: `perf stat --per-thread -e
     syscalls:sys_enter_{readv,write,epoll_wait,...} -p PIDS`, next to the frames the ports
     moved meanwhile (usernet's `ctl --json stats`, diffed): syscalls per frame;
  3. prints `perf report --no-children --sort comm,dso,symbol` (self time; comm is the thread
     name), the same by comm,dso (user vs kernel per thread), the inclusive (--children) top
     symbols, and the syscall counts per frame and per thread; for L2 cases also where lost
     packets died (the TAPs' drop counters, the receiver's UDP RcvbufErrors).

Cases: SYSTEM:WORKLOAD:MTU, e.g. usernet:tcp:1500. SYSTEM is usernet, copyloop (the L2
ceiling, examples/copyloop.rs), nat (usernet with gateway and NAT, bench/nat.py's sandbox),
usernet-tc and nat-tc (the same with run.py's traffic control: policy, limits and a
whole-frame capture to a file running while sampled),
overlay (two usernets joined by VXLAN, bench/overlay.py), scale2 (two isolated pairs through
one usernet with 2 event loops, both flows at once), or a kernel reference recorded
system-wide (`perf record -a`): bridge, veth, kernel (nat.py's routed veth). WORKLOAD is tcp
(A -> B), udp64 (64 B UDP, -b 0), ping (-i 0.01), egress or download (nat only: guest -> host
loopback, and the same with iperf3 -R), forward (nat only: a host client on 127.0.0.1 through
the regular port forward to the guest's server).

  python3 bench/profile.py --usernet target/profiling/usernet \\
      --copyloop target/profiling/examples/copyloop [--cases ...] [--time 8] [--out DIR]

As root. perf.data and the full reports stay in --out (default /tmp/usernet-profile-PID).
Names carry the prefix pf<pid>-; everything is removed on exit, as in bench/run.py.
"""

import argparse
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

common.PREFIX = f"pf{os.getpid()}-"  # before l2/nat/overlay import it
from common import RES, TC_PARTS, CaseFailed, Interrupted, Meter, iperf3, iperf3_many, log, \
    nsexec, run, usernet_ctl  # noqa: E402
import l2  # noqa: E402
import nat  # noqa: E402
import overlay  # noqa: E402

PERF = "/usr/bin/perf"
DEFAULT_CASES = ("usernet:tcp:1500,usernet:tcp:9000,usernet:tcp:65520,copyloop:tcp:1500,"
                 "copyloop:tcp:65520,usernet:udp64:1500,copyloop:udp64:1500,usernet:ping:1500,"
                 "copyloop:ping:1500,nat:egress:1500,nat:download:1500,nat:download:65520,"
                 "overlay:tcp:1500,scale2:tcp:1500,bridge:tcp:1500,kernel:egress:1500")
SYSTEM_WIDE = ("bridge", "veth", "kernel")
# The syscalls counted (a fixed list: `perf stat` with every sys_enter_* tracepoint on each
# thread takes seconds to set up, which would shift the counting window off the traffic).
SYSCALLS = ("read", "readv", "write", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "recvmmsg", "sendmmsg", "epoll_wait", "epoll_pwait", "epoll_pwait2", "epoll_ctl",
            "poll", "ppoll", "futex", "ioctl", "splice", "accept4", "connect", "socket",
            "close", "getsockopt", "setsockopt", "clock_nanosleep", "sched_yield", "madvise",
            "mmap", "munmap", "io_uring_enter", "shutdown", "eventfd2", "timerfd_settime")


class Ctx:
    """What l2/nat/overlay's topologies read from bench/run.py's context."""

    def __init__(self, args):
        # usernet-tc and nat-tc: every part of run.py's traffic control (policy, limits, and a
        # whole-frame capture to a file running while sampled).
        self.args = argparse.Namespace(loops=1, tc_parts=list(TC_PARTS), busy_poll_us=0,
                                       tc_capture_null=False, tc_snaplen=0)
        self.usernet_bin = args.usernet
        self.copyloop_bin = args.copyloop
        self.udp_ref = {}


def topology(system, mtu, ctx):
    """The suites' topology (a context manager) for one SYSTEM at one MTU."""
    if system in ("usernet", "usernet-tc", "copyloop", "bridge", "veth"):
        return l2.Topology(system, mtu, ctx, tag="p")
    if system == "scale2":
        return l2.Topology("usernet", mtu, ctx, n=4, tag="q", segments=2, loops=2)
    if system in ("nat", "nat-tc", "kernel"):
        name = {"nat": "usernet", "nat-tc": "usernet-tc"}.get(system, system)
        return nat.Topology(name, mtu, ctx, tag="p", splice=False)
    if system == "overlay":
        if mtu != overlay.MTU:
            raise CaseFailed(f"overlay: inner MTU {overlay.MTU} only")
        return overlay.Topology("usernet", ctx)
    raise CaseFailed(f"unknown system {system}")


def pids_of(topo):
    if isinstance(topo, nat.Topology):
        return [topo.proc.pid] if topo.proc else []
    return topo.pids()


def socks_of(topo):
    if isinstance(topo, overlay.Topology):
        return topo.socks
    return [topo.sock] if getattr(topo, "sock", None) else []


def frames(ctx, socks):
    """[rx_frames, rx_bytes, tx_frames, tx_bytes] summed over the ports of the usernet
    processes (`ctl --json stats`)."""
    out = [0, 0, 0, 0]
    for s in socks:
        rows = usernet_ctl(ctx.usernet_bin, s, "stats")
        for r in rows if isinstance(rows, list) else []:
            st = r.get("stats", r)
            for i, k in enumerate(("rx_frames", "rx_bytes", "tx_frames", "tx_bytes")):
                out[i] += st.get(k, 0)
    return out


def workload(system, work, topo, secs):
    """A callable running the traffic for secs seconds; returns a short result dict."""
    if system in ("nat", "nat-tc", "kernel"):
        if work not in ("egress", "download", "forward"):
            raise CaseFailed(f"{system}: egress, download or forward")
        if work == "forward":  # the regular port forward: host client -> guest server
            ip, port = topo.variants[0][2]
            return lambda: _tcp(iperf3(topo.g, [], nat.GUEST_PORT, topo.h, ip, port, secs)[0])
        ip, port = topo.variants[0][1]
        cargs = ["-R"] if work == "download" else []
        return lambda: _tcp(iperf3(topo.h, ["-B", topo.host_bind], port, topo.g, ip, port,
                                   secs, client_args=cargs)[0])
    if system == "scale2":
        flows = [(topo.eps[k + 1], ["-B", topo.ips[k + 1]], 5201 + k, topo.eps[k],
                  topo.ips[k + 1], 5201 + k) for k in range(0, len(topo.eps), 2)]
        return lambda: _tcp_many(iperf3_many(flows, secs)[0])
    srv = (topo.b, ["-B", l2.IP_B], l2.PORT, topo.a, l2.IP_B, l2.PORT)
    if work == "tcp":
        return lambda: _tcp(iperf3(*srv, secs)[0])
    if work == "udp64":
        return lambda: _udp(iperf3(*srv, secs, client_args=["-u", "-l", "64", "-b", "0"])[0])
    if work == "ping":
        n = int(secs * 100)

        def ping():
            r = run(nsexec(topo.a, ["ping", "-c", str(n), "-i", "0.01", "-W", "1", l2.IP_B]),
                    timeout=secs + 30, check=False)
            each = sorted(float(x) * 1e3 for x in re.findall(r"time=([\d.]+) ms", r.stdout))
            return {"pings": len(each), "median_us": each[len(each) // 2] if each else None}
        return ping
    raise CaseFailed(f"unknown workload {work} for {system}")


def drop_counters(topo):
    """Where L2 frames get lost: the TAPs' own drop counters (A's eth0 TX: the kernel's queue
    towards usernet was full) and UDP receive-buffer overflows in B."""
    if not isinstance(topo, l2.Topology) or isinstance(topo, overlay.Topology):
        return {}
    out = {}
    for ns, side in ((topo.a, "A"), (topo.b, "B")):
        r = run(["ip", "-n", ns, "-s", "-s", "-j", "link", "show", "eth0"], timeout=10,
                check=False)
        m = re.search(r'"tx":\{[^}]*"dropped":(\d+)', r.stdout)
        n = re.search(r'"rx":\{[^}]*"dropped":(\d+)', r.stdout)
        out[f"{side} eth0 tx_dropped"] = int(m.group(1)) if m else None
        out[f"{side} eth0 rx_dropped"] = int(n.group(1)) if n else None
    r = run(nsexec(topo.b, ["cat", "/proc/net/snmp"]), timeout=10, check=False)
    udp = [x.split() for x in r.stdout.splitlines() if x.startswith("Udp:")]
    if len(udp) == 2:
        out["B udp RcvbufErrors"] = int(dict(zip(*udp)).get("RcvbufErrors", 0))
    return out


def _tcp(j):
    e = j["end"]["sum_received"]
    return {"gbps": round(e["bits_per_second"] / 1e9, 2), "bytes": e["bytes"]}


def _tcp_many(js):
    rs = [_tcp(j) for j in js]
    return {"gbps": round(sum(r["gbps"] for r in rs), 2), "bytes": sum(r["bytes"] for r in rs),
            "flows_gbps": [r["gbps"] for r in rs]}


def _udp(j):
    s = j["end"]["sum_received"]
    rx = s["packets"] - s["lost_packets"]
    return {"rx_kpps": round(rx / (s["seconds"] or 1) / 1e3, 1), "loss_pct": s["lost_percent"],
            "packets": rx}


def during(fn, perf_argv, timeout, pre=None, post=None):
    """Runs fn() (the traffic) in a thread and perf_argv after 1.5 s (pre() just before it,
    post() just after); returns (fn's result, perf's CompletedProcess)."""
    box = {}

    def target():
        try:
            box["res"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["err"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    time.sleep(1.5)
    try:
        if pre:
            pre()
        p = run(perf_argv, timeout=timeout, check=False)
        if post:
            post()
    finally:
        t.join(timeout + 30)
    if "err" in box:
        raise box["err"]
    if t.is_alive():
        raise CaseFailed("workload did not finish")
    return box.get("res"), p


def report(data, out, top, procs=False):
    """perf report views of one perf.data; writes them to out.* and returns the text.
    `procs`: several processes (overlay): a view per process and thread too."""
    views = [("processes", ["--no-children", "--sort", "pid,dso", "-g", "none"])] if procs \
        else []
    views += [
        ("self", ["--no-children", "--sort", "comm,dso,symbol", "-g", "none",
                  "--percent-limit", "0.3"]),
        ("threads", ["--no-children", "--sort", "comm,dso", "-g", "none"]),
        ("inclusive", ["--children", "--sort", "symbol", "-g", "none", "--percent-limit",
                       "1.5"]),
    ]
    text = []
    for name, argv in views:
        r = run([PERF, "report", "-i", data, "--stdio"] + argv, timeout=600, check=False)
        lines = [x.rstrip() for x in r.stdout.splitlines()
                 if x.strip() and not x.startswith("#")]
        with open(f"{out}.{name}.txt", "w") as f:
            f.write(r.stdout)
        text.append(f"--- perf report {' '.join(argv)} (top {top}) ---")
        text += [re.sub(r"\s{3,}", "  ", x).rstrip(" -")
                 for x in lines[:top * (2 if name == "inclusive" else 1)]]
    return "\n".join(text)


def parse_stat(path):
    """perf stat -x, --per-thread: {thread comm: {syscall: count}}."""
    out = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) < 4 or not parts[1].replace(".", "").isdigit():
                continue
            thread, val, ev = parts[0], float(parts[1]), parts[3]
            m = re.match(r"syscalls:sys_enter_(\w+)", ev)
            if not m or not val:
                continue
            comm = re.sub(r"-\d+$", "", thread)
            d = out.setdefault(comm, {})
            d[m.group(1)] = d.get(m.group(1), 0) + int(val)
    return out


def run_case(case, args, ctx, outdir):
    system, work, mtu = case.split(":")
    mtu = int(mtu)
    log(f"case {case}")
    stem = os.path.join(outdir, case.replace(":", "-"))
    with topology(system, mtu, ctx) as topo:
        if isinstance(topo, nat.Topology):
            ok = nat.connectivity(topo)
            if ok != "ok":
                raise CaseFailed(ok)
        else:
            l2.warmup(topo)
        pids = pids_of(topo)
        wide = system in SYSTEM_WIDE or args.system_wide
        if system not in SYSTEM_WIDE and not pids:
            raise CaseFailed("no process to profile")
        target = ["-a"] if wide else ["-p", ",".join(map(str, pids))]
        secs = args.time
        fn = workload(system, work, topo, secs + 3)
        # 1. the profile
        data = stem + ".perf.data"
        meter = Meter(pids)
        d0 = drop_counters(topo)
        with meter, topo.measuring() as cap:
            res, p = during(fn, [PERF, "record", "-e", "cpu-clock", "-F", str(args.freq)]
                            + args.call_graph.split() + ["-o", data] + target
                            + ["--", "sleep", str(secs)], secs + 60)
        if cap is not None:
            print(f"capture during the profile: {cap.result}")
        if p.returncode != 0:
            raise CaseFailed(f"perf record: {p.stderr.strip()[-300:]}")
        m = meter.as_dict()
        d1 = drop_counters(topo)
        drops = {k: v - d0[k] for k, v in d1.items() if v is not None and d0.get(k) is not None
                 and v - d0[k]}
        print(f"\n===== {case}: {res}; {'system-wide' if wide else ''} pids {pids}; "
              f"process CPU {m['proc_cpu_s']} s, machine busy {m['system_cpu_s']} s over "
              f"{m['wall_s']} s wall; threads {m.get('thread_cpu_s')}; drops {drops} =====")
        print(report(data, stem, args.top, procs=len(pids) > 1 or wide))
        if not pids:
            return
        # 2. the syscalls, over a second window of the same traffic
        socks = socks_of(topo)
        fr = {}
        stat = stem + ".syscalls.csv"
        events = ",".join(f"syscalls:sys_enter_{c}" for c in SYSCALLS)
        res2, p = during(fn, [PERF, "stat", "--per-thread", "-x", ",", "-o", stat, "-e",
                              events, "-p", ",".join(map(str, pids)),
                              "--", "sleep", str(secs)], secs + 60,
                         pre=lambda: fr.update(a=frames(ctx, socks), t=time.monotonic()),
                         post=lambda: fr.update(b=frames(ctx, socks), t=time.monotonic()
                                                - fr["t"]))
        if p.returncode != 0:
            raise CaseFailed(f"perf stat: {p.stderr.strip()[-300:]}")
        calls = parse_stat(stat)
        total = {}
        for d in calls.values():
            for k, v in d.items():
                total[k] = total.get(k, 0) + v
        # Frames the ports moved while perf ran (ctl stats read just before and after it): a
        # rate, set against the syscall rate over perf's `secs` (steady traffic assumed).
        rx, rxb, tx, txb = (b - a for a, b in zip(fr["a"], fr["b"]))
        print(f"--- syscalls over {secs} s of a second run ({res2}); perf stat took "
              f"{fr['t']:.1f} s ---")
        if socks:
            print(f"ports while perf ran: rx {rx / fr['t']:.0f} frames/s "
                  f"({rxb / max(rx, 1):.0f} B avg), tx {tx / fr['t']:.0f} frames/s "
                  f"({txb / max(tx, 1):.0f} B avg), summed over ports")
        else:
            print("(no ctl: per-frame figures only for usernet)")
        per = rx / fr["t"] * secs or None
        for k, v in sorted(total.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {k:20s} {v:>12d} {v / secs:>12.0f}/s"
                  + (f" {v / per:8.3f}/frame received" if per else ""))
        for comm, d in sorted(calls.items()):
            print(f"  thread {comm}: " + ", ".join(
                f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:8]))


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--usernet", required=True, help="usernet binary (with line tables: "
                    "cargo build --profile profiling)")
    ap.add_argument("--copyloop", help="examples/copyloop binary (copyloop cases)")
    ap.add_argument("--cases", default=DEFAULT_CASES, help="SYSTEM:WORKLOAD:MTU,...")
    ap.add_argument("--time", type=int, default=8, help="seconds sampled per case (default 8)")
    ap.add_argument("--freq", type=int, default=999, help="perf record -F (default 999)")
    ap.add_argument("--call-graph", default="-g", help="perf record call-graph option "
                    "(default -g: frame pointers; '--call-graph dwarf' for user stacks)")
    ap.add_argument("--system-wide", action="store_true", help="perf record -a for every "
                    "case: the whole machine (both iperf3 ends, softirq, other load) by thread")
    ap.add_argument("--top", type=int, default=25, help="lines of each report printed")
    ap.add_argument("--out", help="directory for perf.data and reports")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("profile: needs root")
    for tool in (PERF, "iperf3", "ip", "ping", "ss"):
        if not shutil.which(tool):
            sys.exit(f"profile: {tool} not found")
    outdir = args.out or f"/tmp/usernet-profile-{os.getpid()}"
    os.makedirs(outdir, exist_ok=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    RES.tmpdir = tempfile.mkdtemp(prefix=common.PREFIX)
    ctx = Ctx(args)
    failed = 0
    try:
        for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
            try:
                run_case(case, args, ctx, outdir)
            except CaseFailed as e:
                failed += 1
                log(f"  {case} FAILED: {e}")
    except Interrupted as e:
        log(f"interrupted ({e})")
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        RES.cleanup()
        left = RES.leftovers()
        if left:
            log(f"warning: left behind: {left}")
    log(f"perf.data and reports in {outdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
