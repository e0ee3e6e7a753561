"""A worker process for test_stores.py: read-modify-writes of a counter in a
real single-process store, each one with the store opened only under an
exclusive lease, through the store's example in client/python/examples.

usage: store_worker.py KIND PATH ROUNDS SOCKET [STOP_AT]

KIND is gdbm, leveldb or sqlite. Each line on stdout is one event:

  inc TOKEN VALUE T      an increment committed under the lease with fencing
                         token TOKEN, making the counter VALUE; T is the
                         CLOCK_MONOTONIC time the lease was granted
  storeerr MESSAGE       the store refused to open: another process had it
  revoked MESSAGE        the lease ended before it was released
  midwrite               (round STOP_AT only) the store is open and half
                         written; the worker waits here to be killed
  done ROUNDS            the worker finished
"""
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

from arbiter_client import Client, LeaseRevoked  # noqa: E402

MODULES = {"gdbm": "gdbm_counter", "leveldb": "leveldb_counter",
           "sqlite": "sqlite_counter"}


def say(*words):
    os.write(1, (" ".join(str(w) for w in words) + "\n").encode())


def stop_here():
    say("midwrite")
    os.read(0, 1)                   # the test kills this process meanwhile
    os._exit(4)


def main():
    kind, path, rounds, sock = sys.argv[1], sys.argv[2], int(sys.argv[3]), \
        sys.argv[4]
    stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    store = __import__(MODULES[kind])
    resource = "%s:%s" % (kind, path)
    with Client(sock, name="store-worker") as arb:
        say("ready")  # connected: from now on it rides out a restart
        for i in range(rounds):
            try:
                with arb.lease(resource, timeout=60) as lease:
                    granted = time.monotonic()
                    try:
                        value = store.add_one(
                            path, lease, stop_here if i == stop_at else None)
                    except store.LOCKED as exc:
                        say("storeerr", exc)
                        continue
                    say("inc", lease.token, value, "%.6f" % granted)
            except LeaseRevoked as exc:
                say("revoked", exc)
    say("done", rounds)


if __name__ == "__main__":
    main()
