"""An unmodified program on a single-process store, for test_intercept.py.

    intercept_worker.py KIND STORE LOG [--rounds N] [--hold]

KIND is how the store locks, each exactly as the real thing does:
  qdrant   qdrant-client's local mode: flock(LOCK_EX | LOCK_NB) on
           STORE/.lock through portalocker, "already accessed" on failure;
  leveldb  LevelDB through plyvel: fcntl(F_SETLK) on STORE/LOCK;
  gdbm     gdbm through dbm.gnu: flock(LOCK_EX | LOCK_NB) on the file STORE.

Each round opens the store (taking its lock), appends "enter PID T" to LOG,
adds one to a counter kept in the store (read, then write), appends
"leave PID T", and closes the store. T is CLOCK_MONOTONIC, one clock for
every process. With --hold it prints "holding" and waits for a line on
stdin before leaving, so the test decides how long the lock is held.
Lines on stdout end with the worker's pid, so that several workers can
share one pipe.
When opening fails it prints "FAILED: " and the store's own error, exits 3.
"""
import dbm.gnu
import fcntl
import os
import sys
import time


def say(line):
    """One line on stdout in one write: lines of workers sharing a pipe
    never mix (print may write a line's end separately)."""
    os.write(1, (line + "\n").encode())


def log(path, what):
    line = "%s %d %.9f\n" % (what, os.getpid(),
                             time.clock_gettime(time.CLOCK_MONOTONIC))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())  # one write: lines never interleave
    finally:
        os.close(fd)


class Qdrant:
    """What qdrant_client.local.qdrant_local.QdrantLocal does on open and
    close, with portalocker.lock(f, EXCLUSIVE | NON_BLOCKING), which is
    fcntl.flock(f.fileno(), LOCK_EX | LOCK_NB) on Linux."""

    def __init__(self, location):
        lock_file_path = os.path.join(location, ".lock")
        if not os.path.exists(lock_file_path):
            os.makedirs(location, exist_ok=True)
            with open(lock_file_path, "w") as f:
                f.write("tmp lock file")
        self._flock_file = open(lock_file_path, "r+")
        try:
            fcntl.flock(self._flock_file.fileno(),
                        fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RuntimeError(
                "Storage folder %s is already accessed by another instance "
                "of Qdrant client. If you require concurrent access, use "
                "Qdrant server instead." % location)
        self.counter = os.path.join(location, "counter")

    def get(self):
        try:
            with open(self.counter) as f:
                return int(f.read() or 0)
        except FileNotFoundError:
            return 0

    def put(self, n):
        with open(self.counter, "w") as f:
            f.write(str(n))

    def close(self):
        self._flock_file.close()


class LevelDB:
    def __init__(self, location):
        import plyvel
        self.db = plyvel.DB(location, create_if_missing=True)

    def get(self):
        return int(self.db.get(b"counter", b"0"))

    def put(self, n):
        self.db.put(b"counter", b"%d" % n, sync=True)

    def close(self):
        self.db.close()


class Gdbm:
    def __init__(self, location):
        self.db = dbm.gnu.open(location, "c")

    def get(self):
        return int(self.db.get(b"counter", b"0"))

    def put(self, n):
        self.db[b"counter"] = b"%d" % n
        self.db.sync()

    def close(self):
        self.db.close()


KINDS = {"qdrant": Qdrant, "leveldb": LevelDB, "gdbm": Gdbm}


def main():
    kind, store, logfile = sys.argv[1:4]
    rounds = 1
    if "--rounds" in sys.argv:
        rounds = int(sys.argv[sys.argv.index("--rounds") + 1])
    hold = "--hold" in sys.argv
    for _ in range(rounds):
        try:
            db = KINDS[kind](store)
        except Exception as e:  # the store's own error, whatever its class
            say("FAILED: %s: %s" % (type(e).__name__, e))
            sys.exit(3)
        log(logfile, "enter")
        db.put(db.get() + 1)
        if hold:
            say("holding %d" % os.getpid())
            sys.stdin.readline()
        log(logfile, "leave")
        db.close()
    say("done %d" % os.getpid())


if __name__ == "__main__":
    main()
