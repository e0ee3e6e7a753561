"""Riding out a daemon restart: arbiterd is killed with SIGKILL and, once it
is dead, started again on the same socket and storage (as systemd or
Kubernetes would). A waiting acquire is granted by the new daemon within its
own timeout; a holder is told its lease was lost and is never given one
behind its back; a Client and a lock object work again after the restart;
a try-lock during the outage answers at once.

The new daemon is started by the test once the old one is dead, and waited
for by its "ready" line; the clients find it by connecting."""
import asyncio
import queue
import signal
import threading
import time

import pytest

import arbiter_client as ac
from conftest import WAIT, Daemon, until

MARGIN = 1.0        # scheduling slack on a loaded machine


def waiters(client, resource):
    r = client.status(resource)["resources"].get(resource)
    return r["waiters"] if r else []


def kill_9(d):
    """SIGKILL the daemon and wait until it is dead."""
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(WAIT)
    return time.monotonic()


@pytest.fixture
def restartable(fresh_daemon):
    """A daemon, and a function that starts another one on its socket and
    storage (stopped at the end like the first)."""
    d = fresh_daemon()
    made = []

    def again():
        assert d.proc.poll() is not None, "the first daemon still runs"
        n = Daemon(dir=d.dir)
        made.append(n)
        return n
    yield d, again
    for n in made:
        n.stop()


def test_sync_waiter_holder_client_and_lock_ride_out_a_restart(restartable,
                                                               res):
    d, again = restartable
    revoked = queue.Queue()
    holder = ac.Client(d.socket, on_revoked=revoked.put)
    waiter = ac.Client(d.socket)
    lock = ac.ArbiterLock(res + "-lock", timeout=10, socket_path=d.socket,
                          on_revoked=revoked.put)
    lock.acquire()
    lease = holder.acquire(res)
    outcome = queue.Queue()

    def wait_for_it():
        try:
            outcome.put(waiter.acquire(res, timeout=10))
        except BaseException as exc:
            outcome.put(exc)
    t = threading.Thread(target=wait_for_it)
    t.start()
    until(lambda: waiters(holder, res), "the waiter to queue")

    killed = kill_9(d)
    reasons = sorted(revoked.get(timeout=WAIT).reason for _ in range(2))
    assert reasons == ["DISCONNECT", "DISCONNECT"]
    assert not lease.held and not lock.is_locked

    # During the outage a try-lock answers at once, the waiter still waits.
    t0 = time.monotonic()
    with pytest.raises(ac.NotRunning, match="nothing listens"):
        holder.acquire(res + "-try", timeout=0)
    assert time.monotonic() - t0 < MARGIN
    assert outcome.empty()

    d2 = again()
    got = outcome.get(timeout=WAIT)
    granted = time.monotonic()
    t.join(WAIT)
    assert isinstance(got, ac.Lease), repr(got)
    assert got.token > lease.token
    print("kill -> grant %.3f s (restart included)" % (granted - killed))

    # The holder was told, and nothing was re-acquired for it.
    with pytest.raises(ac.LeaseRevoked, match="DISCONNECT"):
        lease.release()
    with pytest.raises(ac.LeaseRevoked):
        lock.release()                  # the acquire open on the lost lease
    st = holder.status(res)["resources"][res]
    assert [h["lease_id"] for h in st["holders"]] == [got.lease_id]
    # The Client and the lock object work with the new daemon.
    assert holder.ping()["role"] == "active"
    assert holder.connection_id != waiter.connection_id
    with lock:
        assert lock.is_locked
        assert lock.lease.token > 0
    got.release()
    holder.acquire(res, timeout=0).release()
    for c in (holder, waiter):
        c.close()
    assert d2.proc.poll() is None


def test_sync_timeout_bounds_the_wait_for_a_restart(restartable, res):
    d, _ = restartable
    c = ac.Client(d.socket)
    c.ping()
    kill_9(d)
    t0 = time.monotonic()
    with pytest.raises(ac.Timeout, match="not back in time") as ei:
        c.acquire(res, timeout=0.5)
    took = time.monotonic() - t0
    assert 0.5 <= took <= 0.5 + MARGIN, took
    assert d.socket in str(ei.value)
    # A lock object's try-lock fails at once, without waiting.
    lock = ac.ArbiterLock(res, client=c)
    t0 = time.monotonic()
    with pytest.raises(ac.NotRunning):
        lock.acquire(blocking=False)
    assert time.monotonic() - t0 < MARGIN
    c.close()


def test_sync_waiter_rides_out_a_clean_restart(restartable, res):
    # systemctl restart: SIGTERM, the daemon says it shuts down, a new one.
    d, again = restartable
    holder = ac.Client(d.socket)
    waiter = ac.Client(d.socket)
    holder.acquire(res)
    outcome = queue.Queue()
    t = threading.Thread(target=lambda: outcome.put(
        waiter.acquire(res, timeout=10)))
    t.start()
    until(lambda: waiters(holder, res), "the waiter to queue")
    assert d.stop(signal.SIGTERM) == 0
    again()
    got = outcome.get(timeout=WAIT)
    t.join(WAIT)
    assert isinstance(got, ac.Lease) and got.held
    got.release()
    holder.close()
    waiter.close()


def test_async_waiter_holder_client_and_lock_ride_out_a_restart(restartable,
                                                                res):
    d, again = restartable

    async def main():
        revoked = asyncio.Queue()
        holder = ac.AsyncClient(d.socket, on_revoked=revoked.put_nowait)
        waiter = ac.AsyncClient(d.socket)
        lock = ac.AsyncArbiterLock(res + "-lock", timeout=10,
                                   socket_path=d.socket,
                                   on_revoked=revoked.put_nowait)
        await lock.acquire()
        lease = await holder.acquire(res)
        pending = asyncio.ensure_future(waiter.acquire(res, timeout=10))
        deadline = time.monotonic() + WAIT
        while not (await holder.status(res))["resources"][res]["waiters"]:
            assert time.monotonic() < deadline, "the waiter never queued"
        killed = kill_9(d)
        for _ in range(2):
            rev = await asyncio.wait_for(revoked.get(), WAIT)
            assert rev.reason == "DISCONNECT"
        assert not lease.held and not lock.is_locked

        t0 = time.monotonic()
        with pytest.raises(ac.NotRunning, match="nothing listens"):
            await holder.acquire(res + "-try", timeout=0)
        assert time.monotonic() - t0 < MARGIN
        assert not pending.done()

        await asyncio.get_running_loop().run_in_executor(None, again)
        got = await asyncio.wait_for(pending, WAIT)
        print("kill -> grant %.3f s (restart included)" %
              (time.monotonic() - killed))
        assert isinstance(got, ac.AsyncLease) and got.token > lease.token
        with pytest.raises(ac.LeaseRevoked, match="DISCONNECT"):
            await lease.release()
        with pytest.raises(ac.LeaseRevoked):
            await lock.release()
        st = (await holder.status(res))["resources"][res]
        assert [h["lease_id"] for h in st["holders"]] == [got.lease_id]
        assert (await holder.ping())["role"] == "active"
        async with lock:
            assert lock.is_locked
        await got.release()
        await (await holder.acquire(res, timeout=0)).release()
        await holder.close()
        await waiter.close()
    asyncio.run(main())


def test_async_timeout_bounds_the_wait_for_a_restart(restartable, res):
    d, _ = restartable

    async def main():
        c = ac.AsyncClient(d.socket)
        await c.ping()
        kill_9(d)
        t0 = time.monotonic()
        with pytest.raises(ac.Timeout, match="not back in time"):
            await c.acquire(res, timeout=0.5)
        took = time.monotonic() - t0
        assert 0.5 <= took <= 0.5 + MARGIN, took
        t0 = time.monotonic()
        with pytest.raises(ac.NotRunning):
            await c.acquire(res, timeout=0)
        assert time.monotonic() - t0 < MARGIN
        await c.close()
    asyncio.run(main())


def test_sync_threads_of_one_client_all_requeue_after_a_restart(restartable,
                                                                res):
    # Several threads wait through one Client (two of them for the same
    # resource, the second in-process); one reconnect serves them all.
    d, again = restartable
    holder = ac.Client(d.socket)
    shared = ac.Client(d.socket)
    names = [res + "-%d" % i for i in range(3)]
    for n in names:
        holder.acquire(n)
    outcome = queue.Queue()

    def wait_for(name):
        try:
            lease = shared.acquire(name, timeout=10)
            outcome.put((name, lease.token))
            lease.release()
        except BaseException as exc:
            outcome.put((name, exc))
    ts = [threading.Thread(target=wait_for, args=(n,))
          for n in names + names[:1]]
    for t in ts:
        t.start()
    for n in names:
        until(lambda: waiters(holder, n), "a waiter on " + n)
    kill_9(d)
    again()
    got = sorted(outcome.get(timeout=WAIT) for _ in ts)
    for t in ts:
        t.join(WAIT)
    assert [n for n, _ in got] == sorted(names + names[:1])
    assert all(isinstance(tok, int) for _, tok in got), got
    assert shared.ping()["role"] == "active"
    holder.close()
    shared.close()
