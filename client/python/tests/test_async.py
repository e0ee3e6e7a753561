"""AsyncClient against a real arbiterd: the same operations, cancellation
safety, revocation at shutdown, renewing by a task."""
import asyncio
import os
import random
import signal

import pytest

import arbiter_client as ac

from conftest import WAIT


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT * 3))


async def holders(c, resource):
    r = (await c.status(resource))["resources"].get(resource)
    return r["holders"] if r else []


async def waiters(c, resource):
    r = (await c.status(resource))["resources"].get(resource)
    return r["waiters"] if r else []


async def until(fn, what):
    deadline = asyncio.get_running_loop().time() + WAIT
    while True:
        v = await fn()
        if v:
            return v
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("gave up waiting for " + what)


def test_lease_and_every_operation(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket, name="async-app") as a, \
                ac.AsyncClient(daemon.socket) as b:
            assert a.role == "active" and a.connection_id
            async with a.lease(res) as lease:
                assert isinstance(lease, ac.AsyncLease)
                assert lease.resource == res and lease.mode == ac.EXCLUSIVE
                assert lease.token > 0 and lease.lease_id > 0
                (h,) = await holders(b, res)
                assert h["client_name"] == "async-app"
                with pytest.raises(ac.WouldBlock):
                    await b.acquire(res, timeout=0)
                t = asyncio.get_running_loop().time()
                with pytest.raises(ac.Timeout):
                    await b.acquire(res, timeout=0.2)
                assert asyncio.get_running_loop().time() - t >= 0.19
            assert lease.released
            lb = await b.acquire(res, timeout=0)
            assert lb.token > lease.token
            await b.release(lb)
            await lb.release()               # no-op
            p = await a.ping(b"x")
            assert p["payload"] == b"x" and p["role"] == "active"
            s = await a.stats()
            assert s["resources"][res]["total_acquisitions"] == 2
            assert s["resources"][res]["failed_acquisitions"] == 2
            assert (await a.stats(res))["resources"].keys() == {res}
            st = await a.status()
            assert st["pid"] == daemon.pid
            l2 = await a.acquire(res, ttl=5, auto_renew=False)
            assert await l2.renew(7) == 7.0
            assert await a.renew(l2) == 7.0
            assert await b.revoke(lease_id=l2.lease_id) == 1
            with pytest.raises(ac.LeaseRevoked):
                await until(lambda: _revoked(l2), "the Revoked event")
                await l2.release()
            assert await b.revoke(pid=12345678) == 0
    run(main())


async def _revoked(lease):
    await lease._client.ping()               # reads pending events
    return lease.revoked is not None


def test_connects_lazily_and_shared_leases(daemon, res):
    async def main():
        a = ac.AsyncClient(daemon.socket)
        b = ac.AsyncClient(daemon.socket)
        la = await a.acquire(res, shared=True)
        lb = await b.acquire(res, shared=True, timeout=0)
        assert la.mode == lb.mode == ac.SHARED
        assert len(await holders(a, res)) == 2
        await la.release()
        await lb.release()
        await a.close()
        await b.close()
        with pytest.raises(ac.ConnectionLost):
            await a.ping()
    run(main())


def test_not_running():
    async def main():
        with pytest.raises(ac.NotRunning, match="/nonexistent/x.sock"):
            await ac.AsyncClient("/nonexistent/x.sock").ping()
    run(main())


def test_waiter_is_woken_and_sees_queue(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket, name="h") as a, \
                ac.AsyncClient(daemon.socket) as b:
            lease = await a.acquire(res)
            infos = []
            task = asyncio.create_task(b.acquire(res, on_queued=infos.append))
            await until(lambda: waiters(a, res), "b to queue")
            await lease.release()
            lb = await task
            assert lb.held and lb.waited > 0
            assert infos and infos[0].position == 1
            assert infos[0].holder_pid == os.getpid()
            await lb.release()
    run(main())


def test_cancelled_while_queued_leaves_nothing(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as holder, \
                ac.AsyncClient(daemon.socket) as c, \
                ac.AsyncClient(daemon.socket) as spy:
            lease = await holder.acquire(res)
            task = asyncio.create_task(c.acquire(res))
            await until(lambda: waiters(spy, res), "c to queue")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await c.ping()                   # withdrawal went out first
            assert await waiters(spy, res) == []
            await lease.release()
            assert await holders(spy, res) == []
            async with spy.lease(res, timeout=0):
                pass
            async with c.lease(res, timeout=0):   # c may ask again
                pass
            assert c._gates == {} and c._leases == {}
    run(main())


def test_asyncio_timeout_cancels_cleanly(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as holder, \
                ac.AsyncClient(daemon.socket) as c:
            lease = await holder.acquire(res)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await c.acquire(res)
            await c.ping()
            assert await waiters(holder, res) == []
            await lease.release()
    run(main())


def test_cancel_after_grant_raced_ahead(daemon, res):
    """The grant is on its way when the task is cancelled: the client
    releases it, and nothing stays held."""
    async def main():
        async with ac.AsyncClient(daemon.socket) as c, \
                ac.AsyncClient(daemon.socket) as spy:
            await c.ping()
            c._transport.pause_reading()     # the Granted waits unread
            task = asyncio.create_task(c.acquire(res))
            await until(lambda: holders(spy, res), "the grant")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            c._transport.resume_reading()
            await c.ping()
            await c.ping()
            assert await holders(spy, res) == []
            assert c._leases == {} and c._gates == {}
            async with spy.lease(res, timeout=0):
                pass
    run(main())


def test_cancellation_stress(daemon, res):
    """Random cancellations around grants: afterwards nothing is held or
    queued for the client, and it still works."""
    async def main():
        rnd = random.Random(6)
        async with ac.AsyncClient(daemon.socket) as c, \
                ac.AsyncClient(daemon.socket) as other, \
                ac.AsyncClient(daemon.socket) as spy:
            async def toggler(stop):
                while not stop.is_set():
                    async with other.lease(res):
                        await asyncio.sleep(0)
            stop = asyncio.Event()
            tog = asyncio.create_task(toggler(stop))
            got = 0
            for i in range(300):
                task = asyncio.create_task(c.acquire(res))
                for _ in range(rnd.randrange(4)):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    lease = await task
                except asyncio.CancelledError:
                    continue
                got += 1
                await lease.release()
            stop.set()
            await tog
            await c.ping()
            await c.ping()
            st = await spy.status(res)
            r = st["resources"].get(res, {"holders": [], "waiters": []})
            assert r["holders"] == [] and r["waiters"] == []
            assert c._leases == {} and c._gates == {}
            async with c.lease(res, timeout=0):
                pass
    run(main())


def test_tasks_sharing_a_client_exclude_each_other(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as c:
            state = {"n": 0, "inside": 0, "max": 0}

            async def work():
                for _ in range(30):
                    async with c.lease(res):
                        state["inside"] += 1
                        state["max"] = max(state["max"], state["inside"])
                        n = state["n"]
                        await asyncio.sleep(0)
                        state["n"] = n + 1
                        state["inside"] -= 1
            await asyncio.gather(*(work() for _ in range(6)))
            assert state == {"n": 180, "inside": 0, "max": 1}
            async with c.lease(res):
                with pytest.raises(ac.AlreadyHeld):
                    await c.acquire(res)
            async with c.lease(res):
                other = asyncio.create_task(c.acquire(res, timeout=0))
                with pytest.raises(ac.WouldBlock, match="another task"):
                    await other
    run(main())


def test_async_lock_reentrant_per_task(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as c, \
                ac.AsyncClient(daemon.socket) as spy:
            lock = c.lock(res)
            async with lock:
                async with lock:
                    assert lock.lock_counter == 2 and lock.is_locked
                    assert len(await holders(spy, res)) == 1
                    other = asyncio.ensure_future(lock.acquire(blocking=False))
                    with pytest.raises(ac.WouldBlock):
                        await other
                assert lock.is_locked
            assert not lock.is_locked
            assert await holders(spy, res) == []
            async with lock.acquire(timeout=1) as got:
                assert got is lock
            await lock.release()             # unlocked: nothing
    run(main())


def test_ttl_renewed_by_a_task(daemon, res):
    async def main():
        revoked = []
        async with ac.AsyncClient(daemon.socket,
                                  on_revoked=revoked.append) as c:
            async with c.lease(res, ttl=0.3) as lease:
                await asyncio.sleep(1.2)     # four ttls
                assert lease.held and revoked == []
            async with c.lease(res, ttl=0.2, auto_renew=False) as lease:
                pass
            with pytest.raises(ac.LeaseRevoked):
                async with c.lease(res, ttl=0.2, auto_renew=False) as lease:
                    await until(lambda: _revoked(lease), "expiry")
            await asyncio.sleep(0)           # callbacks run via call_soon
            assert revoked[-1].reason == "EXPIRED"
    run(main())


def test_shutdown_revokes_with_reason(fresh_daemon):
    d = fresh_daemon()

    async def main():
        events = asyncio.Queue()

        async def on_revoked(rev):           # a coroutine callback
            await events.put(rev)
        c = ac.AsyncClient(d.socket, on_revoked=on_revoked)
        other = ac.AsyncClient(d.socket)
        with pytest.raises(ac.LeaseRevoked) as ei:
            async with c.lease("db") as lease:
                # It waits for the daemon to come back, within its timeout.
                pending = asyncio.create_task(other.acquire("db", timeout=2))
                await until(lambda: waiters(c, "db"), "other to queue")
                os.kill(d.pid, signal.SIGTERM)
                rev = await asyncio.wait_for(events.get(), WAIT)
                assert rev.reason == "SHUTDOWN" and rev.lease is lease
        assert ei.value.reason == "SHUTDOWN"
        with pytest.raises(ac.Timeout, match="not back in time"):
            await pending
        with pytest.raises(ac.NotRunning, match="shut down"):
            await c.ping()
        await c.close()
        await other.close()
    run(main())
    assert d.stop() == 0


def test_daemon_killed_is_connection_lost(fresh_daemon):
    d = fresh_daemon()

    async def main():
        got = []
        async with ac.AsyncClient(d.socket, on_revoked=got.append) as c:
            lease = await c.acquire("x")
            d.stop(signal.SIGKILL)
            with pytest.raises(ac.NotRunning, match="lost"):
                await c.ping()
            await asyncio.sleep(0)           # callbacks run soon
            assert got and got[0].reason == "DISCONNECT"
            with pytest.raises(ac.LeaseRevoked, match="DISCONNECT"):
                await lease.release()
    run(main())


def test_not_an_arbiter_then_retry(tmp_path, daemon, monkeypatch):
    path = str(tmp_path / "fake.sock")

    async def main():
        async def fake(reader, writer):
            await reader.read(100)
            writer.write(b"HTTP/1.0 400 Bad Request\r\n\r\n")
            await writer.drain()
            writer.close()
        srv = await asyncio.start_unix_server(fake, path)
        c = ac.AsyncClient(path)
        with pytest.raises(ac.ProtocolError, match="really an arbiter"):
            await c.connect()
        srv.close()
        # A failed handshake does not poison the client: it may try again.
        c.socket_path = daemon.socket
        assert (await c.ping())["role"] == "active"
        await c.close()
        monkeypatch.setattr(ac._proto, "PROTOCOL_VERSION", 99)
        with pytest.raises(ac.ProtocolError) as ei:
            await ac.AsyncClient(daemon.socket).connect()
        assert ei.value.code == "VERSION"
    run(main())


def test_async_lock_own_client_reconnects(daemon, res):
    async def main():
        lock = ac.AsyncArbiterLock(res, socket_path=daemon.socket, timeout=5)
        async with lock:
            first = lock.client
            assert lock.lease.held
        await first.close()                  # e.g. the daemon restarted
        async with lock:
            assert lock.client is not first and lock.is_locked
        await lock.client.close()
    run(main())
