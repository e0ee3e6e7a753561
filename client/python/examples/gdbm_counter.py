"""A counter in a gdbm file shared by several processes.

gdbm lets one process at a time open a file for writing (a second one gets
"Resource temporarily unavailable"), so each process opens it only while it
holds the lease, and closes it before letting go.

    python3 gdbm_counter.py /var/lib/app/visits.gdbm 10

($ARBITER_SOCKET names the daemon's socket; Debian: apt-get install
python3-gdbm.)
"""
import dbm.gnu
import os
import sys

from arbiter_client import Client

# What gdbm raises when another process has the file open.
LOCKED = (dbm.gnu.error,)


def add_one(path, lease, before_write=None):
    """One read-modify-write of the counter; call it holding lease (its
    fencing token is not used: gdbm cannot check one). Returns the new
    value. before_write(), if given, runs with the file open and the new
    value computed, before it is written."""
    db = dbm.gnu.open(path, "c")       # "c": create if missing; locked
    try:
        n = int(db.get(b"counter", b"0")) + 1
        if before_write is not None:
            before_write()
        db[b"counter"] = b"%d" % n
        db.sync()
    finally:
        db.close()
    return n


def main():
    path = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with Client(name="gdbm-counter") as arb:
        for _ in range(rounds):
            with arb.lease("gdbm:" + path, timeout=60) as lease:
                print(add_one(path, lease))


if __name__ == "__main__":
    main()
