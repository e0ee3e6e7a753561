"""Lease loss as the application sees it: after kill -9 of the daemon the
error says the connection was lost and that the daemon may have died; a lock
object whose lease was revoked (admin revoke, ttl expiry, daemon lost) is no
longer locked, and its next acquire takes a new lease."""
import asyncio
import queue
import signal

import pytest

import arbiter_client as ac

WAIT = 20.0


def assert_lost_message(e, path, after=False):
    """e says the connection was lost; after: e is the next call's failure
    to connect again (NotRunning), which tells of the loss too."""
    msg = str(e)
    assert isinstance(e, ac.NotRunning if after else ac.ConnectionLost), \
        repr(e)
    assert "the connection to arbiterd on %s was lost" % path in msg, msg
    assert "may have died" in msg, msg
    assert "closed it" not in msg, msg


def test_sync_kill_9_says_connection_lost(fresh_daemon, res):
    d = fresh_daemon()
    got = queue.Queue()
    c = ac.Client(d.socket, on_revoked=got.put)
    lease = c.acquire(res)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(WAIT)
    rev = got.get(timeout=WAIT)              # seen at once, while idle
    assert rev.reason == "DISCONNECT"
    assert "may have died" in rev.message
    with pytest.raises(ac.NotRunning) as ei:
        c.ping()
    assert_lost_message(ei.value, d.socket, after=True)
    with pytest.raises(ac.LeaseRevoked) as ei:
        lease.release()
    assert "may have died" in str(ei.value)


def test_async_kill_9_says_connection_lost(fresh_daemon, res):
    d = fresh_daemon()

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        c = ac.AsyncClient(d.socket, on_revoked=got.set_result)
        await c.acquire(res)
        d.proc.send_signal(signal.SIGKILL)
        rev = await asyncio.wait_for(got, WAIT)
        assert rev.reason == "DISCONNECT"
        # The connection's end can be seen before the dying daemon's
        # listening socket is closed: wait until it is gone for good, so
        # the next call finds nobody listening (as the sync test does).
        await loop.run_in_executor(None, d.proc.wait, WAIT)
        with pytest.raises(ac.NotRunning) as ei:
            await c.ping()
        assert_lost_message(ei.value, d.socket, after=True)
    asyncio.run(main())


def test_clean_shutdown_is_not_called_a_death(fresh_daemon, res):
    d = fresh_daemon()
    got = queue.Queue()
    c = ac.Client(d.socket, on_revoked=got.put)
    c.acquire(res)
    d.proc.send_signal(signal.SIGTERM)
    assert got.get(timeout=WAIT).reason == "SHUTDOWN"
    assert d.proc.wait(WAIT) == 0
    with pytest.raises(ac.NotRunning) as ei:
        c.ping()
    assert "arbiterd on %s shut down" % d.socket in str(ei.value)


def test_sync_is_locked_after_admin_revoke(daemon, res):
    c = ac.Client(daemon.socket)
    admin = ac.Client(daemon.socket)
    got = queue.Queue()
    lock = ac.ArbiterLock(res, timeout=5, client=c, on_revoked=got.put)
    lock.acquire()
    assert lock.is_locked
    admin.revoke(lease_id=lock.lease.lease_id)
    assert got.get(timeout=WAIT).reason == "ADMIN"
    assert not lock.is_locked
    # The next acquire takes a new lease; one release frees it for others.
    lock.acquire()
    assert lock.is_locked and lock.lease.held and lock.lock_counter == 1
    lock.release()
    assert not lock.is_locked
    admin.acquire(res, timeout=0).release()
    # The acquire still open on the revoked lease reports it when released.
    with pytest.raises(ac.LeaseRevoked):
        lock.release()
    lock.release()                           # then: unlocked, a no-op
    # The usual form: leaving the block raises, the lock is then free.
    with pytest.raises(ac.LeaseRevoked):
        with lock:
            admin.revoke(lease_id=lock.lease.lease_id)
            got.get(timeout=WAIT)
            assert not lock.is_locked
    with lock:
        assert lock.is_locked
    c.close()
    admin.close()


def test_sync_is_locked_after_ttl_expiry_and_daemon_loss(fresh_daemon, res):
    d = fresh_daemon()
    got = queue.Queue()
    c = ac.Client(d.socket)
    c._schedule_renew = lambda lease: None   # a hung holder: no renewals
    lock = ac.ArbiterLock(res, timeout=5, client=c, ttl=0.2,
                          on_revoked=got.put)
    lock.acquire()
    assert got.get(timeout=WAIT).reason == "EXPIRED"
    assert not lock.is_locked
    lock.acquire()
    assert lock.is_locked
    d.proc.send_signal(signal.SIGKILL)
    assert got.get(timeout=WAIT).reason == "DISCONNECT"
    assert not lock.is_locked


def test_async_is_locked_after_admin_revoke(daemon, res):
    async def main():
        got = asyncio.Queue()
        c = ac.AsyncClient(daemon.socket)
        lock = c.lock(res, timeout=5, on_revoked=got.put_nowait)
        async with ac.AsyncClient(daemon.socket) as admin:
            await lock.acquire()
            assert lock.is_locked
            await admin.revoke(lease_id=lock.lease.lease_id)
            rev = await asyncio.wait_for(got.get(), WAIT)
            assert rev.reason == "ADMIN"
            assert not lock.is_locked
            await lock.acquire()
            assert lock.is_locked and lock.lock_counter == 1
            await lock.release()
            assert not lock.is_locked
            await (await admin.acquire(res, timeout=0)).release()
            with pytest.raises(ac.LeaseRevoked):
                await lock.release()
        await c.close()
    asyncio.run(main())
