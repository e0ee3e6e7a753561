"""The asyncio client: AsyncClient, AsyncLease, AsyncArbiterLock.

An AsyncClient belongs to the event loop it connected on and is not
thread-safe: use it from that loop's tasks only (any number of tasks may
share it). Like the sync client, it lets one task at a time hold or wait for
a given resource, so tasks exclude each other; the same task asking again for
a resource it holds raises AlreadyHeld.

Cancellation: cancelling a task inside ``acquire()`` (task.cancel(),
asyncio.timeout(), wait_for()) withdraws the request before the
CancelledError propagates: a queued request is withdrawn with
Release{request_id}, and a grant that raced ahead is released by lease id.
Nothing stays granted or queued.

Restarts: as for Client. A lost connection's leases end and their holders
are told; the next call connects again, and an acquire that was waiting or
is about to wait connects again with back-off and queues anew within its own
timeout.
"""
import asyncio
import copy
import inspect
import logging
import os
import socket
import time
import weakref

from . import _proto as P
from . import _session as S
from . import _trust
from . import errors as E

_log = logging.getLogger("arbiter_client")
_live = weakref.WeakSet()


class AsyncLease(P.BaseLease):
    """A granted lease (fields as for Lease); ``await lease.release()``,
    or ``async with`` it."""

    __slots__ = ("_renew_task",)

    async def release(self):
        """End the lease; raises LeaseRevoked (after cleaning up) if the
        daemon had already ended it. Releasing twice is a no-op."""
        await self._client._release_lease(self)

    async def renew(self, ttl=None):
        return await self._client.renew(self, ttl)

    async def upgrade(self, timeout=None):
        """Make this shared lease exclusive in place (see Lease.upgrade);
        cancellation safe: a cancelled upgrade leaves the lease shared."""
        return await self._client._run(self._client._session.convert(
            self, False, timeout))

    async def downgrade(self):
        """Make this exclusive lease shared in place (see
        Lease.downgrade)."""
        return await self._client._run(self._client._session.convert(
            self, True))

    async def __aenter__(self):
        return self

    async def __aexit__(self, et, ev, tb):
        await _release_on_exit(self, ev)
        return False


async def _release_on_exit(lease, ev):
    try:
        await lease.release()
    except E.LeaseRevoked as exc:
        S.note_revoked(exc, ev)


class _ALeaseContext(P.LeaseContextBase):
    __slots__ = ()

    async def __aenter__(self):
        self._lease = await self._client.acquire(*self._args[0],
                                                 **self._args[1])
        return self._lease

    async def __aexit__(self, et, ev, tb):
        lease, self._lease = self._lease, None
        await _release_on_exit(lease, ev)
        return False


class _Protocol(asyncio.BufferedProtocol):
    """Reads with recv_into one buffer (the default Protocol path does
    recv(256 KiB) per read, a costly malloc/free on small machines)."""

    def __init__(self, client):
        self.client = client
        self.reader = P.FrameReader(client.socket_path)
        self.handshake = None   # future for the first message
        self.transport = None
        self.buf = bytearray(65536)
        self.view = memoryview(self.buf)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        self.data_received(self.view[:nbytes])

    def data_received(self, data):
        try:
            msgs = self.reader.feed(data)
        except E.ArbiterError as exc:
            if self.handshake is not None and not self.handshake.done():
                self.handshake.set_exception(exc)
            self.transport.abort()
            if self.client._proto is self:
                self.client._fail(exc)
            return
        for m in msgs:
            if self.handshake is not None:
                fut, self.handshake = self.handshake, None
                if not fut.done():
                    fut.set_result(m)
                continue
            try:
                self.client._dispatch(m)
            except Exception as exc:  # a bug: never leave waiters hanging
                self.transport.abort()
                self.client._fail(E.ProtocolError(
                    "arbiter_client failed on a message: %r" % exc,
                    socket_path=self.client.socket_path))
                return

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        c = self.client
        if self.handshake is not None and not self.handshake.done():
            self.handshake.set_exception(P.lost(
                c.socket_path, "it closed during the handshake"))
        if c._proto is not self:
            return      # a failed connect: the client may try again
        if c._closing:
            why = E.ConnectionLost("this AsyncClient was closed (arbiter at "
                                   "%s)" % c.socket_path,
                                   socket_path=c.socket_path)
        elif c._session.shutdown_seen:      # however the socket broke
            why = P.shut_down(c.socket_path)
        else:
            why = P.lost(c.socket_path, str(exc) if exc else None)
        c._fail(why)


class AsyncClient:
    """A connection to arbiterd for asyncio.

    Connects on first use (or ``await client.connect()``, or ``async with
    AsyncClient() as client``). Arguments as for Client; ``on_revoked`` may be
    a plain function or a coroutine function (run as a task); so are
    ``trust_uids``, ``connect_timeout`` and ``io_timeout``.
    """

    def __init__(self, socket_path=None, name=None, *, on_revoked=None,
                 connect_timeout=10.0, io_timeout=P.IO_TIMEOUT,
                 trust_uids=None):
        self.socket_path, self._is_default = P.resolve_socket(socket_path)
        self.io_timeout = P.check_io_timeout(io_timeout, "io_timeout")
        self.trust_uids = trust_uids
        self.name = name if name is not None else P.default_client_name()
        self.on_revoked = on_revoked
        self.connect_timeout = connect_timeout
        self.server_version = self.connection_id = self.role = None
        self.max_frame_bytes = None
        self._pid = os.getpid()
        self._transport = None
        self._proto = None
        self._loop = None
        self._connecting = None
        self._session = S.Session(
            self.socket_path,
            lambda raw, granted: AsyncLease(self, raw, granted), "task",
            "AsyncClient", "AsyncArbiterLock", self._may_reconnect)
        self._closed = None
        self._closing = False
        self._tasks = set()
        # Requests bounded by io_timeout: id -> (deadline, op), oldest
        # first; one timer (the watchdog) fires at the oldest deadline,
        # cheaper than a timer per request.
        self._io_waits = {}
        self._watchdog = None

    def __repr__(self):
        return "<arbiter_client.AsyncClient %s conn=%s %s>" % (
            self.socket_path, self.connection_id,
            "closed" if self._closed else
            "open" if self._transport else "not connected")

    @property
    def closed(self):
        return self._closed is not None

    async def connect(self):
        """Connect and say Hello (done by the first operation otherwise;
        after a lost connection, connect again)."""
        await self._connected()
        return self

    def _may_reconnect(self):
        return P.may_reconnect(self._closing, self._pid, self._closed)

    async def _connected(self, deadline=None, once=True, text=None,
                         timeout=None):
        """Return when connected: at once, or after connecting (again, when
        the last connection was lost). once: a single attempt; else, after
        a loss, attempts with back-off until the monotonic deadline (None:
        no end), then Timeout."""
        backoff = P.Backoff()
        while True:
            if self._transport is not None and self._closed is None:
                self._check()
                return
            if self._closed is not None and not self._may_reconnect():
                self._check()
            lost = self._closed
            try:
                await self._connect_shared(self._session.connect_seconds(
                    self.connect_timeout, deadline, once, lost))
                continue
            except E.ArbiterError as exc:
                if lost is None:
                    raise
                delay = self._session.retry_delay(
                    exc, lost, once, backoff, deadline, text, timeout)
            await asyncio.sleep(delay)

    async def _connect_shared(self, seconds):
        """One attempt to connect, shared by the tasks that ask meanwhile."""
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect(seconds))
        fut = self._connecting
        try:
            await asyncio.shield(fut)
        finally:
            if fut.done() and self._connecting is fut:
                self._connecting = None

    async def _connect(self, seconds):
        loop = asyncio.get_running_loop()
        path = self.socket_path
        if self._is_default:
            _trust.check_default_folder(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        start = time.monotonic()     # connect_timeout: connect + handshake
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(sock, path),
                                       seconds)
            except asyncio.TimeoutError:
                raise E.NotRunning(
                    "connecting to %s timed out after %g s: is arbiterd "
                    "stopped or overloaded?" % (path, seconds),
                    socket_path=path) from None
            except OSError as exc:
                raise P.connect_error(exc, path) from None
            _trust.check_peer(sock, path, self.trust_uids)
            transport, proto = await loop.create_connection(
                lambda: _Protocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        proto.handshake = loop.create_future()
        try:
            transport.write(P.hello_frame(1, self.name))
            try:
                m = await asyncio.wait_for(
                    asyncio.shield(proto.handshake),
                    max(0, seconds - (time.monotonic() - start)))
            except asyncio.TimeoutError:
                raise E.ProtocolError(
                    "no answer to Hello from %s in time: is that socket an "
                    "arbiter (and is it running, not stopped)?" % path,
                    socket_path=path) from None
            if m.WhichOneof("kind") != "welcome":
                raise P.welcome_error(m, path)
        except BaseException:
            transport.abort()
            raise
        w = m.welcome
        self.server_version = w.server_version
        self.connection_id = w.connection_id
        self.role = w.role
        self.max_frame_bytes = w.limits.max_frame_bytes or 65536
        self._loop = loop
        self._proto = proto
        self._transport = transport
        self._session.shutdown_seen = False
        self._closed = None
        _live.add(self)

    def _check(self):
        if self._pid != os.getpid():
            raise P.forked("AsyncClient", self._pid, self.socket_path)
        if self._closed is not None:
            raise copy.copy(self._closed)
        return self

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()
        return False

    async def close(self):
        """Close the connection; every lease of this client ends at once."""
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        self._closing = True
        if self._transport is not None:
            self._transport.close()
            closed = E.ConnectionLost(
                "this AsyncClient was closed (arbiter at %s)" %
                self.socket_path, socket_path=self.socket_path)
            self._fail(closed)
            self._closed = closed   # also after a loss: say closed from now
        elif self._closed is None:
            self._closed = E.ConnectionLost("this AsyncClient was closed",
                                            socket_path=self.socket_path)
        _live.discard(self)
        await asyncio.sleep(0)  # let the transport finish closing

    # ------------------------------------------------------------ plumbing

    def _submit(self, req, p, conn=None):
        """Send req (only on the connection conn, when given: a lease's
        release or renew must never reach a later connection, whose leases
        may have the same ids)."""
        self._check()
        if conn is not None and conn is not self._proto:
            raise P.lost(self.socket_path, "before this request")
        self._session.register(req.id, p, self._proto)
        self._transport.write(P.encode(req))

    # Tables in the session, under the names the tests know.
    _leases = property(lambda self: self._session.leases)
    _gates = property(lambda self: self._session.gates)

    async def _call_on(self, req, want, op, resource, conn):
        req.id = self._session.next_id()
        p = S.Pending(self._loop.create_future())
        self._submit(req, p, conn)
        deadline = self._loop.time() + self.io_timeout
        self._io_waits[req.id] = (deadline, op)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(deadline, self._check_io)
        try:
            m = await p.fut
        except asyncio.CancelledError:
            p.ignore = True
            raise
        finally:
            self._io_waits.pop(req.id, None)
        return self._session.answer(m, want, op, resource)

    async def _wait_on(self, req, conn, give_up):
        """Send req on the connection conn and wait for its answer until
        the monotonic time give_up (None: no end): the message, or None
        when give_up passed first (an answer that comes later is
        ignored)."""
        req.id = self._session.next_id()
        p = S.Pending(self._loop.create_future())
        self._submit(req, p, conn)
        left = None if give_up is None else max(0, give_up - time.monotonic())
        try:
            done, _ = await asyncio.wait((p.fut,), timeout=left)
        except asyncio.CancelledError:
            p.ignore = True
            raise
        if not done:
            p.abandoned = p.ignore = True
            return None
        return p.fut.result()

    def _check_io(self):
        """The watchdog: a request without an answer within io_timeout
        means the daemon is stopped or hung. Give the connection up (its
        leases end when the daemon sees it closed) rather than leave the
        request's fate unknown; else wait for the next oldest deadline."""
        self._watchdog = None
        if self._closed is not None:
            return
        for deadline, op in self._io_waits.values():
            if deadline <= self._loop.time():
                self._fail(P.io_expired(self.socket_path, op,
                                        self.io_timeout))
            else:
                self._watchdog = self._loop.call_at(deadline, self._check_io)
            return

    def _acquire_expired(self, req_id, p, text, timeout):
        """An acquire's own deadline ran out before the daemon answered:
        withdraw it (a grant that comes later is released on arrival)."""
        if p.fut.done() or self._closed is not None:
            return
        withdrawal = self._session.expire(req_id, p)
        if withdrawal is None:
            return
        self._send_ignored(withdrawal, p.conn)
        p.fut.set_exception(P.acquire_expired(text, timeout,
                                              self.socket_path))

    def _send_ignored(self, req, conn):
        req.id = self._session.next_id()
        try:
            self._submit(req, S.Pending(ignore=True), conn)
        except E.ArbiterError:
            pass

    def _dispatch(self, m):
        for act in self._session.receive(m):
            getattr(self, act[0])(*act[1:])

    def _on_queued(self, callback, info):
        self._callback(callback, info)

    def _on_revoked(self, lease, rev):
        self._stop_renew(lease)
        self._notify_revoked(lease, rev)

    def _on_answer(self, p):
        if p.fut is not None and not p.fut.done():
            p.fut.set_result(p.msg)

    def _on_renew(self, lease):
        lease._renew_task = self._spawn(self._renew_loop(lease))

    def _fail(self, exc):
        if self._closed is not None:
            return
        self._closed = exc
        pending, gates, ended = self._session.lose(exc, self._closing)
        for raw, gate in gates:
            self._gate_exit(raw, gate)
        for p in pending:
            if p.fut is not None and not p.fut.done():
                p.fut.set_exception(copy.copy(exc))
                p.fut.exception()  # nobody may be left to retrieve it
        for lease, rev in ended:
            self._stop_renew(lease)
            if rev is not None:
                self._notify_revoked(lease, rev)
        if self._transport is not None:
            self._transport.abort()

    def _spawn(self, coro):
        t = self._loop.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    def _callback(self, fn, arg):
        def run():
            try:
                r = fn(arg)
                if inspect.isawaitable(r):
                    self._spawn(_logged(r, fn))
            except Exception:
                _log.exception("arbiter_client callback %r failed", fn)
        self._loop.call_soon(run)

    def _notify_revoked(self, lease, rev):
        for cb in (lease._on_revoked, self.on_revoked):
            if cb is not None:
                self._callback(cb, rev)

    # ------------------------------------------------------------ gates

    async def _gate_enter(self, raw, text, timeout, deadline):
        me = asyncio.current_task()
        while True:
            wait = self._session.gate_wait(raw, me, text, timeout, deadline)
            if wait is None:
                return self._session.gate_take(
                    raw, S.Gate(me, self._loop.create_future()))
            try:
                await asyncio.wait_for(asyncio.shield(wait[0].done), wait[1])
            except asyncio.TimeoutError:
                pass  # loop: raises Timeout above

    def _gate_exit(self, raw, gate):
        self._session.gate_exit(raw, gate)
        if gate is not None and not gate.done.done():
            gate.done.set_result(None)

    # ------------------------------------------------------------ leases

    def lease(self, resource, shared=False, timeout=None, ttl=None, **kw):
        """``async with client.lease(...) as lease:`` (see Client.lease)."""
        return _ALeaseContext(self, ((resource, shared, timeout, ttl), kw))

    async def acquire(self, resource, shared=False, timeout=None, ttl=None, *,
                      on_revoked=None, on_queued=None, auto_renew=True,
                      lock_delay=None):
        """Acquire a lease (arguments as for Client.acquire). Cancellation
        safe: a cancelled acquire leaves nothing granted or queued."""
        return await self._run(self._session.acquire(
            resource, shared, timeout, ttl, on_revoked, on_queued, auto_renew,
            lock_delay))

    async def _acquire_on(self, raw, text, shared, timeout, deadline, ttl_ms,
                          on_queued, on_revoked, auto_renew, lock_delay,
                          gate):
        """One acquire on the current connection. ConnectionLost leaves the
        gate to the caller (which may ask again); any other outcome settles
        it."""
        try:
            p = S.Pending(self._loop.create_future())
            req = self._session.acquire_request(
                p, raw, text, shared, timeout, deadline, ttl_ms, on_queued,
                on_revoked, auto_renew, lock_delay, gate)
            self._submit(req, p)
        except E.ConnectionLost:
            raise
        except BaseException:
            self._gate_exit(raw, gate)
            raise
        give_up = P.acquire_deadline(deadline)
        timer = None
        if give_up is not None:
            timer = self._loop.call_later(
                give_up - time.monotonic(), self._acquire_expired, req.id, p,
                text, timeout)
        try:
            m = await p.fut
        except E.ConnectionLost:
            if p.abandoned:
                self._gate_exit(raw, gate)
            raise
        except E.ArbiterError:
            if not p.abandoned:     # else closed when the daemon answers
                self._gate_exit(raw, gate)
            raise
        except BaseException:
            self._withdraw(req.id, p)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        lease, exc, stopping = self._session.acquire_answer(p, m, text,
                                                             timeout)
        if lease is not None:
            return lease
        if stopping:
            # The daemon is stopping: this connection is done for.
            if p.conn is self._proto:
                self._fail(P.shut_down(self.socket_path))
        else:
            self._gate_exit(raw, gate)
        raise exc

    def _withdraw(self, req_id, p):
        """Synchronous, so it completes even in a cancelled task."""
        if p.abandoned:
            return
        if not p.done() and self._closed is not None:
            self._gate_exit(p.raw, p.gate)
            return
        w = self._session.withdraw(req_id, p)
        if w.lease is not None:
            self._stop_renew(w.lease)
        if w.request is not None:
            self._send_ignored(w.request, w.conn)
        if w.gate_free:
            self._gate_exit(p.raw, p.gate)

    def _stop_renew(self, lease):
        t = getattr(lease, "_renew_task", None)
        if t is not None and t is not asyncio.current_task():
            t.cancel()
        lease._renew_task = None

    async def _renew_loop(self, lease):
        while True:
            await asyncio.sleep(lease.ttl / 3.0)
            if not lease.held:
                return
            try:
                await self.renew(lease)
            except E.ArbiterError:
                return

    async def _run(self, plan):
        """Carry out a session plan (see _session): steps are coroutine
        methods, but for the gate's exit."""
        done, out = S.step(plan)
        while not done:
            done, out = S.step(plan, *(await self._perform(out)))
        return out

    async def _perform(self, step):
        try:
            r = getattr(self, step[0])(*step[1:])
            return (await r if inspect.isawaitable(r) else r), None
        except BaseException as exc:
            return None, exc

    async def _release_lease(self, lease):
        if lease.released:
            return
        lease.released = True
        self._stop_renew(lease)
        try:
            if lease.revoked is None and self._closed is None:
                await self._run(self._session.release(lease))
        finally:
            self._session.forget(lease)
            self._gate_exit(lease._raw, lease._gate)
        lease.check()

    async def release(self, lease):
        await lease.release()

    async def renew(self, lease, ttl=None):
        """Renew a ttl lease now; returns the ttl (seconds) now in force."""
        return await self._run(self._session.renew(lease, ttl))

    def lock(self, resource, timeout=-1, **kw):
        """A re-entrant AsyncArbiterLock on this client."""
        return AsyncArbiterLock(resource, timeout, client=self, **kw)

    # ------------------------------------------------------------ requests

    async def ping(self, payload=b""):
        return await self._run(self._session.ping(payload))

    async def stats(self, resource=None):
        return await self._run(self._session.stats(resource))

    async def status(self, resource=None):
        return await self._run(self._session.status(resource))

    async def revoke(self, lease_id=None, pid=None):
        return await self._run(self._session.revoke(lease_id, pid))

    async def stats_reset(self):
        await self._run(self._session.stats_reset())

    def _after_fork_in_child(self):
        t = self._transport
        sock = t.get_extra_info("socket") if t is not None else None
        if sock is not None:
            try:
                fd = os.open(os.devnull, os.O_RDWR)
                os.dup2(fd, sock.fileno())
                os.close(fd)
            except OSError:
                pass
        self._closed = P.forked("AsyncClient", self._pid, self.socket_path)


async def _end_quietly(lease):
    """Clean up after a lease the daemon ended (lets the next one in)."""
    if lease is not None:
        try:
            await lease.release()
        except E.LeaseRevoked:
            pass


async def _logged(aw, fn):
    try:
        await aw
    except Exception:
        _log.exception("arbiter_client callback %r failed", fn)


def _after_fork_in_child():
    for c in list(_live):
        c._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class AsyncAcquireReturnProxy:
    """What ``await lock.acquire()`` gives: ``async with`` it releases
    once on exit."""

    def __init__(self, lock):
        self.lock = lock

    async def __aenter__(self):
        return self.lock

    async def __aexit__(self, et, ev, tb):
        await self.lock._exit(ev)
        return False


class _AcquireCall:
    """What AsyncArbiterLock.acquire() returns: await it (giving a proxy
    for `async with`), or use it directly: `async with lock.acquire(5):`."""

    __slots__ = ("_lock", "_args")

    def __init__(self, lock, args):
        self._lock = lock
        self._args = args

    def __await__(self):
        return self._lock._acquire(*self._args).__await__()

    async def __aenter__(self):
        await self._lock._acquire(*self._args)
        return self._lock

    async def __aexit__(self, et, ev, tb):
        await self._lock._exit(ev)
        return False


class AsyncLockContext:
    """``async with`` for the asyncio lock objects (AsyncArbiterLock,
    AsyncFileLock): acquire on entry, release once on exit."""

    async def _exit(self, ev):
        await _release_on_exit(self, ev)

    async def __aenter__(self):
        await self.acquire()
        return self

    async def __aexit__(self, et, ev, tb):
        await self._exit(ev)
        return False


class AsyncArbiterLock(AsyncLockContext, P.LockBase):
    """The asyncio twin of ArbiterLock: ``await lock.acquire(timeout=None,
    blocking=True)``, ``await lock.release()``, ``is_locked``, ``async with
    lock:``. Re-entrancy is counted per task (the task that holds it may
    acquire it again); other tasks sharing the object wait their turn."""

    def __init__(self, resource, timeout=-1, *, shared=False, ttl=None,
                 blocking=True, client=None, socket_path=None,
                 on_revoked=None, trust_uids=None, **_ignored):
        self._setup(resource, timeout, shared, ttl, blocking, on_revoked,
                    socket_path, trust_uids)
        self._own_client = client is None
        self._client = client or AsyncClient(socket_path,
                                             trust_uids=trust_uids)
        self._ctxs = weakref.WeakKeyDictionary()

    @property
    def client(self):
        """The AsyncClient used; without client=, a private one (it
        connects again after a lost connection; made anew after close or
        fork)."""
        if self._own_client and not self._client._may_reconnect():
            self._client = AsyncClient(self._socket_path,
                                       trust_uids=self._trust_uids)
        return self._client

    def _count(self):
        t = asyncio.current_task()
        c = self._ctxs.get(t)
        if c is None:
            c = self._ctxs[t] = P.LockCount()
        return c

    def acquire(self, timeout=None, poll_interval=None, *, blocking=None,
                poll_intervall=None):
        """``await lock.acquire(timeout=None, blocking=True)`` or ``async
        with lock.acquire(timeout=5):`` (timeout as for ArbiterLock)."""
        return _AcquireCall(self, (timeout, blocking))

    async def _acquire(self, timeout, blocking):
        timeout = self._wait_for(timeout, blocking)
        ctx = self._count()
        if not ctx.reenter():
            await _end_quietly(ctx.ended())
            args, kw = self._take_args(timeout)
            ctx.adopt(await self.client.acquire(*args, **kw))
        return AsyncAcquireReturnProxy(self)

    async def release(self, force=False):
        lease = self._count_down(force)
        if lease is not None:
            await lease.release()
