"""Descriptors and the metrics port: what a peer or an exhausted descriptor
table can make the daemon do, and what it must not (grow without bound, spin,
stop granting)."""
import os
import resource
import select
import socket
import threading
import time

import pytest

import harness
from harness import grant_many, WAIT, Wire, pb


# Valgrind answers the daemon's getrlimit/setrlimit itself and keeps
# descriptors of its own at the top of the range: the figures differ.
own_limits = pytest.mark.skipif(
    bool(harness.WRAPPER), reason="the daemon runs under a wrapper "
    "(valgrind) that emulates the open-file limit")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def nofile_limits(pid):
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no open-file limit for pid %d" % pid)


def nofile(soft, hard=None):
    """A preexec_fn giving the daemon this open-file limit."""
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard or soft))
    return apply


def metrics_daemon(tmp_path, env=None, **kw):
    """A daemon serving metrics on a free port; env: more settings as
    ARBITER_SECTION_KEY variables."""
    port = free_port()
    return harness.Daemon(tmp_path, env=env, args=[
        "-o", "metrics.listen=127.0.0.1:%d" % port], **kw), port


def assert_served(d):
    """A bystander Unix client still gets answers."""
    w = Wire(d.socket, "bystander")
    assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
    w.close()


def http_get(port, path="/healthz"):
    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    return harness.read_until_closed(s)


def flood(port, head, total=64 << 20, seconds=5):
    """Send head, then up to total bytes of 'a' for at most seconds, while
    a thread reads what the daemon answers. Returns (sent, reply, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=seconds)
    got = {"reply": b"", "closed": False}

    def reader():
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got["reply"] += chunk
            got["closed"] = True
        except ConnectionResetError:
            got["closed"] = True
        except OSError:
            pass

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    chunk = b"a" * (1 << 20)
    sent = 0
    end = time.monotonic() + seconds
    try:
        s.sendall(head)
        while sent < total and time.monotonic() < end:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    t.join(seconds)
    s.close()
    return sent, got["reply"], got["closed"]


# ------------------------------------------------------------ metrics port

def test_a_huge_request_head_is_refused_and_memory_stays_bounded(tmp_path):
    d, port = metrics_daemon(tmp_path)
    try:
        before = rss_kib(d.pid)
        _, reply, closed = flood(port, b"GET /metrics HTTP/1.1\r\nX-Big: ")
        grown = rss_kib(d.pid) - before
        assert grown < 16 << 10, "daemon grew by %d KiB" % grown
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
        assert closed
        assert_served(d)
        assert b" 200 OK" in http_get(port)
    finally:
        harness.check_clean_exit(d)


def test_a_huge_request_body_is_refused_and_memory_stays_bounded(tmp_path):
    d, port = metrics_daemon(tmp_path)
    try:
        before = rss_kib(d.pid)
        _, reply, closed = flood(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Length: 1073741824\r\n\r\n")
        grown = rss_kib(d.pid) - before
        assert grown < 16 << 10, "daemon grew by %d KiB" % grown
        assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]
        assert closed
        # A small body is read and dropped: the request is answered.
        s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        s.sendall(b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert b" 200 OK" in harness.read_until_closed(s)
        assert_served(d)
    finally:
        harness.check_clean_exit(d)


def test_metrics_connections_are_capped_and_the_rest_refused(tmp_path):
    d, port = metrics_daemon(tmp_path, {
        "ARBITER_METRICS_MAX_CONNECTIONS": "4",
        "ARBITER_METRICS_TIMEOUT_MS": "60000"})
    socks = []
    try:
        before = open_fds(d.pid)
        for _ in range(100):
            socks.append(socket.create_connection(("127.0.0.1", port),
                                                  timeout=WAIT))
        # The refused ones are answered 503 and closed at once.
        refused, pending = [], list(socks)
        end = time.monotonic() + 5 * harness.SLOW
        while len(refused) < 96 and time.monotonic() < end:
            ready, _, _ = select.select(pending, [], [], 0.2)
            for s in ready:
                try:
                    data = s.recv(4096)
                except ConnectionResetError:
                    data = b""
                refused.append(data)
                pending.remove(s)
        assert len(refused) == 96, "%d refused" % len(refused)
        assert any(r.startswith(b"HTTP/1.1 503 ") for r in refused)
        # 4 kept, give or take one a wrapper (valgrind) opens meanwhile.
        assert open_fds(d.pid) <= before + 4 + 2
        assert b" 503 " in http_get(port)  # still full
        assert_served(d)
        for s in pending:  # free the slots: served again
            s.close()
        end = time.monotonic() + WAIT
        while b" 200 OK" not in http_get(port):
            assert time.monotonic() < end, "metrics never served again"
        assert len([l for l in d.log.drain()
                    if "metrics connection refused" in l]) <= 3
    finally:
        for s in socks:
            s.close()
        harness.check_clean_exit(d)


def test_idle_and_trickling_metrics_connections_are_closed(tmp_path):
    d, port = metrics_daemon(tmp_path, {"ARBITER_METRICS_TIMEOUT_MS": "500"})
    try:
        idle = socket.create_connection(("127.0.0.1", port), timeout=3)
        t0 = time.monotonic()
        data = harness.read_until_closed(idle)
        assert time.monotonic() - t0 < 2.5
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
        # A byte every 50 ms keeps no connection open past the deadline.
        slow = socket.create_connection(("127.0.0.1", port), timeout=3)
        t0 = time.monotonic()
        with pytest.raises(OSError):
            while time.monotonic() - t0 < 3:
                slow.sendall(b"X")
                time.sleep(0.05)
        assert time.monotonic() - t0 < 2.5
        slow.close()
        assert_served(d)
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ descriptors

@own_limits
def test_out_of_descriptors_a_pending_connection_does_not_spin(tmp_path):
    d, port = metrics_daemon(tmp_path)
    held = [Wire(d.socket, "held%d" % i) for i in range(6)]
    waiting = []
    soft, hard = nofile_limits(d.pid)
    try:
        # No descriptor left: every accept now fails with EMFILE.
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE,
                         (open_fds(d.pid), hard))
        start = len(d.log.drain())
        waiting.append(socket.create_connection(("127.0.0.1", port),
                                                timeout=WAIT))
        for _ in range(3):
            waiting.append(harness.connect_raw(d.socket))
        cpu0 = cpu_seconds(d.pid)
        time.sleep(1.5)  # the measurement itself: how busy is it meanwhile
        busy = cpu_seconds(d.pid) - cpu0
        lines = [l for l in d.log.drain()[start:] if "accept" in l]
        assert busy < 0.2, "daemon used %.2f s of CPU in 1.5 s" % busy
        assert 1 <= len(lines) <= 4, "\n".join(lines[:10])
        # Descriptors free up: the listeners accept again at once.
        for w in held:
            w.close()
        d.log.wait_for("accept resumed", start=start)
        assert_served(d)
    finally:
        resource.prlimit(d.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for s in waiting:
            s.close()
        harness.check_clean_exit(d)


@own_limits
def test_idle_connections_cannot_take_the_descriptors_tokens_need(tmp_path):
    d = harness.Daemon(tmp_path, preexec_fn=nofile(64),
                       args=["-o", "limits.handshake_timeout_ms=600000"])
    fillers = []
    try:
        w = Wire(d.socket)
        for _ in range(80):
            fillers.append(harness.connect_raw(d.socket))
        # Wait until the daemon has run out (accept paused) or refused
        # clients to keep its own descriptors (open_file_limit).
        with d.log.cond:
            assert d.log.cond.wait_for(lambda: [
                l for l in d.log.lines if "accept paused" in l or
                "reason=open_file_limit" in l], WAIT), "fillers never taken"
        # 12,000 grants cross the first block of 10,000 tokens: the next
        # block's state write needs descriptors, and gets them.
        n, last = grant_many(w, 12000)
        assert n == 12000, "grants stopped after %d" % n
        assert w.lock("db").token == last + 1
        assert not [l for l in d.log.drain()
                    if "cannot reserve fencing tokens" in l]
        # The clients past the reserve were told why and closed.
        end, told = time.monotonic() + WAIT, b""
        while b"open-file limit" not in told:
            assert time.monotonic() < end, "no connection refused"
            ready, _, _ = select.select(fillers, [], [], 0.2)
            for s in ready:
                try:
                    told += s.recv(4096)
                except ConnectionResetError:
                    pass
                fillers.remove(s)
                s.close()
    finally:
        for s in fillers:
            s.close()
        harness.check_clean_exit(d)


@own_limits
def test_the_start_warns_when_max_connections_exceeds_the_limit(tmp_path):
    d = harness.Daemon(tmp_path, name="a", preexec_fn=nofile(64))
    try:
        line = d.log.wait_for("limits.max_connections is above")
        assert "max_connections=4096" in line and "nofile=64" in line
        allowed = int(line.split("allowed=")[1].split()[0])
        assert 0 < allowed < 64
        assert "raise the open-file limit" in line
        assert "lower limits.max_connections to %d" % allowed in line
    finally:
        harness.check_clean_exit(d)
    fits = harness.Daemon(tmp_path, name="b", preexec_fn=nofile(64),
                          args=["-o", "limits.max_connections=%d" % allowed])
    try:
        assert_served(fits)
        assert not [l for l in fits.log.drain()
                    if "limits.max_connections is above" in l]
    finally:
        harness.check_clean_exit(fits)


@own_limits
def test_the_soft_open_file_limit_is_raised_to_the_hard_one(tmp_path):
    d = harness.Daemon(tmp_path, preexec_fn=nofile(64, 256))
    try:
        assert nofile_limits(d.pid) == (256, 256)
    finally:
        harness.check_clean_exit(d)
