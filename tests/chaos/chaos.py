#!/usr/bin/python3
"""Chaos driver for the mutual-exclusion checker (see README.md).

    chaos.py [--duration SECS] [--workers N] [--resources R] [--restarts K]
    chaos.py --hosts N [--duration SECS] [--workers N] [--faults K,K...]

Starts arbiterd in a temporary folder, waits for its "arbiter ready" line,
starts N chaos_worker processes, and for the duration SIGKILLs random
workers (respawning them) and kill -9s + restarts the daemon K times. Then it
stops every process it started and runs the checker (check.py) over the
logs; the exit status is the checker's. Python 3 standard library only.
With --hosts N it runs N arbiterds in cluster mode on a 3-member etcd
instead, with faults of hosts and of etcd (chaos_cluster.py).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check  # noqa: E402

BUILD = os.path.abspath(os.environ.get("ARBITER_BUILD") or
                        os.path.join(HERE, "..", "..", "build"))
READY_TIMEOUT = 30


def die_with_parent():
    """preexec_fn: SIGKILL this child when the driver dies."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG


def mono_ns():
    return time.monotonic_ns()  # CLOCK_MONOTONIC, as the workers use


class Daemon:
    """One arbiterd incarnation; its stderr is copied to a file by a thread
    that also notices the readiness line."""

    def __init__(self, binary, sock, storage, logpath, args=(), preexec=None,
                 watch=()):
        self.logpath = logpath
        self.ready = threading.Event()
        # Lines holding one of the watch needles, with the CLOCK_MONOTONIC
        # instant the copier read them: [(ns, line)]; wait_line waits.
        self.watch = tuple(w.encode() for w in watch)
        self.events = []
        self.cond = threading.Condition()
        self.eof = False
        self.lines = 0
        self.marks = []
        self.levels = {}    # level -> count of lines
        self.notable = []   # first warn/error lines
        self.start_ns = mono_ns()
        cmd = [binary, "-S", sock, "-s", storage] + list(args)
        env = dict(os.environ)
        env.pop("ARBITER_SOCKET", None)

        def pre():
            die_with_parent()
            if preexec:
                preexec()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env,
                                     preexec_fn=pre)
        self.pid = self.proc.pid
        self.thread = threading.Thread(target=self._copy, daemon=True)
        self.thread.start()
        self.ready_ns = None
        self.kill_ns = None

    def _copy(self):
        with open(self.logpath, "wb") as out:
            for line in self.proc.stderr:
                out.write(line)
                self.lines += 1
                if not self.ready.is_set() and b"arbiter ready" in line:
                    self.ready.set()
                if any(w in line for w in self.watch):
                    with self.cond:
                        self.events.append((mono_ns(), line.decode(
                            "utf-8", "replace").rstrip("\n")))
                        self.cond.notify_all()
                text = line.decode("utf-8", "replace")
                if check.is_report(text):
                    self.marks.append(text)
                i = line.find(b"level=")
                if i >= 0:
                    lv = line[i + 6:].split(b" ", 1)[0].decode("ascii",
                                                               "replace")
                    self.levels[lv] = self.levels.get(lv, 0) + 1
                    if lv in ("warn", "error") and len(self.notable) < 10:
                        self.notable.append(line.decode("utf-8", "replace"))
        self.ready.set()  # wake a waiter if the daemon died first
        with self.cond:
            self.eof = True
            self.cond.notify_all()

    def wait_line(self, needle, after=0, timeout=READY_TIMEOUT):
        """The instant of the first watched line holding needle read at or
        after `after` (CLOCK_MONOTONIC ns); None if the daemon ended or
        the timeout passed first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, l in self.events:
                    if t >= after and needle in l:
                        return t
                left = deadline - time.monotonic()
                if self.eof or left <= 0:
                    return None
                self.cond.wait(left)

    def wait_ready(self, timeout=READY_TIMEOUT):
        if not self.ready.wait(timeout) or self.proc.poll() is not None:
            self.kill9()
            with open(self.logpath, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            raise RuntimeError("arbiterd (pid %d) not ready within %ds:\n%s"
                               % (self.pid, timeout, tail))
        self.ready_ns = mono_ns()

    def kill9(self):
        if self.proc.poll() is None:
            self.kill_ns = mono_ns()
            self.proc.kill()
        self.proc.wait()
        self.thread.join(5)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.kill_ns = mono_ns()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        return self.proc.returncode

    def record(self):
        return {"pid": self.pid, "start_ns": self.start_ns,
                "ready_ns": self.ready_ns, "kill_ns": self.kill_ns,
                "exit": self.proc.returncode, "log": self.logpath,
                "sanitizer": self.marks, "levels": self.levels,
                "notable": self.notable, "events": self.events}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--resources", type=int, default=3)
    ap.add_argument("--restarts", type=int, default=3,
                    help="daemon kill -9 + restarts, evenly spread "
                         "(default 3: every duration/4)")
    ap.add_argument("--kill-every", type=float, default=0.5,
                    help="mean seconds between worker SIGKILLs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", help="work folder (default: a temporary one, "
                    "removed after a passing run)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder even when the run passes")
    ap.add_argument("--daemon-arg", action="append", default=[],
                    help="extra arbiterd argument (repeatable)")
    ap.add_argument("--break", dest="brk", choices=("nolock", "nofence", "nolock,nofence",
                                            "noconvert"),
                    help="break the workers on purpose (CHAOS_BREAK): the "
                    "checker must then fail")
    ap.add_argument("--self-test", action="store_true",
                    help="prove the checker catches a lock that does not "
                    "exclude (--break nolock alone) and storage that does "
                    "not fence (--break nofence alone), and converters that "
                    "let go between read and write (--break noconvert): "
                    "each short run must "
                    "fail on the checks that guard it")
    ap.add_argument("--hosts", type=int, default=0,
                    help="N arbiterds in cluster mode on a 3-member etcd "
                    "(chaos_cluster.py); 0: one daemon, no etcd")
    ap.add_argument("--faults", type=lambda v: v.split(","),
                    help="with --hosts: the fault kinds to draw from "
                    "(default all: %s)" % ",".join(FAULT_KINDS))
    ap.add_argument("--leader-pause", type=float, default=1.5,
                    help="with --hosts: how long stop-leader stops the etcd "
                    "leader, in TTLs (default 1.5). Under half a TTL no "
                    "lease looks expired to the resumed old leader, which "
                    "on etcd before 3.5.13 could revoke them (etcd issue "
                    "15247)")
    ap.add_argument("--arbiterd", help="with --hosts: the daemon binary "
                    "(default ARBITER_BUILD's)")
    ap.add_argument("--etcd-events", action="store_true",
                    help="with --hosts: record etcd's events under the "
                    "run's prefix in WORKDIR/etcd-events.log (a watch on a "
                    "live member), to explain a violation")
    ap.add_argument("--norevoke-daemon",
                    help="with --hosts --self-test: a daemon built with "
                    "-DARBITER_SELFTEST_NOREVOKE")
    a = ap.parse_args()
    for k in a.faults or ():
        if k not in FAULT_KINDS:
            ap.error("unknown fault %r: one of %s" % (k, ", ".join(
                FAULT_KINDS)))
    if a.self_test and a.hosts:
        cluster_self_test(a)
    if a.self_test:
        self_test(a)
    if a.hosts:
        import chaos_cluster
        ok = chaos_cluster.run_cluster(a, sys.stdout)
    else:
        ok = run_chaos(a, sys.stdout)
    sys.exit(0 if ok else 1)


# A planted defect shows only when the faults happen to hit it (a slow
# holder still writing when a newer one starts, say): a self-test that saw
# no violation runs again, up to this many times in all, before it fails.
SELF_TEST_TRIES = 3


# Each planted defect alone, and the checks that must catch it. nolock:
# nothing excludes, so exclusion fails. nofence: the lock works but the
# storage ignores tokens, so only the slow holders that outlive a daemon
# kill -9 can break anything, and the journal / no-lost-update checks must
# see it (more restarts make sure some writes land late). noconvert: the
# converting workers let go between their read and their write, so another
# writer gets in and an update is lost.
SELF_TESTS = [
    ("nolock", 6, 1, ("exclusion",)),
    ("nofence", 12, 4, ("journal", "no-lost-update")),
    ("noconvert", 6, 1, ("journal", "no-lost-update")),
]


# The cluster self-tests (--hosts N --self-test): a daemon that skips the
# revoke at the deadline must fail revoke-before-move or exclusion; storage
# that ignores tokens must break the journal across hosts too. Each runs
# only the faults that can show its defect: holders outliving their lease.
FAULT_KINDS = ("kill-worker", "kill-arbiterd", "stop-arbiterd", "partition",
               "kill-follower", "kill-leader", "stop-leader", "quorum-loss")
CLUSTER_SELF_TESTS = [
    ("norevoke", None, 23, ("stop-arbiterd", "partition"),
     ("p4 revoke-before-move", "p1 exclusion")),
    ("nofence", "nofence", 23, ("kill-arbiterd", "stop-arbiterd"),
     ("journal", "no-lost-update")),
]


def planted_run(name, must, run):
    """Run a planted defect (run(out) -> passed) until the checker reports
    one of the must checks, SELF_TEST_TRIES runs at most: (caught, the
    last run's output)."""
    import io
    for attempt in range(1, SELF_TEST_TRIES + 1):
        buf = io.StringIO()
        ok = run(buf)
        caught = [l for l in buf.getvalue().splitlines()
                  if l.startswith("FAIL")]
        for l in caught:
            print("self-test %s caught:%s" % (name, l[4:]))
        if not ok and any(m in l for l in caught for m in must):
            return True, buf
        if attempt < SELF_TEST_TRIES:
            print("chaos self-test %s: no violation in run %d of %d (the "
                  "faults missed the defect); again" % (
                      name, attempt, SELF_TEST_TRIES))
    return False, buf


def cluster_self_test(a):
    import chaos_cluster
    passed = failed = 0
    for name, brk, duration, faults, must in CLUSTER_SELF_TESTS:
        a.brk, a.duration, a.faults = brk, duration, list(faults)
        a.keep, a.dir = False, None
        a.arbiterd = None
        if name == "norevoke":
            if not a.norevoke_daemon:
                sys.exit("chaos: --self-test --hosts needs "
                         "--norevoke-daemon (make chaos-cluster-selftest "
                         "builds one)")
            a.arbiterd = a.norevoke_daemon
        a.planted = True
        good, buf = planted_run(name, must,
                                lambda out: chaos_cluster.run_cluster(a, out))
        if good:
            passed += 1
        else:
            failed += 1
            print(buf.getvalue())
        print("chaos self-test %s (%d hosts): the checker %s (%s)" % (
            name, a.hosts, "reported the violations" if good else
            "MISSED them", " or ".join(must)))
    print("chaos cluster self-test: %d passed, %d failed" % (passed, failed))
    sys.exit(0 if failed == 0 else 1)


def self_test(a):
    passed = failed = 0
    for brk, duration, restarts, must in SELF_TESTS:
        a.brk, a.duration, a.restarts = brk, duration, restarts
        a.keep, a.dir = False, None
        good, buf = planted_run(brk, must, lambda out: run_chaos(a, out))
        if good:
            passed += 1
        else:
            failed += 1
            print(buf.getvalue())
        print("chaos self-test %s: the checker %s (%s)" % (
            brk, "reported the violations" if good else "MISSED them",
            " or ".join(must)))
    print("chaos self-test: %d passed, %d failed" % (passed, failed))
    sys.exit(0 if failed == 0 else 1)


def run_chaos(a, out):

    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(
        1 << 31)
    rng = random.Random(seed)
    arbiterd = os.path.join(BUILD, "arbiterd")
    worker_bin = os.path.join(BUILD, "chaos", "chaos_worker")
    for b in (arbiterd, worker_bin):
        if not os.access(b, os.X_OK):
            sys.exit("chaos: %s is missing: run make chaos (or make "
                     "BUILD=... with ARBITER_BUILD set)" % b)
    work = a.dir or tempfile.mkdtemp(prefix="arbiter-chaos-")
    os.makedirs(work, exist_ok=True)
    sock = os.path.join(work, "arbiter.sock")
    storage = os.path.join(work, "data")
    counters = os.path.join(work, "counters")
    logs = os.path.join(work, "logs")
    for d in (storage, counters, logs):
        os.makedirs(d, exist_ok=True)
    print("chaos: %d workers, %d resources, %.0f s, %d daemon restarts, "
          "seed %d, folder %s%s" % (a.workers, a.resources, a.duration,
                                    a.restarts, seed, work,
                                    ", BROKEN: " + a.brk if a.brk else ""),
          file=out, flush=True)
    wenv = dict(os.environ)
    wenv.pop("CHAOS_BREAK", None)
    if a.brk:
        wenv["CHAOS_BREAK"] = a.brk

    # log.level=info: "arbiter ready" is an info line (warn would hide it).
    dargs = ["-o", "log.level=info"] + a.daemon_arg
    daemons = []
    workers = {}          # slot -> Popen
    worker_runs = []      # every worker process started
    killed = []           # pids we SIGKILLed
    gen = [0]

    def start_daemon():
        n = len(daemons)
        d = Daemon(arbiterd, sock, storage,
                   os.path.join(logs, "arbiterd-%d.log" % n), dargs)
        daemons.append(d)
        d.wait_ready()
        return d

    def start_worker(slot):
        gen[0] += 1
        logpath = os.path.join(logs, "w%02d-%05d.log" % (slot, gen[0]))
        # Every fourth worker reads, upgrades and writes (see chaos_worker).
        env = dict(wenv, CHAOS_CONVERTER="1" if slot % 4 == 0 else "0")
        p = subprocess.Popen([worker_bin, sock, counters, logpath,
                              str(rng.randrange(1 << 62)), str(a.resources)],
                             stdin=subprocess.DEVNULL, env=env)
        p.logpath = logpath
        workers[slot] = p
        worker_runs.append({"slot": slot, "pid": p.pid, "log": logpath,
                            "proc": p})

    failures = []
    t_start = time.monotonic()
    try:
        start_daemon()
        for s in range(a.workers):
            start_worker(s)
        restarts_at = [t_start + a.duration * (k + 1) / (a.restarts + 1)
                       for k in range(a.restarts)]
        end = t_start + a.duration
        next_kill = time.monotonic() + rng.uniform(0, 2 * a.kill_every)
        next_report = time.monotonic() + 10
        while True:
            now = time.monotonic()
            if now >= end:
                break
            for slot, p in list(workers.items()):
                if p.poll() is not None:
                    failures.append("worker pid %d (slot %d) exited by itself "
                                    "with status %s" % (p.pid, slot,
                                                        p.returncode))
                    start_worker(slot)
            if daemons[-1].proc.poll() is not None:
                failures.append("arbiterd pid %d died by itself (status %s)"
                                % (daemons[-1].pid,
                                   daemons[-1].proc.returncode))
                start_daemon()
            if restarts_at and now >= restarts_at[0]:
                restarts_at.pop(0)
                # Make the sections running now slow (SIGUSR1), so holders
                # granted by this incarnation are still writing when the
                # next one grants the same resources: the fence must stop
                # them.
                # (Only to workers whose log exists: they open it after
                # installing their handler; SIGUSR1 would kill one that is
                # still starting.)
                for p in workers.values():
                    if p.poll() is None and os.path.exists(p.logpath):
                        p.send_signal(signal.SIGUSR1)
                time.sleep(0.03)
                daemons[-1].kill9()
                start_daemon()
                print("chaos: %4.0f s: daemon kill -9, restarted as pid %d"
                      % (now - t_start, daemons[-1].pid), file=out,
                      flush=True)
            if now >= next_kill:
                slot = rng.randrange(a.workers)
                p = workers[slot]
                if p.poll() is None:
                    p.kill()
                    p.wait()
                    killed.append(p.pid)
                start_worker(slot)
                next_kill = now + rng.uniform(0, 2 * a.kill_every)
            if now >= next_report:
                print("chaos: %4.0f s: %d worker kills, %d daemon restarts"
                      % (now - t_start, len(killed), len(daemons) - 1),
                      file=out, flush=True)
                next_report = now + 10
            time.sleep(min(0.02, max(0.0, end - now)))
    finally:
        # Stop every process we started: workers first (they finish their
        # section and log it), then the daemon.
        for p in workers.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in workers.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                killed.append(p.pid)
        for r in worker_runs:
            if r["proc"].poll() is None:
                r["proc"].kill()
                r["proc"].wait()
        final_rc = daemons[-1].stop() if daemons else None
        for d in daemons:
            d.kill9()

    run = {
        "seed": seed, "duration": a.duration, "workers": a.workers,
        "resources": a.resources, "counters": counters, "break": a.brk,
        "daemons": [d.record() for d in daemons],
        "final_daemon_exit": final_rc,
        "worker_runs": [{k: v for k, v in r.items() if k != "proc"}
                        for r in worker_runs],
        "killed": killed, "driver_failures": failures,
    }
    with open(os.path.join(work, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    ok = check.check(run, out=out)
    if (ok or a.brk) and not a.keep and not a.dir:
        shutil.rmtree(work, True)
    elif not ok:
        print("chaos: logs kept in %s" % work, file=sys.stderr)
    return ok


if __name__ == "__main__":
    main()
