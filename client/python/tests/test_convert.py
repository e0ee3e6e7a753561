"""Lock conversion against a real arbiterd: lease.upgrade() and
lease.downgrade(), sync and asyncio."""
import asyncio
import signal
import threading

import pytest

import arbiter_client as ac

from conftest import WAIT, until


class Call(threading.Thread):
    """fn() in a thread: result() joins it and returns or raises."""

    def __init__(self, fn, *args, **kw):
        super().__init__(daemon=True)
        self.fn, self.args, self.kw = fn, args, kw
        self.value = self.exc = None
        self.start()

    def run(self):
        try:
            self.value = self.fn(*self.args, **self.kw)
        except BaseException as exc:
            self.exc = exc

    def result(self):
        self.join(WAIT)
        assert not self.is_alive(), "the call did not return"
        if self.exc is not None:
            raise self.exc
        return self.value


def holder(c, resource, lease):
    r = c.status(resource)["resources"].get(resource)
    for h in (r["holders"] if r else []):
        if h["lease_id"] == lease.lease_id:
            return h
    return None


def converting(c, resource, lease):
    h = holder(c, resource, lease)
    return h is not None and h.get("converting")


def waiting(c, resource):
    r = c.status(resource)["resources"].get(resource)
    return r is not None and r["waiters"]


def test_upgrade_waits_for_the_other_reader(clients, res):
    a, b = clients(), clients()
    la = a.acquire(res, shared=True)
    lb = b.acquire(res, shared=True)
    old = la.token
    up = Call(la.upgrade, timeout=WAIT)
    until(lambda: converting(b, res, la), "the upgrade to wait")
    assert la.mode == ac.SHARED
    lb.release()
    token = up.result()
    assert token > old and la.token == token and la.mode == ac.EXCLUSIVE
    assert holder(b, res, la)["mode"] == "exclusive"
    with pytest.raises(ac.WouldBlock):
        b.acquire(res, shared=True, timeout=0)
    la.release()


def test_deadlock_raises_and_the_other_proceeds_after_release(clients, res):
    a, b = clients(), clients()
    la = a.acquire(res, shared=True)
    lb = b.acquire(res, shared=True)
    up = Call(la.upgrade)
    until(lambda: converting(b, res, la), "the first upgrade to wait")
    with pytest.raises(ac.Deadlock, match="release it") as ei:
        lb.upgrade(timeout=WAIT)
    assert isinstance(ei.value, ac.ArbiterError)
    assert ei.value.code == "DEADLOCK" and ei.value.resource == res
    assert lb.held and lb.mode == ac.SHARED
    lb.release()
    up.result()
    assert la.mode == ac.EXCLUSIVE
    la.release()


def test_timeout_keeps_the_lease_shared(clients, res):
    a, b, c = clients(), clients(), clients()
    la = a.acquire(res, shared=True)
    lb = b.acquire(res, shared=True)
    token = la.token
    with pytest.raises(ac.Timeout) as ei:
        la.upgrade(timeout=0.2)
    assert ei.value.code == "TIMEOUT"
    with pytest.raises(ac.WouldBlock, match="still held shared"):
        la.upgrade(timeout=0)
    assert la.held and la.mode == ac.SHARED and la.token == token
    h = holder(c, res, la)
    assert h["mode"] == "shared" and not h.get("converting")
    c.acquire(res, shared=True, timeout=0).release()
    lb.release()
    assert la.upgrade(timeout=0) > token
    la.release()


def test_downgrade_lets_a_queued_reader_in(clients, res):
    a, b = clients(), clients()
    la = a.acquire(res)
    token = la.token
    rd = Call(b.acquire, res, shared=True, timeout=WAIT)
    until(lambda: waiting(a, res), "the reader to queue")
    assert la.downgrade() == token
    assert la.mode == ac.SHARED and la.token == token
    lb = rd.result()
    assert lb.mode == ac.SHARED
    lb.release()
    la.release()


def test_an_upgrade_of_a_revoked_lease_raises_lease_revoked(clients, res):
    a, b = clients(), clients()
    la = a.acquire(res, shared=True)
    lb = b.acquire(res, shared=True)
    up = Call(la.upgrade)
    until(lambda: converting(b, res, la), "the upgrade to wait")
    assert b.revoke(lease_id=la.lease_id) == 1
    with pytest.raises(ac.LeaseRevoked):
        up.result()
    with pytest.raises(ac.LeaseRevoked):
        la.upgrade()
    lb.release()


def test_an_unanswered_upgrade_is_withdrawn_and_a_late_grant_ignored(
        fresh_daemon, res):
    d = fresh_daemon()
    with ac.Client(d.socket) as a, ac.Client(d.socket) as b:
        la = a.acquire(res, shared=True)
        token = la.token
        d.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(ac.Timeout, match="withdrawn"):
                la.upgrade(timeout=0.1)
        finally:
            d.proc.send_signal(signal.SIGCONT)
        # The daemon, resumed, upgrades the lone holder (a Converted the
        # client ignores), then the withdrawal makes it shared again.
        until(lambda: (holder(b, res, la) or {}).get("mode") == "shared"
              and b.acquire(res, shared=True, timeout=0).release() is None,
              "the lease to be shared again")
        assert la.mode == ac.SHARED and la.token == token and la.held
        assert a.ping()["role"] == "active"
        la.release()
    assert d.stop() == 0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, WAIT * 3))


async def aholder(c, resource, lease):
    r = (await c.status(resource))["resources"].get(resource)
    for h in (r["holders"] if r else []):
        if h["lease_id"] == lease.lease_id:
            return h
    return None


async def auntil(fn, what):
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await fn():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("gave up waiting for " + what)


def test_async_upgrade_deadlock_timeout_and_downgrade(daemon, res):
    async def converting(c, lease):
        return ((await aholder(c, res, lease)) or {}).get("converting")

    async def main():
        async with ac.AsyncClient(daemon.socket) as a, \
                ac.AsyncClient(daemon.socket) as b:
            la = await a.acquire(res, shared=True)
            lb = await b.acquire(res, shared=True)
            old = la.token
            with pytest.raises(ac.Timeout):
                await la.upgrade(timeout=0.2)
            with pytest.raises(ac.WouldBlock):
                await la.upgrade(timeout=0)
            assert la.mode == ac.SHARED and la.token == old
            up = asyncio.ensure_future(la.upgrade())
            await auntil(lambda: converting(b, la), "the upgrade to wait")
            with pytest.raises(ac.Deadlock):
                await lb.upgrade()
            assert lb.held and lb.mode == ac.SHARED
            await lb.release()
            token = await up
            assert token > old and la.mode == ac.EXCLUSIVE
            rd = asyncio.ensure_future(b.acquire(res, shared=True))

            async def queued():
                r = (await a.status(res))["resources"][res]
                return r["waiters"]
            await auntil(queued, "the reader to queue")
            assert await la.downgrade() == token
            assert la.mode == ac.SHARED
            lb = await rd
            await lb.release()
            await la.release()
    run(main())


def test_async_cancelled_upgrade_leaves_the_lease_shared(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as a, \
                ac.AsyncClient(daemon.socket) as b:
            la = await a.acquire(res, shared=True)
            lb = await b.acquire(res, shared=True)
            up = asyncio.ensure_future(la.upgrade())

            async def converting():
                return ((await aholder(b, res, la)) or {}).get("converting")
            await auntil(converting, "the upgrade to wait")
            up.cancel()
            with pytest.raises(asyncio.CancelledError):
                await up

            async def withdrawn():
                return not await converting()
            await auntil(withdrawn, "the upgrade to be withdrawn")
            assert la.held and la.mode == ac.SHARED
            assert (await aholder(b, res, la))["mode"] == "shared"
            await lb.release()
            assert await la.upgrade(timeout=0) > lb.token
            await la.release()
    run(main())
