#!/usr/bin/env python3
"""usernet next to the Linux bridge, Open vSwitch (userspace datapath, with and without TSO),
vde_switch, slirp4netns and pasta, on this machine, in one run, one system at a time.

Suites (all by default; --suites picks):
  l2   two namespaces joined by a switch: TCP at MTU 1500/9000/65520, 64-byte UDP rate and
       loss, ping RTT, CPU seconds per Gbit (bench/l2.py)
  nat  NAT egress (namespace -> host loopback), download (the same, iperf3 -R) and port
       forward (host -> namespace), next to the routed kernel path, MTU 1500 and 65520
       (bench/nat.py)
  mem  resident memory of each system serving 1 and 20 namespaces (bench/mem.py)
  overlay  two hosts' guests over VXLAN: usernet next to the kernel's vxlan + bridge, TCP,
       CPU seconds per Gbit, ping (bench/overlay.py)
  scale  1, 2, 4 isolated namespace pairs with a TCP flow each, through usernet with 1 and 2
       event loops and through the Linux bridge (bench/scale.py)

Writes bench/results/NAME.md (tables, goals, failures), NAME.json (machine, versions, every
repetition) and NAME.svg (chart of the throughput figures); NAME is `latest` for a full run,
`quick` with --quick, `latest-SUITES` for a subset (or --name).

Stdlib only. Run as root:  python3 bench/run.py [--quick]
"""

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import (HERE, PREFIX, REPO, RES, TC_PARTS, CaseFailed, Interrupted, log,  # noqa: E402
                    run)
import l2  # noqa: E402
import mem  # noqa: E402
import nat  # noqa: E402
import overlay  # noqa: E402
import report  # noqa: E402
import scale  # noqa: E402

SUITES = ("l2", "nat", "mem", "scale", "overlay")


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def names(s, allowed, ap, what):
    out = [x.strip() for x in s.split(",") if x.strip()]
    for x in out:
        if x not in allowed:
            ap.error(f"--{what}: unknown {x!r} (pick from {','.join(allowed)})")
    return out


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", default=",".join(SUITES),
                    help="l2,nat,mem,scale,overlay (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1 rep x 3 s, MTU 1500 only, memory for 1 and 3 namespaces, "
                    "scaling with 1 and 4 pairs (options given explicitly still apply)")
    ap.add_argument("--time", type=int, help="seconds per iperf3 run (default 5)")
    ap.add_argument("--reps", type=int, help="TCP repetitions, median (default 3)")
    ap.add_argument("--mtus", help="L2 MTUs (default 1500,9000,65520)")
    ap.add_argument("--udp-mtus", default="1500", help="L2 MTUs with the 64 B UDP tests")
    ap.add_argument("--udp-rate", default="0",
                    help="iperf3 -b of the unlimited 64 B UDP test (default 0 = unlimited)")
    ap.add_argument("--pings", type=int, default=50, help="ping count (default 50)")
    ap.add_argument("--l2-systems", default=",".join(l2.SYSTEMS))
    ap.add_argument("--nat-mtus", help="NAT MTUs (default 1500,65520)")
    ap.add_argument("--nat-systems", default=",".join(nat.SYSTEMS))
    ap.add_argument("--nat-tests", default=",".join(nat.TESTS))
    ap.add_argument("--overlay-systems", default=",".join(overlay.SYSTEMS))
    ap.add_argument("--mem-systems", default=",".join(mem.SYSTEMS))
    ap.add_argument("--mem-counts", help="namespace counts (default 1,20)")
    ap.add_argument("--scale-pairs", help="scale: namespace pair counts (default 1,2,4)")
    ap.add_argument("--scale-loops", default="1,2",
                    help="scale: usernet [engine] loops to compare (default 1,2)")
    ap.add_argument("--tc-parts", default=",".join(TC_PARTS),
                    help="what the usernet-tc systems add (default policy,limits,capture: all; "
                    "a subset tells where the overhead goes)")
    ap.add_argument("--tc-capture-null", action="store_true",
                    help="the usernet-tc capture writes to /dev/null instead of a file (what "
                    "the capture costs without the file system)")
    ap.add_argument("--tc-snaplen", type=int, default=0,
                    help="the usernet-tc capture keeps this many bytes of each frame (ctl "
                    "capture --snaplen; default 0: whole frames)")
    ap.add_argument("--loops", type=int, default=1,
                    help="usernet [engine] loops in the l2, nat and mem suites (default 1)")
    ap.add_argument("--busy-poll-us", type=int, default=20000,
                    help="[engine] busy_poll_us of the usernet-bp system (default 20000: longer "
                         "than the ping interval, so the loop stays awake through the ping run)")
    ap.add_argument("--usernet", default=os.path.join(REPO, "target", "release", "usernet"),
                    help="usernet binary (default target/release/usernet)")
    ap.add_argument("--copyloop",
                    default=os.path.join(REPO, "target", "release", "examples", "copyloop"),
                    help="the l2 ceiling's TAP-to-TAP copy loop (default "
                    "target/release/examples/copyloop; cargo build --release --example copyloop)")
    ap.add_argument("--build", action="store_true", help="cargo build --release first")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="results directory")
    ap.add_argument("--name", help="output file name without extension")
    ap.add_argument("--update-readme", action="store_true",
                    help="also copy the tables into README.md's Performance section (between "
                    "the bench:latest markers)")
    ap.add_argument("--render", metavar="JSON",
                    help="measure nothing: re-render NAME.md/.svg (and --update-readme) from a "
                    "results JSON this script wrote")
    a = ap.parse_args(argv)
    a.suites = names(a.suites, SUITES, ap, "suites")
    # Defaults, or --quick's; options given on the command line win over both.
    quick = {"reps": 1, "time": 3, "mtus": "1500", "nat_mtus": "1500", "mem_counts": "1,3",
             "scale_pairs": "1,4"}
    full = {"reps": 3, "time": 5, "mtus": "1500,9000,65520", "nat_mtus": "1500,65520",
            "mem_counts": "1,20", "scale_pairs": "1,2,4"}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    a.mtus, a.udp_mtus, a.nat_mtus, a.mem_counts = (ints(a.mtus), ints(a.udp_mtus),
                                                    ints(a.nat_mtus), ints(a.mem_counts))
    a.scale_pairs, a.scale_loops = ints(a.scale_pairs), ints(a.scale_loops)
    a.l2_systems = names(a.l2_systems, l2.SYSTEMS, ap, "l2-systems")
    a.nat_systems = names(a.nat_systems, nat.SYSTEMS, ap, "nat-systems")
    a.tc_parts = names(a.tc_parts, TC_PARTS, ap, "tc-parts")
    a.nat_tests = [t for t in nat.TESTS if t in names(a.nat_tests, nat.TESTS, ap, "nat-tests")]
    a.overlay_systems = names(a.overlay_systems, overlay.SYSTEMS, ap, "overlay-systems")
    a.mem_systems = names(a.mem_systems, mem.SYSTEMS, ap, "mem-systems")
    for m in a.mtus + a.nat_mtus:
        if not 576 <= m <= 65520:
            ap.error(f"MTU {m} outside 576..65520")
    if any(n < 1 or n > 200 for n in a.mem_counts):
        ap.error("--mem-counts: 1..200")
    if any(n < 1 or n > 100 for n in a.scale_pairs):
        ap.error("--scale-pairs: 1..100")
    if any(n < 1 or n > 64 for n in a.scale_loops + [a.loops]):
        ap.error("--scale-loops, --loops: 1..64")
    if a.reps < 1 or a.time < 1:
        ap.error("--reps and --time must be >= 1")
    if not a.name:
        a.name = ("quick" if a.quick else "latest") + (
            "" if a.suites == list(SUITES) else "-" + "-".join(a.suites))
    return a


class Ctx:
    def __init__(self, args):
        self.args = args
        self.usernet_bin = None
        self.copyloop_bin = None  # the l2 ceiling (examples/copyloop.rs), if built
        self.udp_ref = {}  # MTU -> the bridge's received 64 B UDP packets/s


def write_outputs(doc, args):
    """NAME.json, NAME.md, NAME.svg (and README.md with --update-readme); returns the base."""
    doc["goals"] = [{"goal": a, "measured": b, "verdict": c.strip("*")}
                    for a, b, c in report.goals(doc["results"])]
    os.makedirs(args.out, exist_ok=True)
    chart = report.svg(doc)
    base = os.path.join(args.out, args.name)
    if chart:
        with open(base + ".svg", "w") as f:
            f.write(chart)
    md = report.markdown(doc, os.path.basename(base) + ".svg" if chart else None)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    if args.update_readme:
        update_readme(md, os.path.relpath(base + ".svg", REPO) if chart else None)
    return base


README_BEGIN = "<!-- bench:latest (written by bench/run.py --update-readme) -->"
README_END = "<!-- /bench:latest -->"


def update_readme(md, chart_path):
    """Replaces the text between the markers in README.md with this run's report."""
    path = os.path.join(REPO, "README.md")
    with open(path) as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        log("README.md has no bench:latest markers; not updated")
        return
    body = md.replace("### usernet benchmark", "#### Latest run", 1)
    if chart_path:
        body = body.replace(f"![throughput chart]({os.path.basename(chart_path)})",
                            f"![throughput chart]({chart_path})")
    with open(path, "w") as f:
        f.write(text[:i + len(README_BEGIN)] + "\n" + body + text[j:])
    log("updated README.md's Performance section")


def on_signal(signum, _frame):
    raise Interrupted(f"signal {signum}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            doc = json.load(f)
        write_outputs(doc, args)
        return 0
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, veth, TAP): sudo python3 bench/run.py")
    for tool in ("ip", "iperf3", "ping", "ss"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found in PATH")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    ctx = Ctx(args)
    t0 = time.monotonic()
    results = []
    try:
        if args.build:
            log("cargo build --release")
            run(["cargo", "build", "--release"], timeout=1800, cwd=REPO)
            run(["cargo", "build", "--release", "--example", "copyloop"], timeout=1800, cwd=REPO)
        if not os.access(args.usernet, os.X_OK):
            sys.exit(f"bench: {args.usernet} not found; run `cargo build --release` or pass "
                     "--usernet PATH")
        RES.tmpdir = tempfile.mkdtemp(prefix=f"{PREFIX}-")
        # A private copy, so a concurrent rebuild cannot change the binary mid-run.
        src = os.path.abspath(args.usernet)
        ctx.usernet_bin = os.path.join(RES.tmpdir, "usernet")
        shutil.copy2(src, ctx.usernet_bin)
        if os.access(args.copyloop, os.X_OK):
            ctx.copyloop_bin = os.path.join(RES.tmpdir, "copyloop")
            shutil.copy2(args.copyloop, ctx.copyloop_bin)
        machine = common.machine_info(src, ctx.usernet_bin)
        log(f"prefix {PREFIX}; suites {args.suites}; {args.reps} rep(s) x {args.time} s; "
            f"writing {args.name}.*")
        for suite in args.suites:
            results += {"l2": l2, "nat": nat, "mem": mem, "scale": scale,
                        "overlay": overlay}[suite].run_suite(ctx)
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc = {"machine": machine,
               "params": {"command": "python3 bench/run.py" + "".join(
                   " " + shlex.quote(x) for x in argv),
                          "suites": args.suites, "time_s": args.time, "reps": args.reps,
                          "l2_mtus": args.mtus, "udp_mtus": args.udp_mtus,
                          "udp_rate": args.udp_rate, "udp_payload": 64,
                          "udp_fixed_fraction_of_bridge": l2.UDP_FRACTION,
                          "pings": args.pings, "nat_mtus": args.nat_mtus,
                          "nat_tests": args.nat_tests, "mem_counts": args.mem_counts,
                          "scale_pairs": args.scale_pairs, "scale_loops": args.scale_loops,
                          "scale_mtu": scale.MTU,
                          "usernet_loops": args.loops, "quick": args.quick,
                          "tc_parts": args.tc_parts,
                          "tc_capture_null": args.tc_capture_null,
                          "tc_snaplen": args.tc_snaplen,
                          "l2_systems": args.l2_systems, "nat_systems": args.nat_systems,
                          "mem_systems": args.mem_systems,
                          "overlay_systems": args.overlay_systems,
                          "overlay_inner_mtu": overlay.MTU},
               "duration_s": round(time.monotonic() - t0, 1),
               "results": results}
        base = write_outputs(doc, args)
        log(f"wrote {base}.md, .json, .svg in {doc['duration_s'] / 60:.1f} min")
        return 0 if all(r["status"] == "ok" for r in results) else 1
    except Interrupted as e:
        log(f"interrupted ({e}); cleaning up")
        return 130
    except CaseFailed as e:
        log(f"error: {e}")
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        RES.cleanup()
        left = RES.leftovers()
        if left:
            log(f"warning: left behind: {left}")


if __name__ == "__main__":
    sys.exit(main())
