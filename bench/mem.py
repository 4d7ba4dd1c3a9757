#!/usr/bin/env python3
"""Memory suite: resident memory of each system serving 1 and 20 namespaces.

What a runtime would run:

  usernet      ONE `usernet up` process, a network with gateway and NAT, one netns port per
               namespace (TAP eth0 inside it), static addresses 10.88.0.2..
  slirp4netns  one slirp4netns process per namespace (--configure, --disable-dns)
  pasta        one pasta process per namespace (--config-net, no port forwards)
  ovs          one ovsdb-server + one ovs-vswitchd (userspace datapath), one tap per namespace
  vde          one vde_switch + one vde_plug2tap per namespace

NAT systems run in a sandbox "host" namespace (see nat.py). Before reading memory, every
namespace moves traffic through the system: NAT systems ping the host's address (10.77.0.2) and send 1
MiB of TCP (iperf3 -n) to a server on the host's 127.0.0.1 through the gateway address; L2 switches (no
gateway) ping namespace 0 and send it 1 MiB of TCP from every other namespace (with one
namespace, there is no peer: idle). Then VmRSS and VmHWM of all the system's processes are
summed.

Run through bench/run.py (`python3 bench/run.py --suites mem`).
"""

import subprocess
import sys
import time

from common import RES, CaseFailed, PREFIX, case_failed, log, nsexec, proc_comm, run, sum_status_kib
import l2
import nat

SYSTEMS = ("usernet", "slirp4netns", "pasta", "ovs", "vde")
LABELS = {"usernet": "usernet (1 process)", "slirp4netns": "slirp4netns (1 per ns)",
          "pasta": "pasta (1 per ns)", "ovs": "OVS userspace (ovsdb + vswitchd)",
          "vde": "vde_switch + 1 vde_plug2tap per ns"}
MTU = 1500
SRV_PORT = 5301


def traffic(cli_ns, ping_ip, srv_ip, alive):
    """Ping + 1 MiB of TCP from cli_ns; returns an error text or None."""
    r = run(nsexec(cli_ns, ["ping", "-c", "1", "-W", "2", "-q", ping_ip]), timeout=10,
            check=False)
    alive()
    errs = []
    if r.returncode != 0:
        errs.append(f"ping {ping_ip} failed")
    r = run(nsexec(cli_ns, ["iperf3", "-c", srv_ip, "-p", str(SRV_PORT), "-n", "1M",
                            "--connect-timeout", "3000"]), timeout=30, check=False)
    alive()
    if r.returncode != 0:
        errs.append(f"1 MiB TCP to {srv_ip}:{SRV_PORT} failed: "
                    f"{(r.stderr or r.stdout).strip()[-120:]}")
    return "; ".join(errs) or None


def run_nat_case(system, n, ctx):
    sb = nat.Sandbox(f"m{n}")
    guests = [f"{PREFIX}m{n}g{i}" for i in range(n)]
    procs = []
    server = None
    try:
        sb.up()
        for g in guests:
            RES.add_ns(g)
        t0 = time.monotonic()
        key = f"mem{n}"
        if system == "usernet":
            p, _sock = nat.start_usernet(ctx, sb.h, guests, MTU, key, forward=False)
            procs.append(p)
            gws = [nat.UN_GW] * n
        else:
            start = nat.start_slirp4netns if system == "slirp4netns" else nat.start_pasta
            for i, g in enumerate(guests):
                procs.append(start(sb.h, g, MTU, f"{key}-{i}", forward=False))
            gws = [nat.SL_GW] * n
        startup = time.monotonic() - t0
        server = RES.spawn(nsexec(sb.h, ["iperf3", "-s", "-B", "127.0.0.1", "-p",
                                         str(SRV_PORT)]), stdout=RES.open_log(
            f"iperf3-{system}-{key}.log")[1], stderr=subprocess.STDOUT)
        time.sleep(0.3)

        def alive():
            for p in procs:
                if not p.alive():
                    raise CaseFailed(f"{p.label} died (exit {p.popen.returncode}): {p.tail()}")

        errors = {}
        for g, gw in zip(guests, gws):
            # Ping the host's address (through the NAT: pasta sends no ICMP to its gateway
            # address, which it maps to the host only for TCP and UDP); TCP to the host's
            # loopback through the gateway address.
            err = traffic(g, nat.HOST_ADDR, gw, alive)
            if err:
                errors[g] = err
        RES.stop(server)
        return procs, startup, errors
    except BaseException:
        if server is not None:
            RES.stop(server)
        for p in procs:
            p.stop()
        raise


def run_case(system, n, ctx):
    res = {"suite": "mem", "system": system, "label": LABELS[system], "namespaces": n,
           "status": "ok", "error": None}
    log(f"mem {system} x{n}")
    try:
        if system in ("ovs", "vde"):
            with l2.Topology(system, MTU, ctx, n=n, tag="m") as topo:
                errors = {}
                if n > 1:
                    server = RES.spawn(nsexec(topo.eps[0], ["iperf3", "-s", "-B", topo.ips[0],
                                                            "-p", str(SRV_PORT)]),
                                       stdout=RES.open_log(f"iperf3-{system}-m{n}.log")[1],
                                       stderr=subprocess.STDOUT)
                    time.sleep(0.3)
                    try:
                        for ns in topo.eps[1:]:
                            err = traffic(ns, topo.ips[0], topo.ips[0], topo.alive)
                            if err:
                                errors[ns] = err
                    finally:
                        RES.stop(server)
                else:
                    res["note"] = "one namespace on a plain switch has no peer: idle"
                measure_mem(res, topo.pids(), errors)
        else:
            procs, startup, errors = run_nat_case(system, n, ctx)
            try:
                res["startup_s"] = round(startup, 2)
                measure_mem(res, [p.pid for p in procs], errors)
            finally:
                for p in procs:
                    p.stop()
                for i in range(n):
                    g = f"{PREFIX}m{n}g{i}"
                    if g in RES.namespaces:
                        RES.del_ns(g)
                nat.Sandbox(f"m{n}").down()
    except CaseFailed as e:
        case_failed(res, e)
        # A failure midway leaves namespaces of this case: remove them now.
        for ns in list(RES.namespaces):
            if ns.startswith(f"{PREFIX}m{n}"):
                RES.del_ns(ns)
    return res


def measure_mem(res, pids, errors):
    res["processes"] = len(pids)
    res["process_names"] = sorted({proc_comm(p) or "?" for p in pids})
    res["rss_kib"] = sum_status_kib(pids, "VmRSS")
    res["max_rss_kib"] = sum_status_kib(pids, "VmHWM")
    if errors:
        res["status"] = "partial"
        res["traffic_errors"] = errors
        res["error"] = (f"traffic failed in {len(errors)} of {res['namespaces']} namespaces: "
                        + next(iter(errors.values())))
    log(f"  {len(pids)} process(es), RSS {fmt_mib(res['rss_kib'])} MiB "
        f"(peak {fmt_mib(res['max_rss_kib'])})" + (f"; {res['error']}" if errors else ""))


def fmt_mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"


def run_suite(ctx):
    results = []
    for system in SYSTEMS:
        if system not in ctx.args.mem_systems:
            continue
        for n in ctx.args.mem_counts:
            results.append(run_case(system, n, ctx))
    return results


if __name__ == "__main__":
    import run as runner  # noqa: E402

    sys.exit(runner.main(["--suites", "mem"] + sys.argv[1:]))

