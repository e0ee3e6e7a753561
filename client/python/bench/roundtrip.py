"""Lease round trip from Python: acquire + release of an uncontended
resource, sync and asyncio, against a private arbiterd; also a Ping and the
same exchange over a raw socket (no client machinery) for comparison.

usage: ARBITER_BUILD=/abs/build python bench/roundtrip.py [-n 2000] [-r 5]

Prints the median and p90/p99 of each of -r rounds of -n iterations (after
a warm-up), and the best round's median. Not a test: numbers depend on the
machine and its load.
"""
import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import arbiter_client as ac
from arbiter_client import _proto as P
from arbiter_client._proto import pb

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def start_daemon():
    build = os.environ.get("ARBITER_BUILD") or os.path.join(REPO, "build")
    d = tempfile.mkdtemp(prefix="arbbench-", dir="/tmp")
    sock = os.path.join(d, "a.sock")
    p = subprocess.Popen([os.path.join(build, "arbiterd"), "-S", sock, "-s",
                          os.path.join(d, "data")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    for line in p.stderr:                    # its own word that it is ready
        if b'msg="arbiter ready"' in line:
            break
    else:
        raise SystemExit("arbiterd exited before it was ready")
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
    return p, d, sock


def stats(samples):
    s = sorted(samples)
    n = len(s)
    return s[n // 2] * 1e6, s[n * 9 // 10] * 1e6, s[n * 99 // 100] * 1e6


def report(label, rounds):
    meds = [r[0] for r in rounds]
    for i, (med, p90, p99) in enumerate(rounds):
        print("  %-28s round %d: median %7.1f us  p90 %7.1f  p99 %7.1f" %
              (label, i + 1, med, p90, p99))
    print("%-30s best median %.1f us, median of medians %.1f us" %
          (label, min(meds), sorted(meds)[len(meds) // 2]))


def bench_sync(sock, n, r):
    rounds, pings = [], []
    with ac.Client(sock, name="bench") as c:
        for _ in range(300):
            c.acquire("bench").release()
        for _ in range(r):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                lease = c.acquire("bench")
                lease.release()
                ts.append(time.perf_counter() - t)
            rounds.append(stats(ts))
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                c.ping()
                ts.append(time.perf_counter() - t)
            pings.append(stats(ts))
    report("sync acquire+release", rounds)
    report("sync ping", pings)


def bench_async(sock, n, r):
    async def main():
        rounds = []
        async with ac.AsyncClient(sock, name="bench-async") as c:
            for _ in range(300):
                await (await c.acquire("bench")).release()
            for _ in range(r):
                ts = []
                for _ in range(n):
                    t = time.perf_counter()
                    lease = await c.acquire("bench")
                    await lease.release()
                    ts.append(time.perf_counter() - t)
                rounds.append(stats(ts))
        return rounds
    report("async acquire+release", asyncio.run(main()))


def bench_raw(sock, n, r):
    """The same two exchanges with no client machinery at all."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    reader = P.FrameReader(sock)
    buf = bytearray(65536)

    def call(req):
        s.sendall(P.encode(req))
        while True:
            k = s.recv_into(buf)
            msgs = reader.feed(memoryview(buf)[:k])
            if msgs:
                return msgs[0]
    call(pb.Request(id=1, hello=pb.Hello(protocol_version=1)))
    rounds = []
    i = 1
    for _ in range(r):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            i += 1
            m = call(pb.Request(id=i, acquire=pb.Acquire(resource=b"raw")))
            i += 1
            call(pb.Request(id=i, release=pb.Release(
                lease_id=m.granted.lease_id)))
            ts.append(time.perf_counter() - t)
        rounds.append(stats(ts))
    s.close()
    report("raw socket acquire+release", rounds)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-r", type=int, default=5)
    a = ap.parse_args()
    p, d, sock = start_daemon()
    try:
        print("arbiter_client from", os.path.dirname(ac.__file__))
        print("%d iterations x %d rounds, load average %s" %
              (a.n, a.r, " ".join("%.2f" % x for x in os.getloadavg())))
        bench_raw(sock, a.n, a.r)
        bench_sync(sock, a.n, a.r)
        bench_async(sock, a.n, a.r)
        print("load average after: %s" %
              " ".join("%.2f" % x for x in os.getloadavg()))
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(20)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
