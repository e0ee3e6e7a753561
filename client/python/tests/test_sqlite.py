"""Issue 6's multi-process test: 8 processes x 50 read-modify-writes of a
SQLite database opened with PRAGMA locking_mode=EXCLUSIVE.

Without a lease they fail with "database is locked" (shown deterministically:
one process holds the database while the others try); with the lease none
fails, nothing is lost (the counter ends at exactly 400) and every write got
its own fencing token."""
import json
import os
import sqlite3
import subprocess
import sys

from conftest import WAIT, client_env

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "sqlite_worker.py")
PROCS = 8
ROUNDS = 50


def make_db(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    con.execute("INSERT INTO counter VALUES (0)")
    con.execute("CREATE TABLE holds (x INTEGER)")
    con.commit()
    con.close()


def counter(path):
    con = sqlite3.connect(path)
    (n,) = con.execute("SELECT n FROM counter").fetchone()
    con.close()
    return n


def start(procs, *args, stdin=None):
    p = subprocess.Popen([sys.executable, WORKER] + [str(a) for a in args],
                         stdin=stdin or subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=client_env())
    procs.append(p)
    return p


def start_holder(procs, *args):
    h = start(procs, *args, stdin=subprocess.PIPE)
    assert h.stdout.readline().strip() == "holding", h.stderr.read()
    return h


def finish(p):
    out, err = p.communicate(timeout=WAIT * 6)
    return p.returncode, out, err


def test_without_the_lease_they_fail_database_is_locked(procs, tmp_path):
    db = str(tmp_path / "app.db")
    make_db(db)
    holder = start_holder(procs, "hold", db, 0)
    workers = [start(procs, "nolease", db, ROUNDS) for _ in range(PROCS)]
    results = [finish(w) for w in workers]
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert finish(holder)[0] == 0
    failed = [out for rc, out, err in results if rc == 3]
    assert len(failed) >= 1                  # the claim...
    assert len(failed) == PROCS              # ...and here every one failed
    assert all("FAILED database is locked" in out for out in failed)
    assert counter(db) == 0


def test_with_the_lease_none_fails_and_nothing_is_lost(daemon, procs,
                                                       tmp_path):
    db = str(tmp_path / "app.db")
    make_db(db)
    # Same setup as above, but the holder holds the database inside a
    # lease: the workers queue behind it instead of failing.
    holder = start_holder(procs, "hold-lease", db, 0, daemon.socket)
    workers = [start(procs, "lease", db, ROUNDS, daemon.socket)
               for _ in range(PROCS)]
    holder.stdin.write("done\n")
    holder.stdin.flush()
    assert finish(holder)[0] == 0
    tokens = []
    for w in workers:
        rc, out, err = finish(w)
        assert rc == 0, out + err
        lines = out.splitlines()
        assert lines[-1] == "OK" and "FAILED" not in out
        mine = json.loads(lines[0])
        assert len(mine) == ROUNDS and mine == sorted(mine)
        tokens += mine
    assert counter(db) == PROCS * ROUNDS == 400
    assert len(set(tokens)) == 400           # one grant per write
