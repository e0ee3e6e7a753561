"""A counter in a LevelDB database shared by several processes.

LevelDB lets one process at a time open a database (a second one gets
"IO error: lock .../LOCK: already held by process"), so each process opens
it only while it holds the lease, and closes it before letting go.

    python3 leveldb_counter.py /var/lib/app/visits.ldb 10

(Debian: apt-get install python3-plyvel.)
"""
import os
import sys

import plyvel

from arbiter_client import Client

# What plyvel raises when another process has the database open.
LOCKED = (plyvel.IOError,)


def add_one(path, lease, before_write=None):
    """One read-modify-write of the counter; call it holding lease. The
    write carries the lease's fencing token beside the value, so a reader
    can tell which holder wrote last. Returns the new value. before_write(),
    if given, runs with the database open before the write."""
    db = plyvel.DB(path, create_if_missing=True)
    try:
        n = int(db.get(b"counter", b"0")) + 1
        if before_write is not None:
            before_write()
        with db.write_batch(sync=True) as wb:   # both keys or neither
            wb.put(b"counter", b"%d" % n)
            wb.put(b"token", b"%d" % lease.token)
    finally:
        db.close()
    return n


def main():
    path = os.path.abspath(sys.argv[1])
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    with Client(name="leveldb-counter") as arb:
        for _ in range(rounds):
            with arb.lease("leveldb:" + path, timeout=60) as lease:
                print(add_one(path, lease))


if __name__ == "__main__":
    main()
