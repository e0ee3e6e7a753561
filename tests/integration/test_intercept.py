"""arbiterctl intercept and libarbiter-intercept.so: unmodified programs
whose own lock-file locks become leases.

The programs are the real locking code of the stores (intercept_worker.py:
qdrant-client's portalocker flock, LevelDB through plyvel, gdbm), run as
four instances at once: without the shim three fail, with it none fails,
their critical sections never overlap (a shared log of CLOCK_MONOTONIC
enter/leave stamps), and a holder killed with SIGKILL hands over at once.
Then the kernel's rules per lock kind across the same process, fork and
exec; a static program refused; an unreachable arbiter; and the cost per
lock call, printed.

Every wait reads a line: the worker's "holding", the shim's "waiting for"
(ARBITER_INTERCEPT_VERBOSE), a process's end.
"""
import os
import signal
import subprocess
import sys
import time

import pytest

import harness
from harness import ARBITERCTL, BUILD, WAIT, LineReader

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "intercept_worker.py")
SHIM = os.path.join(BUILD, "libarbiter-intercept.so")
PY = "/usr/bin/python3"
KINDS = ["qdrant", "leveldb", "gdbm"]


@pytest.fixture
def report(capsys):
    """Print a figure for the notes, past pytest's capture."""
    def say(line):
        with capsys.disabled():
            print("\nintercept: %s" % line)
    return say


def sanitizer_preload():
    """The ASan runtime, which must come first in LD_PRELOAD when the shim
    is built with AddressSanitizer (make asan): the programs here are not,
    so the runtime is preloaded before the shim. Empty otherwise."""
    if not harness._built_with_asan(SHIM):
        return ""
    cc = os.environ.get("CC", "cc")
    lib = subprocess.run([cc, "-print-file-name=libasan.so"],
                         capture_output=True, text=True).stdout.strip()
    assert os.path.isabs(lib), "cannot find libasan.so for the ASan shim"
    return os.path.realpath(lib)


ASAN_FIRST = sanitizer_preload()


def base_env(daemon_or_socket):
    e = dict(os.environ)
    e["ARBITER_SOCKET"] = getattr(daemon_or_socket, "socket",
                                  daemon_or_socket)
    for k in list(e):
        if k.startswith("ARBITER_INTERCEPT_"):
            del e[k]
    e.pop("LD_PRELOAD", None)
    if ASAN_FIRST:
        e["LD_PRELOAD"] = ASAN_FIRST
        # Python's own allocations are not ours to judge.
        e["ASAN_OPTIONS"] = "detect_leaks=0"
    return e


def shim_env(daemon, files, **more):
    """The environment alone, as a Dockerfile ENV would set it."""
    e = base_env(daemon)
    e["LD_PRELOAD"] = ":".join(x for x in (ASAN_FIRST, SHIM) if x)
    e["ARBITER_INTERCEPT_FILES"] = files
    e["ARBITER_INTERCEPT_VERBOSE"] = "1"
    e.update(more)
    return e


def start(cmd, env, procs, stdout=subprocess.PIPE):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=stdout,
                         stderr=subprocess.PIPE, env=env, text=True,
                         start_new_session=True)
    p.out = LineReader(p.stdout) if p.stdout else None
    p.err = LineReader(p.stderr)
    procs.append(p)
    return p


def lock_path(kind, store):
    return {"qdrant": os.path.join(store, ".lock"),
            "leveldb": store,  # the folder: its LOCK file is under it
            "gdbm": store}[kind]


def worker(daemon, kind, store, log, procs, intercept=True, extra=(),
           via_ctl=True, **kw):
    """A worker as is (intercept=False), under arbiterctl intercept, or
    with the shim's environment alone (via_ctl=False)."""
    args = [PY, WORKER, kind, store, log] + list(extra)
    if not intercept:
        return start(args, base_env(daemon), procs, **kw)
    if via_ctl:
        cmd = [ARBITERCTL, "-S", daemon.socket, "intercept", "-v",
               "--file", lock_path(kind, store), "--"] + args
        return start(cmd, base_env(daemon), procs, **kw)
    return start(args, shim_env(daemon, lock_path(kind, store)), procs,
                 **kw)


def release(p):
    p.stdin.write("\n")
    p.stdin.flush()


def read_log(log):
    """[(what, pid, t)] in file order."""
    with open(log) as f:
        return [(w, int(pid), float(t)) for w, pid, t in
                (ln.split() for ln in f)]


def intervals(log, killed=None):
    """pid -> [enter, leave]; a killed holder leaves when it was killed."""
    out = {}
    for what, pid, t in read_log(log):
        if what == "enter":
            out.setdefault(pid, []).append([t, None])
        else:
            out[pid][-1][1] = t
    for pid, t in (killed or {}).items():
        for iv in out.get(pid, []):
            if iv[1] is None:
                iv[1] = t
    return [iv for ivs in out.values() for iv in ivs]


def assert_no_overlap(ivs):
    ivs = sorted(ivs)
    assert all(iv[1] is not None for iv in ivs), ivs
    for a, b in zip(ivs, ivs[1:]):
        assert a[1] <= b[0], "critical sections overlap: %s and %s" % (a, b)


def counter(kind, store):
    r = subprocess.run([PY, "-c", COUNT, kind, store], capture_output=True,
                       text=True, timeout=WAIT, env=base_env("none"))
    assert r.returncode == 0, r.stderr
    return int(r.stdout)


COUNT = r"""
import sys
sys.path.insert(0, %r)
import intercept_worker as w
db = w.KINDS[sys.argv[1]](sys.argv[2])
print(db.get())
db.close()
""" % HERE


def store_of(kind, tmp_path):
    """A store made beforehand, as the stores of a deployment are: gdbm
    reads its file's size before locking it, so a gdbm file created while
    another instance waits in the lock is initialised twice."""
    store = str(tmp_path / ("store.gdbm" if kind == "gdbm" else "store"))
    assert counter(kind, store) == 0
    return store


# ------------------------------------------------------------ four workers


@pytest.mark.parametrize("kind", KINDS)
def test_without_intercept_three_of_four_fail(daemon, procs, tmp_path, kind,
                                              report):
    store, log = store_of(kind, tmp_path), str(tmp_path / "log")
    first = worker(daemon, kind, store, log, procs, intercept=False,
                   extra=["--hold"])
    first.out.wait_for("holding")
    others = [worker(daemon, kind, store, log, procs, intercept=False)
              for _ in range(3)]
    for p in others:
        assert p.wait(WAIT) == 3
        line = p.out.wait_for("FAILED")
        if kind == "qdrant":
            assert "is already accessed by another instance" in line
    release(first)
    assert first.wait(WAIT) == 0
    report("%s, 4 workers without intercept: 3 failed" % kind)


class Crowd:
    """Workers whose stdout is one pipe, read by one LineReader, so that a
    test waits for whichever of them speaks first."""

    def __init__(self):
        r, self.w = os.pipe()
        self.out = LineReader(os.fdopen(r, "rb"))
        self.seen = 0

    def add(self, p):
        return p

    def started(self):
        os.close(self.w)

    def next(self, needle):
        """The pid in the next line with needle, after those seen."""
        line = self.out.wait_for(needle, start=self.seen)
        with self.out.cond:
            self.seen = self.out.lines.index(line, self.seen) + 1
        return int(line.split()[-1])


@pytest.mark.parametrize("kind", KINDS)
def test_with_intercept_four_take_turns_and_a_killed_holder_hands_over(
        daemon, procs, tmp_path, kind, report):
    store, log = store_of(kind, tmp_path), str(tmp_path / "log")
    crowd = Crowd()
    ps = {}
    for i in range(4):
        p = worker(daemon, kind, store, log, procs, extra=["--hold"],
                   via_ctl=i % 2 == 0, stdout=crowd.w)
        ps[p.pid] = p
    crowd.started()
    killed, handoff = {}, None
    for turn in range(4):
        pid = crowd.next("holding")
        assert pid in ps, (turn, pid, list(ps), crowd.out.lines)
        holder = ps.pop(pid)
        # Exactly one holds; every other waits for the lease (the shim
        # says so) and has not entered.
        for p in ps.values():
            p.err.wait_for("waiting for")
        entered = [p for w, p, t in read_log(log) if w == "enter"]
        assert entered[-1] == pid and len(entered) == turn + 1, entered
        if turn == 1:
            t = time.clock_gettime(time.CLOCK_MONOTONIC)
            os.kill(pid, signal.SIGKILL)
            killed[pid] = t
            assert holder.wait(WAIT) == -signal.SIGKILL
            nxt = crowd.next("holding")
            enter = [t for w, p, t in read_log(log)
                     if w == "enter" and p == nxt][0]
            handoff = enter - t
            crowd.seen -= 1  # the next turn reads that line again
        else:
            release(holder)
            assert holder.wait(WAIT) == 0, holder.err.drain()
    assert_no_overlap(intervals(log, killed))
    assert counter(kind, store) == 4
    report("%s, 4 workers with intercept: 0 failed, no overlap; SIGKILL of "
           "the holder -> the next one inside the store: %.2f ms" %
           (kind, handoff * 1e3))


@pytest.mark.parametrize("kind", KINDS)
def test_free_running_workers_never_overlap(daemon, procs, tmp_path, kind):
    store, log = store_of(kind, tmp_path), str(tmp_path / "log")
    rounds = 3
    ps = [worker(daemon, kind, store, log, procs, via_ctl=False,
                 extra=["--rounds", str(rounds)]) for _ in range(4)]
    for p in ps:
        assert p.wait(WAIT) == 0, (p.out.drain(), p.err.drain())
        p.out.wait_for("done")
    ivs = intervals(log)
    assert len(ivs) == 4 * rounds
    assert_no_overlap(ivs)
    assert counter(kind, store) == 4 * rounds
