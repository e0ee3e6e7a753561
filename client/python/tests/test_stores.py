"""Proof on real single-process stores: gdbm (dbm.gnu), LevelDB (plyvel)
and SQLite (PRAGMA locking_mode=EXCLUSIVE, fencing tokens checked as the
README's recipe does), each refusing a second process that opens it.

Several worker processes read-modify-write one counter, each opening the
store only under an exclusive lease (through the store's example in
client/python/examples). During the run one worker is killed with SIGKILL
in the middle of a write, and arbiterd is killed with SIGKILL and started
again on the same socket and storage: the waiting workers reconnect and
queue anew by themselves. At the end: no store refused an open, the counter
equals the increments the workers reported, and the fencing tokens of the
increments only grew, across the restart too.

The daemon is killed while the test's own client holds the lease, so that
no worker is inside a write then: a worker whose lease vanished in the
middle of a write would still have the store open when the next one is
granted (which is what fencing tokens, checked by the SQLite example, are
for; gdbm and LevelDB cannot check them).

Each test prints its figures (run pytest with -s to see them)."""
import os
import queue
import selectors
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

import arbiter_client as ac
from conftest import WAIT, Daemon, client_env

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "store_worker.py")
WORKERS = 4
ROUNDS = 30
STOP_AT = 3         # the victim's round that is killed mid-write


def store_path(kind, tmp_path):
    return str(tmp_path / {"gdbm": "counter.gdbm", "leveldb": "counter.ldb",
                           "sqlite": "counter.db"}[kind])


def read_counter(kind, path):
    """The counter and the last fencing token stored (None if the store
    keeps none)."""
    if kind == "gdbm":
        import dbm.gnu
        db = dbm.gnu.open(path, "r")
        try:
            return int(db[b"counter"]), None
        finally:
            db.close()
    if kind == "leveldb":
        import plyvel
        db = plyvel.DB(path)
        try:
            return int(db.get(b"counter")), int(db.get(b"token"))
        finally:
            db.close()
    con = sqlite3.connect(path)
    try:
        (n,) = con.execute("SELECT n FROM counter").fetchone()
        (token,) = con.execute("SELECT token FROM fence").fetchone()
        return n, token
    finally:
        con.close()


class Workers:
    """The worker processes and what they report, line by line, through
    their stdout pipes."""

    def __init__(self, procs, kind, path, sock):
        self.sel = selectors.DefaultSelector()
        self.ps = []
        self.events = []            # (worker index, words, time read)
        self.bufs = {}
        for i in range(WORKERS):
            args = [sys.executable, WORKER, kind, path, str(ROUNDS), sock]
            if i == 0:
                args.append(str(STOP_AT))
            p = subprocess.Popen(args, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env=client_env())
            procs.append(p)
            self.ps.append(p)
            self.bufs[p.stdout.fileno()] = (i, b"")
            self.sel.register(p.stdout.fileno(), selectors.EVENT_READ)

    def read(self, until, what):
        """Read events until until(self) is true (None: until every pipe
        ended)."""
        deadline = time.monotonic() + WAIT * 6
        while self.bufs:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("workers never reached: %s" % what)
            for key, _ in self.sel.select(left):
                fd = key.fd
                i, buf = self.bufs[fd]
                chunk = os.read(fd, 65536)
                now = time.monotonic()
                if not chunk:
                    self.sel.unregister(fd)
                    del self.bufs[fd]
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                self.bufs[fd] = (i, buf)
                for line in lines:
                    self.events.append((i, line.decode().split(" ", 1),
                                        now))
            if until is not None and until(self):
                return
        if until is not None and not until(self):
            raise AssertionError("workers ended before: %s\n%s" %
                                 (what, self.stderr()))

    def count(self, kind):
        return sum(1 for _, w, _ in self.events if w[0] == kind)

    def stderr(self):
        out = []
        for p in self.ps:
            if p.poll() is not None:
                out.append(p.stderr.read().decode(errors="replace"))
        return "\n".join(out)


@pytest.mark.parametrize("kind", ["gdbm", "leveldb", "sqlite"])
def test_store_under_leases_survives_a_killed_writer_and_daemon(
        kind, fresh_daemon, procs, tmp_path):
    if kind == "gdbm":
        pytest.importorskip("dbm.gnu", reason="needs python3-gdbm "
                            "(sh scripts/deps.sh test installs it)")
    if kind == "leveldb":
        pytest.importorskip("plyvel", reason="needs python3-plyvel "
                            "(sh scripts/deps.sh test installs it)")
    d = fresh_daemon()
    path = store_path(kind, tmp_path)
    w = Workers(procs, kind, path, d.socket)
    victim = w.ps[0]

    # One worker is killed in the middle of a write.
    w.read(lambda w: w.count("midwrite"), "the victim's mid-write")
    victim_killed = time.monotonic()
    victim.send_signal(signal.SIGKILL)
    victim.wait(WAIT)

    # Then the daemon, while the lease is ours (no worker inside a write)
    # and the other workers wait for it; then a new daemon on the same
    # socket and storage.
    # Every worker connected first: a client rides out a restart once it
    # has been connected; one that first connects during the outage is
    # told at once that nothing listens.
    w.read(lambda w: w.count("inc") >= (WORKERS - 1) * ROUNDS // 3 and
           w.count("ready") == WORKERS, "a third of the increments")
    admin = ac.Client(d.socket, name="test")
    admin.acquire("%s:%s" % (kind, path), timeout=WAIT)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(WAIT)
    daemon_killed = time.monotonic()
    d2 = Daemon(dir=d.dir)
    daemon_ready = time.monotonic()
    try:
        w.read(None, "the end")
        for p in w.ps[1:]:
            assert p.wait(WAIT) == 0, w.stderr()
    finally:
        admin.close()
        assert d2.stop() == 0, "\n".join(d2.lines[-20:])

    # In the order of the writes (pipes are read in no particular order).
    incs = sorted(((i, words[1].split(), t) for i, words, t in w.events
                   if words[0] == "inc"), key=lambda e: int(e[1][1]))
    tokens = [int(x[0]) for _, x, _ in incs]
    values = [int(x[1]) for _, x, _ in incs]
    grants = [float(x[2]) for _, x, _ in incs]
    store_errors = [words for _, words, _ in w.events
                    if words[0] == "storeerr"]
    revoked = [words for _, words, _ in w.events if words[0] == "revoked"]
    counter, stored_token = read_counter(kind, path)

    # Every survivor finished; the victim did STOP_AT rounds first.
    assert w.count("done") == WORKERS - 1
    expected = (WORKERS - 1) * ROUNDS + STOP_AT
    assert store_errors == [], store_errors
    assert revoked == [], revoked
    assert len(incs) == expected
    assert counter == len(incs), "lost updates: %d" % (len(incs) - counter)
    assert values == list(range(1, expected + 1))
    assert tokens == sorted(set(tokens)), \
        "the fencing tokens of successive writes must grow"
    if stored_token is not None:
        assert stored_token == tokens[-1]
    after_victim = min(g for g in grants if g > victim_killed)
    after_daemon = min(g for g in grants if g > daemon_killed)
    print("\n%s: %d workers x %d rounds, 1 killed mid-write, daemon "
          "killed and restarted: %d increments, counter %d, lost updates "
          "%d, store-lock errors %d; victim kill -> next grant %.1f ms; "
          "daemon kill -> first grant %.1f ms (new daemon ready after "
          "%.1f ms)" %
          (kind, WORKERS, ROUNDS, len(incs), counter, len(incs) - counter,
           len(store_errors), (after_victim - victim_killed) * 1e3,
           (after_daemon - daemon_killed) * 1e3,
           (daemon_ready - daemon_killed) * 1e3))


def test_sqlite_fencing_refuses_the_holder_of_a_lease_lost_in_a_restart(
        fresh_daemon, tmp_path):
    # A holder whose lease vanished with the daemon, and that writes after
    # the next holder (granted by the restarted daemon) did, is refused by
    # the token check of the SQLite example, and changes nothing.
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "examples"))
    try:
        import sqlite_counter
    finally:
        sys.path.pop(0)
    d = fresh_daemon()
    path = store_path("sqlite", tmp_path)
    resource = "sqlite:" + path
    lost = queue.Queue()
    old = ac.Client(d.socket, name="old", on_revoked=lost.put)
    stale = old.acquire(resource)
    assert sqlite_counter.add_one(path, stale) == 1
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(WAIT)
    # The old client has seen its connection end (it does at once, even
    # while idle) before its holder goes on writing.
    assert lost.get(timeout=WAIT).reason == "DISCONNECT"
    d2 = Daemon(dir=d.dir)
    try:
        new = ac.Client(d2.socket, name="new")
        with new.lease(resource, timeout=WAIT) as lease:
            assert lease.token > stale.token
            assert sqlite_counter.add_one(path, lease) == 2
        with pytest.raises(sqlite_counter.StaleLease):
            sqlite_counter.add_one(path, stale)
        assert read_counter("sqlite", path) == (2, lease.token)
        with pytest.raises(ac.LeaseRevoked, match="DISCONNECT"):
            stale.release()
        new.close()
        old.close()
    finally:
        assert d2.stop() == 0
