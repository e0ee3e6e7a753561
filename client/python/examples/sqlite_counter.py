"""A counter in a SQLite database opened exclusively by one process at a
time, with the lease's fencing token checked in the same transaction (the
recipe of the main README's "Fencing tokens" section).

With PRAGMA locking_mode=EXCLUSIVE (as embedded stores use it) a second
process gets "database is locked"; so each process opens the database only
while it holds the lease. A holder whose lease ended (ttl, admin revoke,
daemon restart) and still tries to write is refused by the token check.

    python3 sqlite_counter.py /var/lib/app/visits.db 10
"""
import os
import sqlite3
import sys

from arbiter_client import Client

# What SQLite raises when another process has the database locked.
LOCKED = (sqlite3.OperationalError,)

SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1),
                                    n INTEGER NOT NULL);
INSERT OR IGNORE INTO counter VALUES (1, 0);
CREATE TABLE IF NOT EXISTS fence (id INTEGER PRIMARY KEY CHECK (id = 1),
                                  token INTEGER);
INSERT OR IGNORE INTO fence VALUES (1, 0);
"""


class StaleLease(Exception):
    """A newer lease holder has written: this one must not."""


def add_one(path, lease, before_write=None):
    """One read-modify-write of the counter under lease, refused (StaleLease,
    nothing written) if a newer lease has written. Returns the new value.
    before_write(), if given, runs inside the transaction after the
    counter's update, before the commit."""
    # timeout=0: fail at once rather than SQLite's own sleep-and-retry.
    con = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        con.execute("PRAGMA locking_mode=EXCLUSIVE")
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in SCHEMA.split(";"):
                con.execute(statement)
            fenced = con.execute(
                "UPDATE fence SET token = :token WHERE id = 1 AND "
                "token <= :token", {"token": lease.token}).rowcount
            if fenced == 0:
                raise StaleLease("lease token %d is older than the last "
                                 "writer's" % lease.token)
            (n,) = con.execute("SELECT n FROM counter").fetchone()
            con.execute("UPDATE counter SET n = ?", (n + 1,))
            if before_write is not None:
                before_write()
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    return n + 1


def main():
    path = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with Client(name="sqlite-counter") as arb:
        for _ in range(rounds):
            with arb.lease("sqlite:" + path, timeout=60) as lease:
                print(add_one(path, lease))


if __name__ == "__main__":
    main()
