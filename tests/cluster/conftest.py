import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import etcdlib  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))
import harness  # noqa: E402


@pytest.fixture(autouse=True)
def scan_every_daemon():
    """Every arbiterd a test starts is stopped after it and scanned for
    sanitizer and valgrind reports, as in the integration tests."""
    since = len(harness.STARTED)
    yield
    harness.scan_started(since)

BUILD = os.path.abspath(os.environ.get("ARBITER_BUILD") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "build"))
PROBE = os.path.join(BUILD, "tests", "etcd_probe")


@pytest.fixture(scope="module")
def cluster():
    """One 3-member etcd for a test module, stopped at its end."""
    if not etcdlib.have_etcd():
        pytest.skip("etcd is not installed: sh scripts/deps.sh test "
                    "installs Debian's etcd-server")
    c = etcdlib.Cluster().start()
    yield c
    c.stop()


@pytest.fixture
def healthy(cluster):
    """The module's cluster with every member running and a leader."""
    for m in cluster.members:
        if m.stopped:
            m.sigcont()
        if not m.alive():
            m.start(state="existing")
            m.wait_ready()
    cluster.wait_healthy()
    return cluster


class Probe:
    """tests/cluster/etcd_probe.c in a child: commands in, lines out."""

    def __init__(self, endpoints, *args):
        if not os.access(PROBE, os.X_OK):
            pytest.skip("%s not built: run make check-cluster" % PROBE)
        self.proc = subprocess.Popen([PROBE, "-e", endpoints] + list(args),
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.out = etcdlib.Lines(self.proc.stdout)
        self.used = set()
        first = self.next(lambda l: True)
        if first != "ready":
            raise RuntimeError("etcd_probe did not start: " + first)

    def send(self, line):
        self.proc.stdin.write((line + "\n").encode())
        self.proc.stdin.flush()

    def next(self, match, timeout=etcdlib.WAIT):
        """The first line not taken yet for which match(line) holds.

        Lines come from several streams (answers, watch events, fail-over
        notes) in whatever order the loop ran them, so a line that does
        not match stays for a later call.
        """
        import time
        deadline = time.monotonic() + timeout
        with self.out.cond:
            while True:
                for i, l in enumerate(self.out.lines):
                    if i not in self.used and match(l):
                        self.used.add(i)
                        return l
                if self.out.eof:
                    raise RuntimeError("etcd_probe exited:\n" +
                                       self.out.tail())
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("etcd_probe: no awaited line:\n" +
                                       self.out.tail())
                self.out.cond.wait(left)

    def call(self, line, timeout=etcdlib.WAIT):
        """Send a command and return its answer as a dict (ok, op, ...)."""
        op = line.split()[0]
        self.send(line)
        l = self.next(lambda x: (x + " ").startswith(
            ("ok %s " % op, "err %s " % op)), timeout)
        return parse(l)

    def lines(self, prefix):
        with self.out.cond:
            return [l for l in self.out.lines if l.startswith(prefix)]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.out.thread.join(5)
        return self.proc.returncode


def parse(line):
    """'ok op a=1 b=x msg=free text' -> {'ok': True, 'op': 'op', ...}."""
    head, _, msg = line.partition(" msg=")
    words = head.split()
    d = {"ok": words[0] == "ok", "op": words[1], "line": line}
    for w in words[2:]:
        k, _, v = w.partition("=")
        d[k] = v
    if msg:
        d["msg"] = msg
    return d


@pytest.fixture
def probe():
    """probe(endpoints, *args) -> Probe; every probe closed at the end."""
    made = []

    def make(endpoints, *args):
        p = Probe(endpoints, *args)
        made.append(p)
        return p

    yield make
    for p in made:
        rc = p.close()
        assert rc == 0, "etcd_probe exited %s:\n%s" % (rc, p.out.tail())
