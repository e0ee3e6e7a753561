"""A process that does read-modify-writes on a SQLite database opened with
PRAGMA locking_mode=EXCLUSIVE, as embedded stores do, for test_sqlite.py.

usage: sqlite_worker.py MODE DB N [SOCKET]

  nolease     N read-modify-writes, no lease; the first failure prints
              "FAILED <sqlite message>" and exits 3
  lease       the same, each inside a lease on "sqlite:DB"; prints the
              fencing tokens it got as JSON, then "OK"
  hold        open the database exclusively (a write keeps the lock), print
              "holding", keep it until a line arrives on stdin
  hold-lease  the same inside a lease
"""
import json
import sqlite3
import sys

from arbiter_client import Client


def open_exclusive(path):
    # timeout=0: fail at once instead of SQLite's own sleep-and-retry.
    con = sqlite3.connect(path, timeout=0)
    con.execute("PRAGMA locking_mode=EXCLUSIVE")
    con.execute("PRAGMA synchronous=OFF")    # locking is under test, not fsync
    return con


def read_modify_write(path):
    con = open_exclusive(path)
    try:
        (n,) = con.execute("SELECT n FROM counter").fetchone()
        con.execute("UPDATE counter SET n = ?", (n + 1,))
        con.commit()
    finally:
        con.close()


def hold(path):
    con = open_exclusive(path)
    con.execute("INSERT INTO holds VALUES (1)")
    con.commit()                 # EXCLUSIVE mode keeps the lock after this
    print("holding", flush=True)
    sys.stdin.readline()
    con.close()


def main():
    mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = sys.argv[4] if len(sys.argv) > 4 else None
    if mode == "nolease":
        for _ in range(n):
            try:
                read_modify_write(path)
            except sqlite3.OperationalError as exc:
                print("FAILED", exc, flush=True)
                sys.exit(3)
        print("OK")
    elif mode == "hold":
        hold(path)
    else:
        with Client(sock, name="sqlite-worker") as arb:
            if mode == "hold-lease":
                with arb.lease("sqlite:" + path):
                    hold(path)
                return
            tokens = []
            for _ in range(n):
                with arb.lease("sqlite:" + path, timeout=60) as lease:
                    read_modify_write(path)
                    tokens.append(lease.token)
            print(json.dumps(tokens))
            print("OK")


if __name__ == "__main__":
    main()
