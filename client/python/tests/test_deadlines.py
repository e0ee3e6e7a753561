"""Waits are bounded by the client: acquire(timeout=T) returns within T
plus a small margin whatever the daemon does (stopped with SIGSTOP, or a
server that never answers), withdraws the request, and releases a grant
that comes after it gave up; every other request is bounded by io_timeout.

Each wait runs in a thread (or with asyncio.wait_for) bounded well beyond
the margin, so a client that waits forever fails the test instead of
hanging it."""
import asyncio
import os
import shutil
import signal
import tempfile
import threading
import time

import pytest

import arbiter_client as ac
from fake_arbiter import Fake

MARGIN = 0.25           # the bound: timeout + MARGIN
HANG = 8.0              # how long a test waits for a client that hangs


def timed(fn, *args, **kw):
    """(seconds, exception or result) of fn run in a thread; fails the test
    if it has not returned after HANG seconds."""
    out = {}

    def run():
        t = time.monotonic()
        try:
            out["r"] = fn(*args, **kw)
        except BaseException as e:
            out["r"] = e
        out["t"] = time.monotonic() - t
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(HANG)
    if th.is_alive():
        pytest.fail("%s still waiting after %g s: the client trusts the "
                    "daemon to answer" % (getattr(fn, "__name__", fn), HANG))
    return out["t"], out["r"]


def atimed(coro):
    async def main():
        t = time.monotonic()
        try:
            r = await asyncio.wait_for(coro, HANG)
        except asyncio.TimeoutError:
            pytest.fail("still waiting after %g s: the client trusts the "
                        "daemon to answer" % HANG)
        except ac.ArbiterError as e:
            r = e
        return time.monotonic() - t, r
    return asyncio.run(main())


def assert_timeout(took, r, timeout, path):
    assert isinstance(r, ac.Timeout), repr(r)
    assert timeout <= took <= timeout + MARGIN, took
    assert path in str(r)


@pytest.fixture
def stopped(fresh_daemon):
    """A real daemon that a test stops with SIGSTOP (SIGCONT at the end,
    before it is killed)."""
    d = fresh_daemon()
    yield d
    try:
        os.kill(d.pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


@pytest.fixture
def fakes():
    made = []

    def make(mode):
        d = tempfile.mkdtemp(prefix="arbdl-", dir="/tmp")
        f = Fake(os.path.join(d, "a.sock"), mode)
        made.append((f, d))
        return f
    yield make
    for f, d in made:
        f.stop()
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------ stopped daemon

def test_sync_acquire_deadline_with_a_stopped_daemon(stopped, res):
    d = stopped
    c = ac.Client(d.socket)
    lock = ac.ArbiterLock(res + "-lock", timeout=1, client=c)
    os.kill(d.pid, signal.SIGSTOP)
    took, r = timed(c.acquire, res, timeout=2)
    assert_timeout(took, r, 2, d.socket)
    assert "withdrawn" in str(r)
    took, r = timed(lock.acquire)
    assert_timeout(took, r, 1, d.socket)
    assert not lock.is_locked
    # Same thread again: no AlreadyHeld for the request it gave up.
    took, r = timed(c.acquire, res, timeout=0.5)
    assert_timeout(took, r, 0.5, d.socket)
    os.kill(d.pid, signal.SIGCONT)
    # The withdrawals reached the daemon: nothing of ours holds or waits.
    other = ac.Client(d.socket)
    other.acquire(res, timeout=5).release()
    other.acquire(res + "-lock", timeout=5).release()
    with c.lease(res, timeout=5):
        pass
    other.close()
    c.close()


def test_async_acquire_deadline_with_a_stopped_daemon(stopped, res):
    d = stopped

    async def main():
        c = ac.AsyncClient(d.socket)
        await c.connect()
        lock = c.lock(res + "-lock", timeout=1)
        os.kill(d.pid, signal.SIGSTOP)
        t = time.monotonic()
        try:
            await asyncio.wait_for(c.acquire(res, timeout=2), HANG)
            r = None
        except ac.ArbiterError as e:
            r = e
        assert_timeout(time.monotonic() - t, r, 2, d.socket)
        t = time.monotonic()
        try:
            await asyncio.wait_for(lock.acquire(), HANG)
            r = None
        except ac.ArbiterError as e:
            r = e
        assert_timeout(time.monotonic() - t, r, 1, d.socket)
        assert not lock.is_locked
        os.kill(d.pid, signal.SIGCONT)
        async with ac.AsyncClient(d.socket) as other:
            await (await other.acquire(res, timeout=5)).release()
            await (await other.acquire(res + "-lock", timeout=5)).release()
        async with c.lease(res, timeout=5):
            pass
        await c.close()
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        pytest.fail("acquire still waiting after %g s with a stopped "
                    "daemon" % HANG)


# ------------------------------------------------------------ silent server

def test_sync_acquire_deadline_with_a_silent_server(fakes, res):
    f = fakes("silent")
    c = ac.Client(f.path)
    took, r = timed(c.acquire, res, timeout=1)
    assert_timeout(took, r, 1, f.path)
    assert f.wait_for("withdraw").startswith("withdraw ")
    took, r = timed(c.acquire, res, timeout=0)
    assert isinstance(r, ac.WouldBlock), repr(r)
    assert took <= MARGIN
    c.close()


def test_async_acquire_deadline_with_a_silent_server(fakes, res):
    f = fakes("silent")

    async def main():
        c = ac.AsyncClient(f.path)
        t = time.monotonic()
        try:
            await asyncio.wait_for(c.acquire(res, timeout=1), HANG)
        except ac.ArbiterError as e:
            assert_timeout(time.monotonic() - t, e, 1, f.path)
        else:
            pytest.fail("granted by a silent server?")
        t = time.monotonic()
        try:
            await asyncio.wait_for(c.acquire(res, timeout=0), HANG)
        except ac.WouldBlock:
            assert time.monotonic() - t <= MARGIN
        await c.close()
    try:
        asyncio.run(main())
    except asyncio.TimeoutError:
        pytest.fail("acquire still waiting after %g s" % HANG)
    assert f.wait_for("withdraw").startswith("withdraw ")


@pytest.mark.parametrize("op", ["ping", "stats", "status"])
def test_sync_requests_are_bounded_by_io_timeout(fakes, op):
    f = fakes("silent")
    c = ac.Client(f.path, io_timeout=0.5)
    took, r = timed(getattr(c, op))
    assert isinstance(r, ac.ConnectionLost), repr(r)
    assert 0.5 <= took <= 0.5 + MARGIN
    what = {"ping": "ping", "stats": "stats request",
            "status": "status request"}[op]
    assert "did not answer the %s within 0.5 s" % what in str(r)
    assert f.path in str(r)
    assert c.closed


@pytest.mark.parametrize("op", ["ping", "stats", "status"])
def test_async_requests_are_bounded_by_io_timeout(fakes, op):
    f = fakes("silent")

    async def main():
        c = ac.AsyncClient(f.path, io_timeout=0.5)
        await c.connect()
        t = time.monotonic()
        with pytest.raises(ac.ConnectionLost) as ei:
            await asyncio.wait_for(getattr(c, op)(), HANG)
        assert 0.5 <= time.monotonic() - t <= 0.5 + MARGIN
        assert f.path in str(ei.value)
        assert c.closed
    asyncio.run(main())


def test_release_and_renew_are_bounded(fakes, res):
    f = fakes("grant-only")
    c = ac.Client(f.path, io_timeout=0.5)
    lease = c.acquire(res, timeout=0)
    took, r = timed(lease.renew, 5)
    assert isinstance(r, ac.ConnectionLost) and took <= 0.5 + MARGIN, r
    c = ac.Client(f.path, io_timeout=0.5)
    lease = c.acquire(res, timeout=0)
    took, r = timed(lease.release)
    assert took <= 0.5 + MARGIN, took

    async def main():
        c = ac.AsyncClient(f.path, io_timeout=0.5)
        lease = await c.acquire(res, timeout=0)
        t = time.monotonic()
        try:
            await asyncio.wait_for(lease.release(), HANG)
        except ac.ArbiterError:
            pass
        assert time.monotonic() - t <= 0.5 + MARGIN
    asyncio.run(main())


# ------------------------------------------------------------ late grant

def test_sync_late_grant_is_released(fakes, res):
    f = fakes("late")
    revoked = []
    c = ac.Client(f.path, on_revoked=revoked.append)
    took, r = timed(c.acquire, res, timeout=0.3)
    assert_timeout(took, r, 0.3, f.path)
    f.wait_for("withdraw")
    granted = int(f.wait_for("granted-late").split()[1])
    # The grant that came after the client gave up is released at once...
    assert f.wait_for("release") == "release %d" % granted
    # ...and was never reported as held.
    assert not c._leases and not revoked
    c.close()


def test_async_late_grant_is_released(fakes, res):
    f = fakes("late")

    async def main():
        c = ac.AsyncClient(f.path)
        t = time.monotonic()
        with pytest.raises(ac.Timeout) as ei:
            await asyncio.wait_for(c.acquire(res, timeout=0.3), HANG)
        assert_timeout(time.monotonic() - t, ei.value, 0.3, f.path)
        # The loop keeps running (reading the late grant) while a thread
        # reads what the fake server saw.
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, f.wait_for, "withdraw")
        line = await loop.run_in_executor(None, f.wait_for, "granted-late")
        granted = int(line.split()[1])
        line = await loop.run_in_executor(None, f.wait_for, "release")
        assert line == "release %d" % granted
        assert not c._leases
        await c.close()
    asyncio.run(main())


def test_full_listen_queue_is_reported_at_once():
    # A stopped daemon whose listen queue is full: connect must not hang,
    # and asyncio must not take the refused connect for a connection.
    import socket
    path = os.path.join(tempfile.mkdtemp(prefix="arbdl-", dir="/tmp"), "s")
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(path)
    lsock.listen(0)
    fill = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            fill.append(s)
            try:
                s.connect(path)
            except BlockingIOError:
                break
        took, r = timed(ac.Client, path, connect_timeout=1)
        assert isinstance(r, ac.NotRunning), repr(r)
        assert "listen queue is full" in str(r) and took <= MARGIN
        took, r = atimed(ac.AsyncClient(path, connect_timeout=1).ping())
        assert isinstance(r, ac.NotRunning), repr(r)
        assert "listen queue is full" in str(r) and took <= 1 + MARGIN
    finally:
        for s in fill:
            s.close()
        lsock.close()
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def test_shared_lock_object_keeps_one_deadline(daemon, res):
    # thread_local=False: a thread that first waits for the lock object (held
    # by a thread whose acquire then fails) must not get its full timeout
    # again for the daemon.
    holder = ac.Client(daemon.socket)
    holder.acquire(res)
    c = ac.Client(daemon.socket)
    lock = ac.ArbiterLock(res, client=c, thread_local=False)
    first = threading.Thread(target=timed, args=(lock.acquire, 0.6))
    first.start()
    while not lock._acq_mutex.locked():
        pass                                # the first one is acquiring
    took, r = timed(lock.acquire, 1)
    first.join()
    assert isinstance(r, ac.Timeout), repr(r)
    assert 1 <= took <= 1 + MARGIN, took
    holder.close()
    c.close()


def test_connect_and_handshake_bounded_with_a_stopped_daemon(stopped):
    d = stopped
    os.kill(d.pid, signal.SIGSTOP)
    took, r = timed(ac.Client, d.socket, connect_timeout=0.5)
    assert isinstance(r, ac.ProtocolError), repr(r)
    assert "no answer to Hello from %s" % d.socket in str(r)
    assert took <= 0.5 + MARGIN
    took, r = atimed(ac.AsyncClient(d.socket, connect_timeout=0.5).ping())
    assert isinstance(r, ac.ProtocolError), repr(r)
    assert took <= 0.5 + MARGIN


def test_async_io_timeout_counts_from_each_request(stopped):
    # One watchdog serves every request: a request sent later still gets
    # its whole io_timeout.
    d = stopped

    async def main():
        c = ac.AsyncClient(d.socket, io_timeout=0.6)
        await c.ping()                      # arms the watchdog for t0+0.6
        await asyncio.sleep(0.3)            # a time offset, not a wait
        os.kill(d.pid, signal.SIGSTOP)
        t = time.monotonic()
        with pytest.raises(ac.ConnectionLost):
            await asyncio.wait_for(c.ping(), HANG)
        return time.monotonic() - t
    took = asyncio.run(main())
    assert 0.6 <= took <= 0.6 + MARGIN, took
