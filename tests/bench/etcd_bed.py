"""The etcd of arbiter-bench's cluster section: the test bed's 3 members.

    python3 tests/bench/etcd_bed.py

Starts tests/cluster/etcdlib.py's Cluster (Debian's etcd, 3 members on free
loopback ports, data on tmpfs, niced), and once it is healthy prints one line

    endpoints URL0,URL1,URL2 leader=I

(I: the index of the leader at that moment), then waits. End of input (the
bench closes the pipe, or dies) stops every member and removes the data.
On failure it prints one line "error MESSAGE" and exits 1.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "cluster"))

import etcdlib  # noqa: E402


def main():
    if not etcdlib.have_etcd():
        print("error no %s: sh scripts/deps.sh bench installs Debian's "
              "etcd-server" % etcdlib.ETCD, flush=True)
        return 1
    try:
        c = etcdlib.Cluster().start()
        lead = c.leader()
    except Exception as e:  # noqa: BLE001 - any failure is reported as a line
        print("error etcd did not start: %s" % str(e).replace("\n", " "),
              flush=True)
        return 1
    try:
        print("endpoints %s leader=%d" % (c.endpoints(),
                                          c.members.index(lead)), flush=True)
        sys.stdin.read()
    finally:
        c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
