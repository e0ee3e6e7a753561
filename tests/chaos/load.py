#!/usr/bin/python3
"""Load test: 10,000 concurrent connections acquiring and releasing.

    load.py [--duration SECS] [--conns N] [--resources R] [--threads T]

Starts arbiterd in a temporary folder with its open-file limit raised to the
hard limit and `-o limits.max_connections=20000`, waits for "arbiter ready",
runs chaos_load (N connections from T threads, async API + epoll, each
connection looping acquire/release on one of R resources), and meanwhile
samples the daemon's memory from /proc. Checks: every connection came up and
the daemon held them all at once, zero errors, every connection made
progress, memory stayed bounded (no growth during the steady state), the
daemon stopped cleanly. The last line is "... N passed, M failed".
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import chaos  # noqa: E402
import check  # noqa: E402

MiB = 1024 * 1024


def proc_status(pid):
    """VmRSS and VmHWM of pid in bytes."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def cpu_seconds(pid):
    """User + system CPU time of pid so far."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            f = f.read().rpartition(")")[2].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def count_sockets(pid):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            if os.readlink("/proc/%d/fd/%s" % (pid, fd)).startswith(
                    "socket:"):
                n += 1
        except OSError:
            pass
    return n


def uses_asan(pid):
    try:
        with open("/proc/%d/maps" % pid) as f:
            return "libasan" in f.read()
    except OSError:
        return False


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--resources", type=int, default=100)
    ap.add_argument("--threads", type=int, default=4,
                    help="client threads (arb_release blocks a thread for "
                    "one round trip, so a few keep the daemon busy)")
    # README, "Memory per connection": an idle connection costs about
    # 1 KiB in the daemon, each lease or waiting request 192 bytes; every
    # connection here holds or waits for one lease.
    ap.add_argument("--conn-bytes", type=float, default=1024 + 192,
                    help="the README's daemon memory per connection with "
                    "one lease or waiter (default 1216 bytes)")
    ap.add_argument("--margin", type=float, default=2,
                    help="peak RSS may exceed the idle RSS by at most "
                    "conns * --conn-bytes * --margin (default 2: "
                    "allocator slack and the buffers of bursts)")
    ap.add_argument("--max-rss-mib", type=float, default=None,
                    help="a fixed peak RSS bound instead of the one from "
                    "the per-connection figure")
    ap.add_argument("--max-growth-mib", type=float, default=1,
                    help="fail when RSS grows more than this during the "
                    "steady state (after the first quarter of the run); "
                    "a leak of 8 bytes per acquire/release already grows "
                    "it by more in 10 s")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    build = chaos.BUILD
    arbiterd = os.path.join(build, "arbiterd")
    loadbin = os.path.join(build, "chaos", "chaos_load")
    for b in (arbiterd, loadbin):
        if not os.access(b, os.X_OK):
            sys.exit("load: %s is missing: run make load" % b)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < a.conns + 100:
        sys.exit("load: the hard open-file limit (%d) is below %d "
                 "connections + slack" % (hard, a.conns))
    work = tempfile.mkdtemp(prefix="arbiter-load-")
    sock = os.path.join(work, "arbiter.sock")
    print("load: %d connections, %d resources, %.0f s, %d client threads, "
          "fd limit %d, folder %s" % (a.conns, a.resources, a.duration,
                                      a.threads, hard, work), flush=True)
    d = chaos.Daemon(arbiterd, sock, os.path.join(work, "data"),
                     os.path.join(work, "arbiterd.log"),
                     ["-o", "log.level=info",
                      "-o", "limits.max_connections=%d" % max(
                          20000, a.conns + 100)],
                     preexec=raise_nofile)
    load = None
    results = {}
    problems = {}
    samples = []  # (t, rss)
    sampling = threading.Event()
    connected = held = rss_held = idle = hwm = final_rss = 0
    load_rc, t_go, t_end, cpu, asan = None, 0, 0, 0.0, False
    try:
        d.wait_ready()
        idle = proc_status(d.pid).get("VmRSS", 0)
        idle_sockets = count_sockets(d.pid)  # the listener
        asan = uses_asan(d.pid)

        def sample():
            while not sampling.is_set():
                st = proc_status(d.pid)
                if "VmRSS" in st:
                    samples.append((time.monotonic(), st["VmRSS"]))
                sampling.wait(0.25)

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        t_conn = time.monotonic()
        load = subprocess.Popen([loadbin, "-S", sock, "-c", str(a.conns),
                                 "-r", str(a.resources), "-d",
                                 str(a.duration), "-t", str(a.threads)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, preexec_fn=raise_nofile)
        first = load.stdout.readline().split()
        connected = int(first[1]) if first[:1] == ["connected"] else 0
        t_up = time.monotonic() - t_conn
        held = count_sockets(d.pid) - idle_sockets \
            if d.proc.poll() is None else 0
        rss_held = proc_status(d.pid).get("VmRSS", 0)
        print("load: %d connections up in %.1f s; the daemon holds %d "
              "sockets, RSS %.1f MiB (idle %.1f MiB)" % (
                  connected, t_up, held, rss_held / MiB, idle / MiB),
              flush=True)
        t_go = time.monotonic()
        cpu0 = cpu_seconds(d.pid)
        load.stdin.write("go\n")
        load.stdin.close()
        for line in load.stdout:
            k, _, v = line.strip().partition(" ")
            results[k] = float(v) if "." in v else int(v)
        load_rc = load.wait(a.duration + 300)
        t_end = time.monotonic()
        cpu = cpu_seconds(d.pid) - cpu0
        sampling.set()
        t.join()
        st = proc_status(d.pid)
        hwm = st.get("VmHWM", 0)
        final_rss = st.get("VmRSS", 0)
    finally:
        sampling.set()
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
        rc = d.stop()
        d.kill9()

    # Steady state: after a quarter of the run, RSS should not grow.
    steady = [r for (ts, r) in samples
              if t_go + (t_end - t_go) / 4 <= ts <= t_end]
    growth = (max(steady) - steady[0]) if steady else 0
    run = [(ts - t_go, r) for (ts, r) in samples if t_go <= ts <= t_end]
    if run:
        step = max(1, len(run) // 8)
        print("load: daemon RSS during the run: " + ", ".join(
            "%.0fs %.1f MiB" % (ts, r / MiB) for ts, r in run[::step] +
            [run[-1]]))

    problems["all connections up"] = [] if connected == a.conns else [
        "only %d of %d connections came up" % (connected, a.conns)]
    problems["daemon held them all"] = [] if held >= a.conns else [
        "the daemon had %d sockets open, fewer than %d" % (held, a.conns)]
    errs = []
    if load_rc != 0 or results.get("errors", 1) != 0:
        errs.append("chaos_load exited %s with %s errors (see above)" % (
            load_rc, results.get("errors")))
    problems["zero errors"] = errs
    problems["every connection progressed"] = [] if results.get(
        "min_ops_per_conn", 0) > 0 else [
        "some connection never got a grant (min ops %s)"
        % results.get("min_ops_per_conn")]
    mem = []
    if a.max_rss_mib is not None:
        bound = a.max_rss_mib * MiB
        why = "--max-rss-mib"
    else:
        bound = idle + a.conns * a.conn_bytes * a.margin
        why = ("idle %.1f MiB + %d connections x %.0f bytes (README) x "
               "%.1f" % (idle / MiB, a.conns, a.conn_bytes, a.margin))
    print("load: peak RSS bound %.1f MiB (%s)" % (bound / MiB, why))
    if hwm > bound:
        mem.append("peak RSS %.1f MiB over %.1f MiB (%s): %.0f bytes per "
                   "connection above idle" % (
                       hwm / MiB, bound / MiB, why,
                       (hwm - idle) / max(a.conns, 1)))
    if growth > a.max_growth_mib * MiB:
        mem.append("RSS grew %.1f MiB during the steady state" % (
            growth / MiB))
    if asan:
        # ASan keeps freed memory in its quarantine (256 MiB by default):
        # RSS says nothing about leaks there (LeakSanitizer does).
        print("load: memory not judged: the daemon is an ASan build")
        mem = []
    problems["bounded memory"] = mem
    proc = [] if rc == 0 else ["arbiterd exited %s on SIGTERM" % rc]
    proc += ["arbiterd: " + m.strip() for m in d.marks]
    problems["daemon clean exit"] = proc

    res = check.Result(sys.stdout)
    for name, p in problems.items():
        res.report(name, p)
    print("load: %d connections held, %d ops in %.0f s (%s ops/s), %s "
          "errors, ops per connection %s..%s, grant latency (mostly queueing "
          "behind the others on the resource) p50 <%.0f ms p99 <%.0f ms "
          "max %.0f ms; daemon RSS idle %.1f MiB, with the "
          "connections %.1f MiB, end %.1f MiB, peak (VmHWM) %.1f MiB, "
          "steady-state growth %.1f MiB; daemon CPU %.0f%% of one core" % (
              held, results.get("ops", 0), a.duration,
              results.get("ops_per_sec"), results.get("errors"),
              results.get("min_ops_per_conn"),
              results.get("max_ops_per_conn"),
              results.get("grant_p50_us", 0) / 1000,
              results.get("grant_p99_us", 0) / 1000,
              results.get("grant_max_us", 0) / 1000, idle / MiB, rss_held / MiB,
              final_rss / MiB, hwm / MiB, growth / MiB,
              100 * cpu / max(t_end - t_go, 1e-9)))
    print("load: %d connections, %d ops, %s errors, peak RSS %.1f MiB; "
          "%d passed, %d failed" % (held, results.get("ops", 0),
                                    results.get("errors"), hwm / MiB,
                                    res.passed, res.failed))
    if res.failed == 0 and not a.keep:
        shutil.rmtree(work, True)
    else:
        print("load: files kept in %s" % work, file=sys.stderr)
    sys.exit(0 if res.failed == 0 else 1)


if __name__ == "__main__":
    main()
