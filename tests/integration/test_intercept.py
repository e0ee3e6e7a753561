"""arbiterctl intercept and libarbiter-intercept.so: unmodified programs
whose own lock-file locks become leases.

The programs are the real locking code of the stores (intercept_worker.py:
qdrant-client's portalocker flock, LevelDB through plyvel, gdbm), run as
four instances at once: without the shim three fail, with it none fails,
their critical sections never overlap (a shared log of CLOCK_MONOTONIC
enter/leave stamps), and a holder killed with SIGKILL hands over at once.
Then the kernel's rules per lock kind across the same process, fork and
exec; a static program refused; an unreachable arbiter; a lock file on a
descriptor number another file had. What a lock call costs is measured by
`make bench` (section 8), not here.

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


# ------------------------------------------------------------ one process

SAME_PROCESS = r"""
import errno, fcntl, os, struct, sys
path = sys.argv[1]
fd1 = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
# Another open file description of the same file: the kernel says no at
# once (never a wait for our own lease).
fd2 = os.open(path, os.O_RDWR)
try:
    fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("second description: locked")
except BlockingIOError:
    print("second description: EWOULDBLOCK")
# The same description through a duplicate: already ours.
fd3 = os.dup(fd1)
fcntl.flock(fd3, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("duplicate: locked")
# Record locks of one process never conflict with each other.
fcntl.lockf(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
fcntl.lockf(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("record locks: locked")
# OFD locks belong to descriptions: a second one conflicts, at once.
ofd = lambda fd, t: fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(
    "hhqqi4x", t, os.SEEK_SET, 0, 0, 0))
fd4, fd5 = os.open(path + ".ofd", os.O_RDWR | os.O_CREAT), os.open(
    path + ".ofd", os.O_RDWR)
ofd(fd4, fcntl.F_RDLCK)
ofd(fd5, fcntl.F_RDLCK)
try:
    ofd(fd5, fcntl.F_WRLCK)
    print("OFD upgrade beside a reader: locked")
except OSError as e:
    print("OFD upgrade beside a reader: errno", e.errno)
ofd(fd4, fcntl.F_UNLCK)
ofd(fd5, fcntl.F_WRLCK)
print("OFD upgrade alone: locked")
# Shared, then exclusive, on the locked description: conversions.
fcntl.flock(fd1, fcntl.LOCK_SH | fcntl.LOCK_NB)
fcntl.flock(fd1, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("conversions: locked")
sys.stdout.flush()
sys.stdin.readline()
"""


def test_a_second_lock_in_one_process_gets_the_kernels_answer(
        daemon, procs, tmp_path):
    path = str(tmp_path / "lock")
    outs = []
    for env in (base_env(daemon),
                shim_env(daemon, "%s:%s.ofd" % (path, path))):
        p = start([PY, "-c", SAME_PROCESS, path], env, procs)
        p.out.wait_for("conversions: locked")
        outs.append(p.out.drain())
        if len(outs) == 2:
            # The lease is held meanwhile: a second program waits.
            other = start([PY, "-c", SAME_PROCESS, path], shim_env(
                daemon, path, ARBITER_INTERCEPT_WAIT="30"), procs)
            other.err.wait_for("waiting for")
            release(p)
            other.out.wait_for("conversions: locked")
            release(other)
            assert other.wait(WAIT) == 0
        else:
            release(p)
        assert p.wait(WAIT) == 0, p.err.drain()
    assert outs[0] == outs[1]
    assert "second description: EWOULDBLOCK" in outs[1]


THREADS = r"""
import fcntl, os, sys, threading
path, counter = sys.argv[1], sys.argv[2]
def work():
    for _ in range(30):
        fd = os.open(path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(counter) as f:
            n = int(f.read() or 0)
        with open(counter, "w") as f:
            f.write(str(n + 1))
        os.close(fd)      # closing the last descriptor unlocks
ts = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
print("done")
"""


def test_threads_and_processes_share_the_lock(daemon, procs, tmp_path):
    path, counter = str(tmp_path / "lock"), str(tmp_path / "counter")
    with open(counter, "w") as f:
        f.write("0")
    env = shim_env(daemon, path, ARBITER_INTERCEPT_VERBOSE="0")
    ps = [start([PY, "-c", THREADS, path, counter], env, procs)
          for _ in range(3)]
    for p in ps:
        assert p.wait(WAIT) == 0, p.err.drain()
    with open(counter) as f:
        assert int(f.read()) == 3 * 4 * 30


# ------------------------------------------------------------ fork, exec

FORK = r"""
import fcntl, os, struct, sys
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT)
if how == "flock":
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
elif how == "ofd":
    # struct flock: type, whence, start, len, pid; the whole file
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK,
                struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
else:
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
if os.fork() == 0:
    print("child", flush=True)
    sys.stdin.readline()
    os._exit(0)
if how == "lockf":
    os._exit(0)  # with the descriptor open: only the exit ends the lock
os.close(fd)     # the child's descriptor keeps the description locked
"""


@pytest.mark.parametrize("how", ["flock", "ofd", "lockf"])
def test_fork_follows_the_kernel(daemon, procs, tmp_path, how):
    """A forked child shares a flock or an OFD lock (its open file
    description), so the lease lives on in it after the parent is gone; it
    gets no record lock, so the lease ends with the parent."""
    store = str(tmp_path / "store")
    os.makedirs(store)
    lock = os.path.join(store, ".lock")
    p = start([PY, "-c", FORK, lock, how], shim_env(daemon, lock), procs)
    p.out.wait_for("child")
    assert p.wait(WAIT) == 0, p.err.drain()  # the parent is gone
    nxt = worker(daemon, "qdrant", store, str(tmp_path / "log"), procs,
                 extra=["--hold"])
    if how != "lockf":
        nxt.err.wait_for("waiting for")
        assert not any("holding" in ln for ln in nxt.out.drain())
        release(p)  # the child ends, and with it the lock and the lease
    nxt.out.wait_for("holding")
    release(nxt)
    assert nxt.wait(WAIT) == 0
    if how == "lockf":
        release(p)


EXEC = r"""
import fcntl, os, sys
path, keep = sys.argv[1], sys.argv[2] == "keep"
fd = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.set_inheritable(fd, keep)
os.execv(sys.executable, [sys.executable, "-c", AFTER, str(fd), str(keep)])
"""
AFTER = r"""
import fcntl, os, sys
print("execed", flush=True)
sys.stdin.readline()
if sys.argv[2] == "True":
    # The same description, inherited: locking it again is a no-op for the
    # kernel, and must not wait for the lease this process still holds.
    fcntl.flock(int(sys.argv[1]), fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("relocked", flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("keep", [True, False])
def test_exec_follows_the_locked_descriptor(daemon, procs, tmp_path, keep):
    """Across exec the lease goes where the lock goes: on with a descriptor
    that survives exec, gone with one closed on exec (Python's default)."""
    store = str(tmp_path / "store")
    os.makedirs(store)
    lock = os.path.join(store, ".lock")
    p = start([PY, "-c", "AFTER = %r\n" % AFTER + EXEC, lock,
               "keep" if keep else "drop"], shim_env(daemon, lock), procs)
    p.out.wait_for("execed")
    nxt = worker(daemon, "qdrant", store, str(tmp_path / "log"), procs,
                 extra=["--hold"])
    if keep:
        nxt.err.wait_for("waiting for")
        release(p)
        p.out.wait_for("relocked")
        assert not any("holding" in ln for ln in nxt.out.drain())
    release(p)
    nxt.out.wait_for("holding")
    release(nxt)
    assert nxt.wait(WAIT) == 0
    assert p.wait(WAIT) == 0, p.err.drain()


# ------------------------------------------------------------ refusals


def test_a_static_program_is_refused_with_what_to_do(daemon, tmp_path):
    src = os.path.join(HERE, "fdreuse.c")
    static, script = str(tmp_path / "static"), str(tmp_path / "script")
    r = subprocess.run(["cc", "-static", "-O2", "-o", static, src],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (
        "cc -static failed (Debian's libc6-dev ships libc.a): " + r.stderr)
    with open(script, "w") as f:
        f.write("#!%s\n" % static)
    os.chmod(script, 0o755)
    def intercept(*cmd):
        return subprocess.run(
            [ARBITERCTL, "-S", daemon.socket, "intercept", "--file",
             str(tmp_path / "x"), "--"] + list(cmd), capture_output=True,
            text=True, timeout=WAIT, env=base_env(daemon))

    for cmd in (static, script):
        r = intercept(cmd, str(tmp_path / "x"), "1")
        assert r.returncode == 64, r
        assert "statically linked" in r.stderr, r.stderr
        assert "arbiterctl run" in r.stderr and static in r.stderr
    # A dynamic program runs, with its own exit status.
    r = intercept("sh", "-c", "exit 7")
    assert r.returncode == 7, r


def test_a_missing_shim_is_named(daemon, tmp_path):
    lone = str(tmp_path / "arbiterctl")
    with open(ARBITERCTL, "rb") as src, open(lone, "wb") as dst:
        dst.write(src.read())
    os.chmod(lone, 0o755)
    r = subprocess.run([lone, "intercept", "--file", "x", "--", "true"],
                       capture_output=True, text=True, timeout=WAIT,
                       env=base_env(daemon))
    assert r.returncode == 70, r
    assert "cannot find libarbiter-intercept.so" in r.stderr, r.stderr
    assert "make" in r.stderr and "ARBITER_INTERCEPT_LIB" in r.stderr


UNAVAILABLE = r"""
import fcntl, os, sys
for _ in range(3):
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        print("locked")
    except OSError as e:
        print("errno", e.errno)
    os.close(fd)
"""


@pytest.mark.parametrize("on", ["lock", "fail"])
def test_an_unreachable_arbiter_is_said_once(procs, tmp_path, on):
    gone = str(tmp_path / "none.sock")
    lock = str(tmp_path / "lock")
    env = shim_env(gone, lock, ARBITER_INTERCEPT_ON_UNAVAILABLE=on)
    r = subprocess.run([PY, "-c", UNAVAILABLE, lock], capture_output=True,
                       text=True, timeout=WAIT, env=env)
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if "cannot lease" in ln]
    assert len(said) == 1, r.stderr
    assert gone in said[0] and "Start arbiterd" in said[0], said
    if on == "lock":
        assert r.stdout.split("\n")[:3] == ["locked"] * 3
        assert "taking the plain lock" in said[0]
    else:
        assert r.stdout.split("\n")[:3] == ["errno 37"] * 3  # ENOLCK


def test_a_holder_outside_the_arbiter_is_waited_for(daemon, procs, tmp_path):
    """The old version of an app, not under intercept, holds the lock: the
    intercepted newcomer gets the lease, then waits for the real lock
    instead of failing, and enters when the old one lets go."""
    store, log = str(tmp_path / "store"), str(tmp_path / "log")
    old = worker(daemon, "qdrant", store, log, procs, intercept=False,
                 extra=["--hold"])
    old.out.wait_for("holding")
    new = worker(daemon, "qdrant", store, log, procs, extra=["--hold"])
    new.err.wait_for("still locked by a process outside the arbiter")
    assert not any("holding" in ln for ln in new.out.drain())
    release(old)
    assert old.wait(WAIT) == 0
    new.out.wait_for("holding")
    release(new)
    assert new.wait(WAIT) == 0
    assert_no_overlap(intervals(log))


HOLD = r"""
import fcntl, os, sys
path, how = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, {"sh": fcntl.LOCK_SH, "ex": fcntl.LOCK_EX}[how] | fcntl.LOCK_NB)
print("holding", flush=True)
sys.stdin.readline()
"""


def hold(daemon, procs, path, how, *opts):
    return start([ARBITERCTL, "-S", daemon.socket, "intercept", "-v",
                  "--file", path] + list(opts) + ["--", PY, "-c", HOLD, path,
                                                  how], base_env(daemon),
                 procs)


def test_shared_locks_share_and_the_options_reach_the_program(
        daemon, procs, tmp_path):
    path = str(tmp_path / "lock")
    a, b = hold(daemon, procs, path, "sh"), hold(daemon, procs, path, "sh")
    a.out.wait_for("holding")
    b.out.wait_for("holding")  # two shared leases at once
    w = hold(daemon, procs, path, "ex")
    w.err.wait_for("waiting for '%s' (exclusive)" % path)
    for p in (a, b):
        release(p)
        assert p.wait(WAIT) == 0
    w.out.wait_for("holding")
    release(w)
    assert w.wait(WAIT) == 0
    # -x: every lease exclusive, shared locks included; --resource: one
    # name for two files, so they take turns.
    other = str(tmp_path / "other")
    a = hold(daemon, procs, path, "sh", "-x", "--resource", "both")
    a.out.wait_for("holding")
    b = hold(daemon, procs, other, "sh", "-x", "--resource", "both")
    b.err.wait_for("waiting for 'both' (exclusive)")
    release(a)
    b.out.wait_for("holding")
    release(b)
    assert a.wait(WAIT) == 0 and b.wait(WAIT) == 0
    r = subprocess.run(
        [ARBITERCTL, "-S", daemon.socket, "intercept", "--file", "a",
         "--file", path, "-s", "-w", "2.5", "--on-unavailable", "fail",
         "--", "sh", "-c", 'echo "$ARBITER_INTERCEPT_FILES $ARBITER_SOCKET '
         '$ARBITER_INTERCEPT_MODE $ARBITER_INTERCEPT_WAIT '
         '$ARBITER_INTERCEPT_ON_UNAVAILABLE"'], capture_output=True,
        text=True, timeout=WAIT, env=base_env("elsewhere"), cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["%s/a:%s" % (tmp_path, path), daemon.socket,
                                "shared", "2.5", "fail"]


def test_under_arbiterctl_run_on_the_same_resource_nothing_waits_for_itself(
        daemon, procs, tmp_path):
    """arbiterctl run holds the file's resource and runs the intercepted
    program: its lock finds the lease held by its parent, and the kernel
    answers it instead of a wait for a lease that will never come."""
    path = str(tmp_path / "lock")
    p = start([ARBITERCTL, "-S", daemon.socket, "run", path, "--",
               ARBITERCTL, "-S", daemon.socket, "intercept", "-v", "--file",
               path, "--", PY, "-c", HOLD, path, "ex"], base_env(daemon),
              procs)
    p.out.wait_for("holding")
    other = hold(daemon, procs, path, "ex")
    other.err.wait_for("waiting for")
    release(p)
    assert p.wait(WAIT) == 0
    other.out.wait_for("holding")
    release(other)
    assert other.wait(WAIT) == 0


def ended_while_running(daemon, procs, tmp_path, cmd, said):
    """cmd FILE locks FILE and says "holding"; after a line on stdin it
    ends its lock some way and says `said`, then waits: another
    intercepted holder must get the lock while cmd still runs."""
    path = str(tmp_path / "lock")
    p = start(cmd + [path], shim_env(daemon, path), procs)
    p.out.wait_for("holding")
    other = hold(daemon, procs, path, "ex")
    other.err.wait_for("waiting for")
    release(p)
    p.out.wait_for(said)
    other.out.wait_for("holding")  # while the C program still runs
    assert p.poll() is None
    release(other)
    release(p)
    assert other.wait(WAIT) == 0 and p.wait(WAIT) == 0


@pytest.fixture(scope="module")
def lockstdio(tmp_path_factory):
    prog = str(tmp_path_factory.mktemp("lockstdio") / "lockstdio")
    r = subprocess.run(["cc", "-O2", "-o", prog,
                        os.path.join(HERE, "lockstdio.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return prog


def test_fclose_of_a_stdio_lock_file_ends_the_lease(daemon, procs, tmp_path,
                                                    lockstdio):
    ended_while_running(daemon, procs, tmp_path, [lockstdio, "fclose"],
                        "closed")


def test_a_vfork_child_closing_the_lock_leaves_the_parents_lease(
        daemon, procs, tmp_path, lockstdio):
    """A vfork()ed child shares the parent's memory: its close of the
    locked descriptor (its own copy) must leave the parent's table alone,
    so that the parent's unlock still ends the lease."""
    ended_while_running(daemon, procs, tmp_path, [lockstdio, "vfork"],
                        "unlocked")


def test_a_program_set_uid_to_another_user_is_refused(daemon, tmp_path):
    """The loader ignores LD_PRELOAD in a program that switches uid."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to give a program another owner)")
    prog = str(tmp_path / "true")
    with open("/bin/true", "rb") as src, open(prog, "wb") as dst:
        dst.write(src.read())
    os.chmod(tmp_path, 0o755)
    os.chown(prog, 65534, 65534)
    os.chmod(prog, 0o4755)
    r = subprocess.run([ARBITERCTL, "-S", daemon.socket, "intercept",
                        "--file", str(tmp_path / "x"), "--", prog],
                       capture_output=True, text=True, timeout=WAIT,
                       env=base_env(daemon))
    assert r.returncode == 64, r
    assert "set-uid or set-gid" in r.stderr and "arbiterctl run" in r.stderr


def test_a_wait_bound_fails_the_lock_as_the_kernel_would(daemon, procs,
                                                         tmp_path):
    store, log = str(tmp_path / "store"), str(tmp_path / "log")
    first = worker(daemon, "qdrant", store, log, procs, extra=["--hold"])
    first.out.wait_for("holding")
    lock = os.path.join(store, ".lock")
    p = start([ARBITERCTL, "-S", daemon.socket, "intercept", "-v", "-w",
               "0.2", "--file", lock, "--", PY, WORKER, "qdrant", store, log],
              base_env(daemon), procs)
    p.err.wait_for("waiting for")
    assert p.wait(WAIT) == 3
    assert "is already accessed by another instance" in p.out.wait_for(
        "FAILED")
    release(first)
    assert first.wait(WAIT) == 0


FILELOCK = r"""
import sys
from arbiter_client import FileLock
lock = FileLock(sys.argv[1])
lock.acquire()
print("holding", flush=True)
sys.stdin.readline()
lock.release()
"""


def test_the_default_resource_is_the_one_filelock_uses(daemon, procs,
                                                      tmp_path):
    """A program changed to arbiter_client.FileLock and one left as it is
    under intercept exclude each other on the same lock file."""
    import shutil
    pkg = tmp_path / "pkg" / "arbiter_client"
    shutil.copytree(os.path.join(HERE, "..", "..", "client", "python",
                                 "arbiter_client"), str(pkg))
    shutil.copy(os.path.join(BUILD, "gen", "python", "arbiter_pb2.py"),
                str(pkg))
    lock = str(tmp_path / "lock")
    env = base_env(daemon)
    env["PYTHONPATH"] = str(pkg.parent)
    changed = start([PY, "-c", FILELOCK, lock], env, procs)
    changed.out.wait_for("holding")
    unchanged = hold(daemon, procs, lock, "ex")
    unchanged.err.wait_for("waiting for '%s'" % lock)
    release(changed)
    assert changed.wait(WAIT) == 0, changed.err.drain()
    unchanged.out.wait_for("holding")
    release(unchanged)
    assert unchanged.wait(WAIT) == 0


# ------------------------------------------------------------ other files


@pytest.fixture(scope="module")
def fdreuse(tmp_path_factory):
    prog = str(tmp_path_factory.mktemp("fdreuse") / "fdreuse")
    r = subprocess.run(["cc", "-O2", "-D_FORTIFY_SOURCE=2", "-o", prog,
                        os.path.join(HERE, "fdreuse.c")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return prog


@pytest.mark.parametrize("how", [
    "close", "close_range", "closefrom", "dup2", "dupfd", "proc", "open",
    "open64", "openat", "open_2", "creat", "fopen", "freopen"])
def test_a_lock_file_on_the_number_of_another_file_is_leased(
        daemon, procs, tmp_path, fdreuse, how):
    """Lock calls on a file the shim saw opened under another name go
    straight to the kernel; every way a number is freed or a file opened
    makes the shim look again, so the lock file that takes the number
    next is leased."""
    path = str(tmp_path / "lock")
    p = start([fdreuse, how, path], shim_env(daemon, path), procs)
    said = p.err.wait_for("leased '%s'" % path)
    assert "exclusive" in said, said
    p.out.wait_for("holding")
    other = hold(daemon, procs, path, "ex")
    other.err.wait_for("waiting for")
    release(p)
    assert p.wait(WAIT) == 0, p.err.drain()
    other.out.wait_for("holding")
    release(other)
    assert other.wait(WAIT) == 0


@pytest.mark.parametrize("how", ["end-close_range", "end-closefrom",
                                 "end-fcntl-close_range"])
def test_closing_a_range_that_holds_the_lock_ends_the_lease(
        daemon, procs, tmp_path, fdreuse, how):
    ended_while_running(daemon, procs, tmp_path, [fdreuse, how], "closed")
