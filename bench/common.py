"""Shared plumbing of the benchmark suite (bench/run.py, l2.py, nat.py, mem.py, scale.py).

Namespaces, processes, iperf3 runs, CPU/memory accounting, the machine description and small
formatting helpers live here, once. Stdlib only.

Everything the suite creates is registered in `RES` (namespaces, processes, temporary
directory) and removed by `RES.cleanup()`, which run.py calls on exit, on failure and on
SIGINT/SIGTERM/SIGHUP. Processes are stopped by pid, never by name. Every subprocess call has a
timeout (`run`). Names carry the prefix `ub<pid>-` so that they are unique to one run.
"""

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
# "ub<pid>-": the dash keeps one run's prefix from being a prefix of another run's names.
PREFIX = f"ub{os.getpid()}-"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Interrupted(Exception):
    """A signal asked us to stop (raised from the signal handler)."""


class CaseFailed(Exception):
    """One case (system x test) failed; the reason goes into the results."""


def case_failed(res, e):
    """Records a case that could not run (`e`, a CaseFailed) in its result `res`."""
    res["status"] = "failed"
    res["error"] = str(e)
    log(f"  FAILED: {e}")


def log(msg):
    ts = time.strftime("%H:%M:%S")
    print(f"[bench {ts}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- processes ----

def run(argv, timeout, check=True, **kw):
    """subprocess.run with a mandatory timeout and captured text output."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise CaseFailed(f"timeout after {timeout}s: {' '.join(argv)}") from e
    except OSError as e:
        raise CaseFailed(f"{argv[0]}: {e}") from e
    if check and r.returncode != 0:
        raise CaseFailed(f"{' '.join(argv)} exited {r.returncode}: "
                         f"{(r.stderr or r.stdout).strip()[-500:]}")
    return r


def nsexec(ns, argv):
    """`ip netns exec` execs the command in place: a Popen's pid is the command's pid."""
    return ["ip", "netns", "exec", ns] + argv


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


def link_mtu(ns, dev):
    r = run(["ip", "-n", ns, "-o", "link", "show", dev], timeout=10, check=False)
    m = re.search(r"mtu (\d+)", r.stdout)
    return int(m.group(1)) if m else None


def link_has_addr(ns, dev, addr):
    r = run(["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", dev], timeout=10, check=False)
    return f"inet {addr}/" in r.stdout


def strip_ansi(s):
    return re.sub(r"\x1b\[[0-9;]*m", "", s)


class Resources:
    """Everything we create, so that it can be torn down whatever happens."""

    def __init__(self):
        self.namespaces = []  # names, in creation order
        self.procs = []  # subprocess.Popen objects we started
        self.tmpdir = None
        self.files = []  # open log files

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
        kw.setdefault("stdin", subprocess.DEVNULL)
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
        if p.stdin:
            try:
                p.stdin.close()
            except OSError:
                pass
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def open_log(self, name):
        path = os.path.join(self.tmpdir, name)
        f = open(path, "w")
        self.files.append(f)
        return path, f

    def cleanup(self):
        for p in list(reversed(self.procs)):
            self.stop(p)
        for f in self.files:
            try:
                f.close()
            except OSError:
                pass
        self.files = []
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

    def leftovers(self):
        return ([n for n in list_netns() if n.startswith(PREFIX)]
                + [n for n in list_links() if n.startswith(PREFIX)]
                + [f"pid {p.pid}" for p in self.procs if p.poll() is None])


RES = Resources()


class Proc:
    """A long-running process of a system under test, with its log file."""

    def __init__(self, label, argv, ns=None, stdin=None):
        self.label = label
        self.logpath, f = RES.open_log(f"{label}.log")
        self.popen = RES.spawn(nsexec(ns, argv) if ns else argv, stdout=f,
                               stderr=subprocess.STDOUT,
                               stdin=stdin if stdin is not None else subprocess.DEVNULL)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def tail(self, n=6):
        try:
            with open(self.logpath, errors="replace") as f:
                lines = [strip_ansi(x.rstrip()) for x in f
                         if x.strip() and "to syslog" not in x]
        except OSError:
            return ""
        return " | ".join(lines[-n:])

    def stop(self):
        return RES.stop(self.popen)


def wait_until(what, cond, procs=(), timeout=10.0):
    """Polls cond() until true; fails early if one of procs exits."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            if not p.alive():
                raise CaseFailed(f"{p.label} exited {p.popen.returncode} while waiting for "
                                 f"{what}: {p.tail()}")
        if cond():
            return
        if time.monotonic() > deadline:
            tails = "; ".join(f"{p.label}: {p.tail(3)}" for p in procs)
            raise CaseFailed(f"{what} not ready after {timeout}s" + (f" ({tails})" if tails
                                                                        else ""))
        time.sleep(0.05)


def listening(ns, port, pid=None):
    r = run(nsexec(ns, ["ss", "-Hltnp", f"sport = :{port}"]), timeout=5, check=False)
    if pid is not None:
        return f"pid={pid}," in r.stdout
    return f":{port}" in r.stdout


def slirp_api(path, req, timeout=5.0):
    """One request on slirp4netns's JSON API socket."""
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


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(str(v))  # a TOML basic string: JSON's escapes are TOML's


def usernet_config(engine, networks, ports, forwards=()):
    """The text of a `usernet up -c` config: [engine], then one [[network]], [[port]] and
    [[forward]] table per dict of `networks`, `ports`, `forwards` (keys in the dicts' order)."""
    out = ["[engine]"] + [f"{k} = {toml_value(v)}" for k, v in engine.items()] + [""]
    for table, rows in (("network", networks), ("port", ports), ("forward", forwards)):
        for row in rows:
            out += [f"[[{table}]]"] + [f"{k} = {toml_value(v)}" for k, v in row.items()] + [""]
    return "\n".join(out)


def usernet_up(binary, key, config, namespaces, ns=None):
    """Writes `config` to usernet-KEY.toml, starts `usernet up` with it (inside `ns` if given)
    and waits for the control socket and an eth0 (usernet's TAP) in each of `namespaces`.
    Returns (Proc, control socket path); stops the process if it does not get ready."""
    cfg = os.path.join(RES.tmpdir, f"usernet-{key}.toml")
    sock = os.path.join(RES.tmpdir, f"usernet-{key}.sock")
    with open(cfg, "w") as f:
        f.write(config)
    p = Proc(f"usernet-{key}", [binary, "up", "-c", cfg, "--socket", sock], ns=ns)
    try:
        wait_until(f"usernet control socket and the TAPs in {len(namespaces)} namespace(s)",
                   lambda: os.path.exists(sock)
                   and all("eth0" in list_links(n) for n in namespaces), [p], timeout=30)
    except BaseException:
        p.stop()
        raise
    return p, sock


def usernet_ctl(binary, sock, what):
    """`usernet ctl --json WHAT`, parsed; {'error': ...} on failure."""
    try:
        r = run([binary, "ctl", "--socket", sock, "--json"] + what.split(), timeout=10,
                check=False)
    except CaseFailed as e:
        return {"error": str(e)}
    if r.returncode != 0:
        return {"error": (r.stderr or r.stdout).strip()[-300:]}
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": "unparsable: " + r.stdout[:300]}


def usernet_drops(stats):
    """Non-zero drop counters of `ctl --json stats` summed over ports, e.g. {'ring_full': 12}."""
    out = {}
    if isinstance(stats, list):
        for p in stats:
            for k, v in (get(p, "stats", "drops") or {}).items():
                if v:
                    out[k] = out.get(k, 0) + v
    return out


# ---------------------------------------------------------------------- traffic control ----

# The "usernet-tc" variants (issue 16): a policy of 10 rules that match none of the measured
# traffic (iperf3 TCP/UDP to port 5201/5301, pings), default allow, so that every IP packet
# walks all 10 rules; rate limits far above what is reached, in both directions; one live
# capture (`TcCapture`) running on one port during every measurement.
TC_POLICY = {"default": "allow", "rules": [
    {"action": "deny", "proto": "tcp", "dst_port": 22},
    {"action": "deny", "proto": "tcp", "dst_port": "3306-3307"},
    {"action": "deny", "proto": "udp", "dst_port": "137-139"},
    {"action": "deny", "proto": "udp", "src_port": 53},
    {"action": "deny", "proto": "icmp", "icmp_type": 13},
    {"action": "deny", "proto": "icmp", "icmp_type": 5},
    {"action": "deny", "src": "192.0.2.0/24"},
    {"action": "deny", "dst": "198.51.100.0/24"},
    {"action": "deny", "proto": "tcp", "src": "203.0.113.0/24", "dst_port": "1-1023"},
    {"action": "deny", "proto": "udp", "dst": "10.255.0.0/16", "dst_port": 9},
]}
TC_PARTS = ("policy", "limits", "capture")  # --tc-parts: what usernet-tc adds (default all)
TC_RATE_LIMIT = {"rx_mbit": 100000, "tx_mbit": 100000, "rx_pps": 10000000,
                 "tx_pps": 10000000}


class TcCapture:
    """`usernet ctl capture PORT -w FILE` in the background for one measurement (a `with`
    block): started before, stopped (SIGTERM: the daemon ends the capture, the file ends on a
    whole block) after. `result` then holds the frames the file got, the frames dropped
    (capture queue full: the capture's own count and the port's `capture_dropped` diffed from
    `ctl --json stats`) and the file's size; the file is deleted (at several Gbit/s it grows
    by GBs per run). `to_null`: written to /dev/null instead (--tc-capture-null); `snaplen`:
    bytes kept of each frame (--tc-snaplen; 0: whole frames)."""

    n = 0

    def __init__(self, binary, sock, port, key, to_null=False, snaplen=0):
        TcCapture.n += 1
        self.to_null = to_null  # -w /dev/null: the capture without the file system's cost
        self.snaplen = snaplen  # 0: ctl's default (whole frames)
        self.binary, self.sock, self.port = binary, sock, port
        self.label = f"capture-{key}-{TcCapture.n}"
        self.path = os.path.join(RES.tmpdir, f"{self.label}.pcapng")
        self.proc = None
        self.result = None

    def _port_dropped(self):
        rows = usernet_ctl(self.binary, self.sock, "stats")
        if not isinstance(rows, list):
            return None
        return sum(r.get("capture_dropped", 0) for r in rows if r.get("port") == self.port)

    def __enter__(self):
        self.d0 = self._port_dropped()
        out = "/dev/null" if self.to_null else self.path
        self.proc = Proc(self.label, [self.binary, "ctl", "--socket", self.sock, "capture",
                                      self.port, "-w", out]
                         + (["--snaplen", str(self.snaplen)] if self.snaplen else []))
        # The file appears once the daemon accepted; its header once the first block came.
        wait_until(f"capture of {self.port}", lambda: self.to_null or (
            os.path.exists(self.path) and os.path.getsize(self.path) > 0), [self.proc],
            timeout=10)
        return self

    def __exit__(self, *exc):
        alive = self.proc.alive()
        cpu = proc_cpu_s(self.proc.pid)  # the ctl process's CPU seconds, before it ends
        self.proc.stop()
        d1 = self._port_dropped()
        tail = self.proc.tail(3)
        got = re.search(r"(\d+) frames captured on [^,\s]+(?:, (\d+) dropped)?",
                        tail.split(" | ")[-1] if tail else "")
        try:
            size = os.path.getsize(self.path)
            os.unlink(self.path)
        except OSError:
            size = None
        self.result = {
            "port": self.port, "frames": int(got.group(1)) if got else None,
            "dropped": int(got.group(2)) if got and got.group(2) else (0 if got else None),
            "port_capture_dropped": (None if self.d0 is None or d1 is None
                                     else d1 - self.d0),
            "file_bytes": size, "ran_to_the_end": alive, "ctl_cpu_s": cpu}
        if exc[0] is None and not (got and int(got.group(1)) > 0):
            raise CaseFailed(f"capture of {self.port} recorded no frames: {tail}")
        return False


# ------------------------------------------------------------------------ /proc accounting ----

def proc_cpu_s(pid):
    """utime + stime of a process (all its threads), seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # fields 14, 15
    except (OSError, IndexError, ValueError):
        return None


def thread_cpu_s(pid):
    """{thread name: user+system seconds} over the threads of pid (same names summed)."""
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


def proc_status_kib(pid, key):
    """A kB field of /proc/PID/status (VmRSS, VmHWM), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
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
    total = sum(v[:8])  # user..steal; guest is already counted in user
    return (total - idle) / CLK_TCK


class Meter:
    """CPU accounting around one measurement: the system's processes and the whole machine.

    `pids`: the processes of the system under test (their CPU is summed); `counters`: an
    optional callable returning a {name: count} dict (usernet drop counters), diffed."""

    def __init__(self, pids=(), counters=None):
        self.pids = list(pids)
        self.counters = counters

    def __enter__(self):
        self.c0 = self.counters() if self.counters else None
        self.t0 = time.monotonic()
        self.sys0 = system_busy_s()
        self.p0 = {p: proc_cpu_s(p) for p in self.pids}
        self.th0 = {p: thread_cpu_s(p) for p in self.pids}
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        self.sys_cpu = system_busy_s() - self.sys0
        self.proc_cpu = None
        self.threads = {}
        if self.pids:
            tot = 0.0
            for p in self.pids:
                a, b = self.p0.get(p), proc_cpu_s(p)
                if a is not None and b is not None:
                    tot += b - a
                t1 = thread_cpu_s(p)
                comm = proc_comm(p) or str(p)
                for k, v in t1.items():
                    d = v - self.th0.get(p, {}).get(k, 0.0)
                    if d > 0:
                        key = k if len(self.pids) == 1 else f"{comm}/{k}"
                        self.threads[key] = round(self.threads.get(key, 0.0) + d, 3)
            self.proc_cpu = tot
        self.drops = None
        if self.counters and exc[0] is None:
            c1 = self.counters()
            if self.c0 is not None and c1 is not None:
                self.drops = {k: v - self.c0.get(k, 0) for k, v in c1.items()
                              if v - self.c0.get(k, 0)}
        return False

    def as_dict(self):
        d = {"wall_s": round(self.wall, 3), "system_cpu_s": round(self.sys_cpu, 3),
             "proc_cpu_s": None if self.proc_cpu is None else round(self.proc_cpu, 3)}
        if self.threads:
            d["thread_cpu_s"] = self.threads
        if self.drops:
            d["usernet_drops"] = self.drops
        return d


def sum_status_kib(pids, key):
    vals = [proc_status_kib(p, key) for p in pids]
    return None if any(v is None for v in vals) or not vals else sum(vals)


# -------------------------------------------------------------------------------- iperf3 ----

def iperf3(srv_ns, srv_args, srv_port, cli_ns, ip, port, secs, client_args=(), meter=None,
           alive=None):
    """One iperf3 run with a fresh one-off server. Returns (json, meter-dict).

    The server listens in srv_ns (srv_args: e.g. ["-B", addr]); the client in cli_ns connects
    to ip:port (through the system under test); `alive()` raises if the system died."""
    js, m = iperf3_many([(srv_ns, srv_args, srv_port, cli_ns, ip, port)], secs, client_args,
                        meter, alive)
    return js[0], m


def iperf3_many(flows, secs, client_args=(), meter=None, alive=None):
    """iperf3 runs in parallel, each with a fresh one-off server. Returns ([json], meter-dict).

    flows: [(srv_ns, srv_args, srv_port, cli_ns, ip, port)], as for `iperf3`. All servers
    listen before the clients start; the meter spans the clients, from the first start to the
    last exit. Any flow's failure fails the run."""
    servers, clients, outs = [], [], []
    try:
        for srv_ns, srv_args, srv_port, *_ in flows:
            servers.append(RES.spawn(nsexec(srv_ns, ["iperf3", "-s", "-1", "-p", str(srv_port)]
                                            + list(srv_args)),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        for (srv_ns, _, srv_port, *_), server in zip(flows, servers):
            while not listening(srv_ns, srv_port, server.pid):
                if server.poll() is not None:
                    raise CaseFailed(f"iperf3 server exited {server.returncode} before "
                                     "listening")
                if time.monotonic() > deadline:
                    raise CaseFailed(f"iperf3 server in {srv_ns} not listening on {srv_port}")
                time.sleep(0.05)
        meter = meter or Meter()
        with meter:
            for _, _, _, cli_ns, ip, port in flows:
                out = (tempfile.TemporaryFile("w+", dir=RES.tmpdir),
                       tempfile.TemporaryFile("w+", dir=RES.tmpdir))
                outs.append(out)
                clients.append(RES.spawn(
                    nsexec(cli_ns, ["iperf3", "-c", ip, "-p", str(port), "-t", str(secs), "-J",
                                    "--connect-timeout", "3000"] + list(client_args)),
                    stdout=out[0], stderr=out[1]))
            deadline = time.monotonic() + secs + 20
            for c, (_, _, _, _, ip, port) in zip(clients, flows):
                try:
                    c.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    raise CaseFailed(f"timeout after {secs + 20}s: iperf3 -c {ip} -p {port}")
        if alive:
            alive()
        js = []
        for c, (stdout, stderr), (_, _, _, _, ip, port) in zip(clients, outs, flows):
            stdout.seek(0)
            stderr.seek(0)
            text, err = stdout.read(), stderr.read()
            try:
                j = json.loads(text)
            except ValueError:
                raise CaseFailed(f"iperf3 exited {c.returncode}, no JSON: "
                                 f"{(err or text).strip()[-300:]}")
            if j.get("error"):
                raise CaseFailed(f"iperf3 -c {ip} -p {port}: {j['error']}")
            js.append(j)
        return js, meter.as_dict()
    finally:
        for p in clients + servers:
            RES.stop(p, grace=3)
        for out in outs:
            for f in out:
                f.close()


def tcp_rep(j, m):
    """One TCP repetition from iperf3's JSON and the meter."""
    end = j["end"]
    ivals = [iv["sum"] for iv in j.get("intervals", [])]
    # Stalls: whole intervals (1 s) in which the sender moved nothing.
    stalled = sum(1 for iv in ivals if iv.get("bytes", 0) == 0 and iv.get("seconds", 0) > 0.5)
    rx_bytes = end["sum_received"]["bytes"]
    gbit = rx_bytes * 8 / 1e9
    rep = {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
           "sender_gbps": end["sum_sent"]["bits_per_second"] / 1e9,
           "gbit_moved": round(gbit, 3),
           "retransmits": end["sum_sent"].get("retransmits"),
           "stalled_intervals": stalled, "intervals": len(ivals),
           "interval_gbps": [round(iv.get("bits_per_second", 0) / 1e9, 3) for iv in ivals],
           **m}
    return _per_gbit(rep, m, gbit)


def tcp_rep_many(js, m):
    """One repetition of parallel TCP flows (iperf3_many): rates, bytes, retransmits and stalls
    summed over the flows, each flow's own figures under "flows"."""
    flows = [tcp_rep(j, {}) for j in js]
    total = lambda k: sum(f[k] or 0 for f in flows)  # noqa: E731
    gbit = total("gbit_moved")
    rep = {"gbps": total("gbps"), "sender_gbps": total("sender_gbps"),
           "gbit_moved": round(gbit, 3), "retransmits": total("retransmits"),
           "stalled_intervals": total("stalled_intervals"), "intervals": total("intervals"),
           "flows": [{k: f[k] for k in ("gbps", "gbit_moved", "retransmits",
                                        "stalled_intervals", "interval_gbps")}
                     for f in flows],
           **m}
    return _per_gbit(rep, m, gbit)


def _per_gbit(rep, m, gbit):
    if m.get("proc_cpu_s") is not None and gbit > 0:
        rep["cpu_s_per_gbit"] = round(m["proc_cpu_s"] / gbit, 4)
    if m.get("system_cpu_s") is not None and gbit > 0:
        # Whole machine: iperf3 at both ends, softirq, the switch; comparable for kernel paths.
        rep["machine_cpu_s_per_gbit"] = round(m["system_cpu_s"] / gbit, 4)
    return rep


def summarize_tcp(reps, extra=None):
    med = lambda k: median([r.get(k) for r in reps])  # noqa: E731
    out = {"reps": reps, "gbps": med("gbps"), "gbps_min": min(r["gbps"] for r in reps),
           "gbps_max": max(r["gbps"] for r in reps), "retransmits": med("retransmits"),
           "proc_cpu_s": med("proc_cpu_s"), "cpu_s_per_gbit": med("cpu_s_per_gbit"),
           "machine_cpu_s_per_gbit": med("machine_cpu_s_per_gbit"),
           "system_cpu_s": med("system_cpu_s"), "wall_s": med("wall_s"),
           "stalled_intervals": sum(r["stalled_intervals"] for r in reps)}
    if extra:
        out.update(extra)
    return out


# ------------------------------------------------------------------------------- helpers ----

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


def _out(argv, cwd=None):
    try:
        return run(argv, timeout=10, check=False, cwd=cwd).stdout.strip()
    except CaseFailed:
        return ""


def dpkg_version(pkg):
    return _out(["dpkg-query", "-W", "-f=${Version}", pkg]) or None


def machine_info(usernet_src, usernet_bin):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    git = ["git", "-c", f"safe.directory={REPO}"]
    rev = _out(git + ["rev-parse", "--short=12", "HEAD"], cwd=REPO) or "unknown"
    if _out(git + ["status", "--porcelain", "--untracked-files=no", "--", ":!bench",
                   ":!README.md"], cwd=REPO):
        rev += "-dirty"
    sha = mtime = stale = None
    if os.path.exists(usernet_bin):
        with open(usernet_bin, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()[:16]
        mtime = datetime.datetime.fromtimestamp(
            os.path.getmtime(usernet_src), datetime.timezone.utc).isoformat(timespec="seconds")
        # Flag a binary older than HEAD's newest non-bench commit: its numbers then belong to
        # an earlier revision.
        src_time = _out(git + ["log", "-1", "--format=%ct", "--", ".", ":!bench",
                               ":!README.md"], cwd=REPO)
        if src_time.isdigit():
            stale = os.path.getmtime(usernet_src) < int(src_time)
    slirp = _out(["slirp4netns", "--version"]) if shutil.which("slirp4netns") else ""
    sv = re.search(r"slirp4netns version (\S+)", slirp)
    lv = re.search(r"libslirp: (\S+)", slirp)
    ovs = _out(["ovs-vswitchd", "--version"]) if shutil.which("ovs-vswitchd") else ""
    ovsv = re.search(r"\) (\S+)", ovs)
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu_model": cpu,
        "os": _os_release(),
        "usernet_rev": rev,
        "usernet_binary": usernet_src,
        "usernet_binary_sha256_16": sha,
        "usernet_binary_mtime": mtime,
        "usernet_binary_older_than_source": stale,
        "versions": {
            "iperf3": (_out(["iperf3", "--version"]).splitlines() or ["not installed"])[0],
            "slirp4netns": (f"{sv.group(1)} (libslirp {lv.group(1) if lv else '?'})"
                            if sv else "not installed"),
            # pasta --version says "unknown version" in Debian's build: ask dpkg.
            "passt": dpkg_version("passt") or ("installed" if shutil.which("pasta")
                                               else "not installed"),
            "openvswitch": (ovsv.group(1) if ovsv else "not installed")
            + (f" (Debian {dpkg_version('openvswitch-switch')})"
               if dpkg_version("openvswitch-switch") else ""),
            "vde2": dpkg_version("vde2") or ("installed" if shutil.which("vde_switch")
                                            else "not installed"),
            "iproute2": _out(["ip", "-V"]),
            "python": platform.python_version(),
        },
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _os_release():
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None
