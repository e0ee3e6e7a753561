"""The multi-host chaos run (chaos.py --hosts N; see README.md).

A 3-member etcd on loopback (tests/cluster/etcdlib.py: Debian's etcd under
nice, data on tmpfs), N arbiterds in cluster mode as hosts -- each with its
own socket and storage folder, each reaching etcd only through its own TCP
proxy, so SIGSTOP on a proxy cuts that host off -- and chaos_worker
processes spread over the hosts, all on chaos-0..R-1, which are cluster-wide
(cluster.resources defaults to every name), and one shared counters folder.

Faults, one at a time, each at least 2 x TTL after the previous one healed,
drawn at random without repeats until every kind ran (then again):

  kill-worker     kill -9 a worker (and start another in its slot)
  kill-arbiterd   kill -9 a host's arbiterd, restart it at once
  stop-arbiterd   SIGSTOP a host's arbiterd for 1.5 x TTL, then SIGCONT
  partition       SIGSTOP a host's proxy for 1.5 x TTL
  kill-follower   kill -9 an etcd follower, restart it after TTL
  kill-leader     kill -9 the etcd leader, restart it after TTL
  stop-leader     SIGSTOP the etcd leader for 1.5 x TTL (--leader-pause)
  quorum-loss     kill -9 two members for 2 x TTL, then restart both

Before a fault on one host's arbiterd or proxy, that host's workers get
SIGUSR2 and the driver waits for one to start a long section (CHAOS_LONG_MS,
1.5 x TTL + 1 s): that holder then outlives its lease, and the checker sees
whether it was revoked, and fenced when another host's holder met it in the
storage. At the end every worker and arbiterd is stopped, the prefix is
ranged through etcd's JSON gateway (no key may be left), and check_cluster
judges the logs.
"""
import base64
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
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))
import chaos  # noqa: E402
import check  # noqa: E402
import etcdlib  # noqa: E402

FAULTS = chaos.FAULT_KINDS  # (the order of the table above)
TTL_MS, MARGIN_MS, ELECTION_MS, REQUEST_TIMEOUT_MS = 3000, 500, 1000, 300
WATCH = ("cluster session",)
SESSION_WAIT = 30  # s for "cluster session active" after "arbiter ready"


def b64(s):
    return base64.b64encode(s.encode()).decode()


def prefix_end(p):
    """etcd's range_end for every key starting with p."""
    return p[:-1] + chr(ord(p[-1]) + 1)


class EtcdRecorder(threading.Thread):
    """etcd's own history of the prefix, for explaining a violation: a
    watch on a live member (never through a host's proxy), resumed on the
    next member from the last revision seen. One line per event in
    etcd-events.log: "read_ns PUT|DELETE key create_rev mod_rev lease",
    read_ns being the CLOCK_MONOTONIC instant this thread read it; a DELETE
    gives the deleted key's create_rev and lease (prev_kv)."""

    def __init__(self, cluster, prefix, path):
        super().__init__(daemon=True)
        self.cluster, self.prefix, self.path = cluster, prefix, path
        self.rev = 0
        self.stopping = False
        self.count = 0

    def stream(self, m):
        body = {"create_request": {
            "key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix)),
            "start_revision": str(self.rev + 1), "prev_kv": True}}
        req = urllib.request.Request(m.url + "/v3/watch",
                                     data=json.dumps(body).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=2) as r, \
                open(self.path, "a") as out:
            for line in r:
                if self.stopping:
                    return
                res = json.loads(line).get("result", {})
                for ev in res.get("events", []):
                    kv = ev.get("kv", {})
                    old = ev.get("prev_kv", {})
                    kind = ev.get("type", "PUT")
                    src = old if kind == "DELETE" else kv
                    mod = int(kv.get("mod_revision", 0))
                    out.write("%d %s %s %s %d %s\n" % (
                        chaos.mono_ns(), kind, base64.b64decode(
                            kv.get("key", "")).decode("utf-8", "replace"),
                        src.get("create_revision", "0"), mod,
                        src.get("lease", "0")))
                    self.rev = max(self.rev, mod)
                    self.count += 1
                out.flush()

    def run(self):
        while not self.stopping:
            for m in self.cluster.members:
                if self.stopping:
                    return
                if not m.alive() or m.stopped:
                    continue
                try:
                    self.stream(m)
                except (OSError, ValueError):
                    pass  # a silent or dead member: the next one
            time.sleep(0.1)


class Host:
    """One host: its arbiterd incarnations, socket, storage and proxy."""

    def __init__(self, i, work, proxy):
        self.id = "host-%d" % i
        self.dir = os.path.join(work, self.id)
        self.sock = os.path.join(self.dir, "arbiter.sock")
        self.storage = os.path.join(self.dir, "data")
        os.makedirs(self.storage, exist_ok=True)
        self.proxy = proxy
        self.daemons = []
        self.pauses = {}  # daemon pid -> [[stop_ns, cont_ns]]

    @property
    def daemon(self):
        return self.daemons[-1]


class Run:
    def __init__(self, a, out, binary, worker_bin, work, rng):
        self.a, self.out, self.rng = a, out, rng
        self.binary, self.worker_bin, self.work = binary, worker_bin, work
        self.counters = os.path.join(work, "counters")
        self.logs = os.path.join(work, "logs")
        for d in (self.counters, self.logs):
            os.makedirs(d, exist_ok=True)
        self.prefix = "chaos-%d-%d/" % (os.getpid(), rng.randrange(1 << 30))
        self.workers = {}
        self.worker_runs = []
        self.killed = []
        self.failures = []
        self.faults = []
        self.gen = 0
        self.t_start = chaos.mono_ns()
        self.long_ms = TTL_MS * 3 // 2 + 1000
        env = dict(os.environ)
        env.pop("CHAOS_BREAK", None)
        if a.brk:
            env["CHAOS_BREAK"] = a.brk
        env["CHAOS_LONG_MS"] = str(self.long_ms)
        self.wenv = env

    # ------------------------------------------------------------ processes

    def start_daemon(self, h):
        n = len(h.daemons)
        args = ["-o", "log.level=info",
                "-o", "cluster.backend=etcd",
                "-o", "cluster.endpoints=" + h.proxy.endpoints(),
                "-o", "cluster.host_id=" + h.id,
                "-o", "cluster.prefix=" + self.prefix,
                "-o", "cluster.session_ttl_ms=%d" % TTL_MS,
                "-o", "cluster.safety_margin_ms=%d" % MARGIN_MS,
                "-o", "cluster.request_timeout_ms=%d" % REQUEST_TIMEOUT_MS,
                ] + self.a.daemon_arg
        d = chaos.Daemon(self.binary, h.sock, h.storage,
                         os.path.join(self.logs, "arbiterd-%s-%d.log" % (
                             h.id, n)), args, watch=WATCH)
        d.host = h
        h.daemons.append(d)
        h.pauses[d.pid] = []
        d.wait_ready()
        t = d.wait_line("cluster session active", d.start_ns,
                        SESSION_WAIT)
        if t is None:
            self.failures.append("%s's arbiterd pid %d: no \"cluster "
                                 "session active\" within %d s (log %s)" % (
                                     h.id, d.pid, SESSION_WAIT, d.logpath))
        return t

    def start_worker(self, slot):
        self.gen += 1
        h = self.hosts[slot % len(self.hosts)]
        logpath = os.path.join(self.logs, "w%02d-%05d.log" % (slot,
                                                              self.gen))
        env = dict(self.wenv, CHAOS_CONVERTER="1" if slot % 4 == 0 else "0")
        p = subprocess.Popen([self.worker_bin, h.sock, self.counters,
                              logpath, str(self.rng.randrange(1 << 62)),
                              str(self.a.resources)],
                             stdin=subprocess.DEVNULL, env=env)
        p.logpath, p.host = logpath, h
        self.workers[slot] = p
        self.worker_runs.append({"slot": slot, "pid": p.pid, "log": logpath,
                                 "host": h.id, "proc": p})

    def tend(self):
        """Replace workers and daemons that died by themselves."""
        for slot, p in list(self.workers.items()):
            if p.poll() is not None:
                self.failures.append("worker pid %d (slot %d) exited by "
                                     "itself with status %s" % (
                                         p.pid, slot, p.returncode))
                self.start_worker(slot)
        for h in self.hosts:
            d = h.daemon
            if d.kill_ns is None and d.proc.poll() is not None:
                self.failures.append("%s's arbiterd pid %d died by itself "
                                     "(status %s)" % (h.id, d.pid,
                                                      d.proc.returncode))
                d.kill9()
                self.start_daemon(h)

    def idle(self, seconds):
        end = time.monotonic() + seconds
        while True:
            self.tend()
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.02, left))

    def long_holders(self, h):
        """SIGUSR2 to h's workers; True once one of them runs a long
        section (its P line), re-signalling while none does (h may hold no
        key right now), for at most 3 s."""
        sizes = {}
        for p in self.workers.values():
            if p.host is h and p.poll() is None and \
                    os.path.exists(p.logpath):
                sizes[p] = os.path.getsize(p.logpath)
        end = time.monotonic() + 3
        next_sig = 0
        while time.monotonic() < end:
            if time.monotonic() >= next_sig:
                for p in sizes:
                    if p.poll() is None:
                        p.send_signal(signal.SIGUSR2)
                next_sig = time.monotonic() + 0.4
            for p, n in sizes.items():
                with open(p.logpath, "rb") as f:
                    f.seek(n)
                    if b"\nP " in b"\n" + f.read():
                        return True
            time.sleep(0.01)
        return False

    # --------------------------------------------------------------- faults

    def fault(self, kind):
        a = self.rng
        ttl = TTL_MS / 1000.0
        f = {"kind": kind, "t_ns": None, "heal_ns": None}
        if kind == "kill-worker":
            slot = a.randrange(len(self.workers))
            p = self.workers[slot]
            f["host"] = p.host.id
            f["t_ns"] = chaos.mono_ns()
            if p.poll() is None:
                p.kill()
                p.wait()
                self.killed.append(p.pid)
            self.start_worker(slot)
            f["heal_ns"] = f["t_ns"]
            f["note"] = "worker pid %d" % p.pid
        elif kind in ("kill-arbiterd", "stop-arbiterd", "partition"):
            h = a.choice(self.hosts)
            f["host"] = h.id
            f["long"] = self.long_holders(h)
            d = h.daemon
            if kind == "kill-arbiterd":
                d.kill9()
                f["t_ns"] = d.kill_ns
                f["heal_ns"] = self.start_daemon(h)
                f["note"] = "pid %d, restarted as %d" % (d.pid, h.daemon.pid)
            elif kind == "stop-arbiterd":
                d.proc.send_signal(signal.SIGSTOP)
                f["t_ns"] = chaos.mono_ns()
                h.pauses[d.pid].append([f["t_ns"], None])
                self.idle(1.5 * ttl)
                d.proc.send_signal(signal.SIGCONT)
                f["heal_ns"] = h.pauses[d.pid][-1][1] = chaos.mono_ns()
                f["note"] = "pid %d" % d.pid
            else:
                h.proxy.pause()
                f["t_ns"] = chaos.mono_ns()
                self.idle(1.5 * ttl)
                h.proxy.resume()
                f["heal_ns"] = chaos.mono_ns()
        elif kind in ("kill-follower", "kill-leader"):
            m = (self.cluster.leader() if kind == "kill-leader"
                 else a.choice(self.cluster.followers()))
            f["member"] = m.name
            m.kill9()
            f["t_ns"] = chaos.mono_ns()
            self.idle(ttl)
            m.start(state="existing")
            m.wait_ready()
            f["heal_ns"] = chaos.mono_ns()
        elif kind == "stop-leader":
            m = self.cluster.leader()
            f["member"] = m.name
            m.sigstop()
            f["t_ns"] = chaos.mono_ns()
            self.idle(getattr(self.a, "leader_pause", 1.5) * ttl)
            m.sigcont()
            f["heal_ns"] = chaos.mono_ns()
        elif kind == "quorum-loss":
            ms = a.sample(self.cluster.members, 2)
            f["member"] = "+".join(m.name for m in ms)
            for m in ms:
                m.kill9()
            f["t_ns"] = chaos.mono_ns()
            self.idle(2 * ttl)
            for m in ms:
                m.start(state="existing")
            for m in ms:
                m.wait_ready()
            f["heal_ns"] = chaos.mono_ns()
        else:
            raise ValueError(kind)
        self.faults.append(f)
        print("chaos: %6.2f s: %-14s %-8s healed after %s%s" % (
            (f["t_ns"] - self.t_start) / 1e9, kind,
            f.get("host") or f.get("member"),
            "%.2f s" % ((f["heal_ns"] - f["t_ns"]) / 1e9)
            if f["heal_ns"] else "(never)",
            "" if f.get("long", True) else
            " (no long holder started on that host)"),
            file=self.out, flush=True)

    # ----------------------------------------------------------------- run

    def keys_left(self):
        """Keys under the prefix, ranged at a live member; None on error."""
        body = {"key": b64(self.prefix),
                "range_end": b64(prefix_end(self.prefix)),
                "keys_only": True}
        err = None
        for m in self.cluster.members:
            try:
                r = etcdlib.http(m.url + "/v3/kv/range", body, 5.0)
                return [base64.b64decode(k["key"]).decode("utf-8",
                                                          "replace")
                        for k in r.get("kvs", [])], None
            except OSError as e:
                err = "%s: %s" % (m.url, e)
        return None, err

    def main(self):
        a = self.a
        kinds = list(a.faults or FAULTS)
        self.cluster = etcdlib.Cluster(n=3, election_ms=ELECTION_MS)
        final = {}
        try:
            self.cluster.start()
            if a.etcd_events:
                self.recorder = EtcdRecorder(
                    self.cluster, self.prefix,
                    os.path.join(self.work, "etcd-events.log"))
                self.recorder.start()
            self.hosts = [Host(i, self.work, self.cluster.proxy())
                          for i in range(a.hosts)]
            for h in self.hosts:
                self.start_daemon(h)
            self.t_start = chaos.mono_ns()
            for s in range(a.workers):
                self.start_worker(s)
            end = time.monotonic() + a.duration
            bag = []
            self.idle(TTL_MS / 1000.0)
            # A fault, then 2 x TTL of quiet; none that would not heal
            # before the end.
            while time.monotonic() + 3 * TTL_MS / 1000.0 < end:
                if not bag:
                    bag = list(kinds)
                    self.rng.shuffle(bag)
                self.fault(bag.pop())
                self.cluster.wait_healthy()
                self.idle(min(2 * TTL_MS / 1000.0,
                              max(0.0, end - time.monotonic())))
            self.idle(max(0.0, end - time.monotonic()))
        finally:
            self.t_end = chaos.mono_ns()
            for p in self.workers.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for p in self.workers.values():
                try:
                    p.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    self.killed.append(p.pid)
            for r in self.worker_runs:
                if r["proc"].poll() is None:
                    r["proc"].kill()
                    r["proc"].wait()
            for h in getattr(self, "hosts", []):
                if h.proxy.stopped:
                    h.proxy.resume()
                for d in h.daemons[:-1]:
                    d.kill9()
                if h.daemons:
                    final[h.daemon.pid] = h.daemon.stop()
            for m in self.cluster.members:
                if m.stopped:
                    m.sigcont()
            try:
                keys, err = self.keys_left()
            except Exception as e:  # the record must still be written
                keys, err = None, repr(e)
            if getattr(self, "recorder", None):
                self.recorder.stopping = True
                self.recorder.join(5)
            self.cluster.stop()
        daemons = []
        for h in self.hosts:
            for d in h.daemons:
                r = d.record()
                r["host"] = h.id
                r["pauses"] = h.pauses[d.pid]
                r["final"] = d.pid in final
                daemons.append(r)
        return {
            "hosts": [h.id for h in self.hosts], "seed": a.seed_used,
            "duration": a.duration, "workers": a.workers,
            "resources": a.resources, "counters": self.counters,
            "break": a.brk, "daemons": daemons,
            "worker_runs": [{k: v for k, v in r.items() if k != "proc"}
                            for r in self.worker_runs],
            "killed": self.killed, "driver_failures": self.failures,
            "faults": self.faults, "ttl_ms": TTL_MS, "margin_ms": MARGIN_MS,
            "election_ms": ELECTION_MS, "prefix": self.prefix,
            "etcd_keys_left": keys, "etcd_error": err,
            "t_start_ns": self.t_start, "t_end_ns": self.t_end,
            "daemon_binary": self.binary,
        }


def run_cluster(a, out):
    """One multi-host run; True when every check passed."""
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(
        1 << 31)
    a.seed_used = seed
    rng = random.Random(seed)
    binary = a.arbiterd or os.path.join(chaos.BUILD, "arbiterd")
    worker_bin = os.path.join(chaos.BUILD, "chaos", "chaos_worker")
    for b in (binary, worker_bin):
        if not os.access(b, os.X_OK):
            sys.exit("chaos: %s is missing: run make chaos HOSTS=3" % b)
    if not etcdlib.have_etcd():
        sys.exit("chaos: %s is missing: sh scripts/deps.sh test installs "
                 "Debian's etcd-server" % etcdlib.ETCD)
    work = a.dir or tempfile.mkdtemp(prefix="arbiter-chaos-")
    os.makedirs(work, exist_ok=True)
    print("chaos: %d hosts, %d workers, %d resources, %.0f s, TTL %d ms, "
          "margin %d ms, faults %s, seed %d, folder %s%s%s" % (
              a.hosts, a.workers, a.resources, a.duration, TTL_MS, MARGIN_MS,
              ",".join(a.faults or FAULTS), seed, work,
              ", BROKEN: " + a.brk if a.brk else "",
              ", daemon " + binary if a.arbiterd else ""),
          file=out, flush=True)
    r = Run(a, out, binary, worker_bin, work, rng)
    run = r.main()
    with open(os.path.join(work, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    ok = check.check(run, out=out)
    # A planted defect (a self-test) is meant to fail: nothing to keep.
    planted = a.brk or getattr(a, "planted", False)
    if (ok or planted) and not a.keep and not a.dir:
        shutil.rmtree(work, True)
    elif not ok:
        print("chaos: logs kept in %s" % work, file=sys.stderr)
    return ok
