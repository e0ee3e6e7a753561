"""The protocol session that Client and AsyncClient share, free of I/O.

A Session holds what one client knows about its connection to the daemon:
the requests that wait for an answer (by id), the leases granted on it, the
per-resource gates that let one thread or task at a time hold or wait for a
resource. It builds requests and decides what each message from the daemon
means; it never reads, writes, sleeps or waits. The transports (_sync.py:
threads and a socket; _async.py: an asyncio protocol) read frames and hand
them to receive(), carry out the actions it returns (wake a waiter, run a
callback, send a release, schedule a renewal), and send what it builds.

The sync transport calls the methods that touch the requests and leases
under its _lock, and the gate methods under its gate condition; the
asyncio one calls everything from its loop only.

Whatever takes more than one exchange (an acquire that may connect
again, a status in pages) is written once as a plan: a generator that
yields steps, each (name of a transport method, its arguments...), and is
sent the method's result or thrown its exception. Each transport drives
plans with its _run(), calling the method (awaiting it, for asyncio):
_connected(deadline, once, ...) to connect (again), _call_on(request,
wanted reply kind, op name, resource, connection) for one request and its
answer, _gate_enter/_gate_exit, _acquire_on for one acquire, _wait_on(
request, connection, give-up time) for a request whose answer may take as
long as its caller allows (an upgrade), _send_ignored(request, connection).
"""
import itertools
import time
from collections import namedtuple

from . import _proto as P
from . import errors as E
from ._proto import pb

QueueInfo = namedtuple("QueueInfo", "resource position holder_pid holder_name "
                                    "holders lease_id hosts_ahead",
                       defaults=(0,))
QueueInfo.__doc__ = """Where a waiting acquire stands: 1-based queue
position, the pid and client name of a current holder, how many hold it;
for a cluster resource, hosts_ahead: how many hosts' keys are ahead of this
host's in the cluster's queue (the position is then among this host's
waiters), 0 otherwise."""


class Pending:
    """One request waiting for its final answer. fut: the asyncio future
    its task awaits (None for the sync client and for ignored requests)."""

    __slots__ = ("msg", "exc", "acquire", "raw", "abandoned", "lease",
                 "gate", "ignore", "on_queued", "on_revoked", "auto_renew",
                 "conn", "fut")

    def __init__(self, fut=None, acquire=False, ignore=False):
        self.fut = fut
        self.msg = None
        self.exc = None
        self.acquire = acquire
        self.ignore = ignore
        self.abandoned = False
        self.lease = None
        self.gate = None
        self.raw = None
        self.on_queued = None
        self.on_revoked = None
        self.auto_renew = False
        self.conn = None        # the connection it went out on

    def done(self):
        return self.msg is not None or self.exc is not None


class Gate:
    """A resource's gate: owner is the thread (ident) or task holding or
    waiting for it through the client, None once its wait was given up
    (closed to others until the daemon answers the withdrawal); done: an
    asyncio future set when the gate opens (None for the sync client)."""

    __slots__ = ("owner", "done")

    def __init__(self, owner, done=None):
        self.owner = owner
        self.done = done


# Actions that receive() returns: each names the transport's method that
# carries it out, and its arguments.
QUEUED = "_on_queued"       # (QUEUED, callback, QueueInfo): run callback
REVOKED = "_on_revoked"     # (REVOKED, lease, Revocation): tell its holder
ANSWER = "_on_answer"       # (ANSWER, pending): its final answer is in msg
RELEASE = "_send_ignored"   # (RELEASE, request, conn): send, answer ignored
GATE_EXIT = "_gate_exit"    # (GATE_EXIT, raw, gate): open the gate
RENEW = "_on_renew"         # (RENEW, lease): renew it every ttl/3


class Withdrawal(namedtuple("Withdrawal", "request conn lease gate_free")):
    """What giving up a waiting acquire takes: request (None: nothing) to
    send on conn without waiting for its answer; lease: the grant that is
    being released (its renewals stop); gate_free: open the gate now (else
    it opens when the daemon answers the withdrawal)."""


class Session:
    """Tables and protocol decisions of one client (see the module doc).

    new_lease(raw, granted): the transport's lease class bound to its
    client. who: "thread" or "task"; client_name, lock_name: the classes to
    name in messages ("Client", "ArbiterLock" or the async ones).
    may_reconnect(): True when the client may connect again after a loss
    (not closed, not forked)."""

    def __init__(self, socket_path, new_lease, who, client_name, lock_name,
                 may_reconnect=lambda: False):
        self.socket_path = socket_path
        self.may_reconnect = may_reconnect
        self.new_lease = new_lease
        self.who = who
        self.client_name = client_name
        self.lock_name = lock_name
        self.ids = itertools.count(2)
        self.pending = {}
        self.leases = {}
        self.gates = {}
        self.shutdown_seen = False      # the daemon said it stops
        self.reader = None              # feed()'s FrameReader

    def next_id(self):
        return next(self.ids)

    def register(self, req_id, p, conn):
        """A request goes out on conn: its answers are p's."""
        self.pending[req_id] = p
        p.conn = conn

    def ignored(self, req, conn):
        """Number req and register it as a request whose answer nobody
        waits for (cleanup); returns its pending entry."""
        req.id = self.next_id()
        p = Pending(ignore=True)
        self.register(req.id, p, conn)
        return p

    # ------------------------------------------------------------ receiving

    def feed(self, data):
        """Bytes from the daemon (any cut of its frames) in, the actions of
        every whole message out. (The transports decode with the reader of
        each connection, which also reads the handshake, and call
        receive() per message.)"""
        if self.reader is None:
            self.reader = P.FrameReader(self.socket_path)
        actions = []
        for m in self.reader.feed(data):
            actions.extend(self.receive(m))
        return actions

    def receive(self, m):
        """One message from the daemon: returns the actions it calls for."""
        kind = m.WhichOneof("kind")
        if kind in ("revoked", "error") and P.says_shutdown(m):
            self.shutdown_seen = True
        if kind == "revoked":
            got = self.revoked(m.revoked)
            return [] if got is None else [(REVOKED,) + got]
        if kind == "extended":
            # A cluster lease's deadline moved later (the daemon renewed
            # its etcd session).
            lease = self.leases.get(m.extended.lease_id)
            if lease is not None and m.extended.valid_until_ns:
                lease.valid_until = P.deadline_of(m.extended.valid_until_ns)
            return []
        if kind == "queued":
            p = self.pending.get(m.id)
            if p is None or p.on_queued is None or p.abandoned:
                return []
            q = m.queued
            return [(QUEUED, p.on_queued, QueueInfo(
                q.resource, q.position,
                q.holder_pid if q.HasField("holder_pid") else None,
                q.holder_name, q.holders, q.lease_id, q.hosts_ahead))]
        p = self.pending.pop(m.id, None)
        if p is None:
            return []
        p.msg = m
        if not p.acquire:
            return [(ANSWER, p)]
        if kind == "granted":
            lease = self.new_lease(p.raw, m.granted)
            lease._conn = p.conn
            lease._gate = p.gate
            lease._on_revoked = p.on_revoked
            lease._auto_renew = p.auto_renew
            if p.abandoned:
                # A withdrawn acquire got its grant after all (it raced
                # ahead of the withdrawal): release it, let the next in.
                lease.released = True
                return [(RELEASE, pb.Request(release=pb.Release(
                    lease_id=lease.lease_id)), p.conn),
                    (GATE_EXIT, p.raw, p.gate)]
            self.leases[lease.lease_id] = lease
            p.lease = lease
            if lease.ttl and p.auto_renew:
                return [(ANSWER, p), (RENEW, lease)]
        elif p.abandoned:
            return [(GATE_EXIT, p.raw, p.gate)]
        return [(ANSWER, p)]

    def revoked(self, r):
        """The daemon ended a lease: (lease, Revocation), or None when it is
        not one of ours (any more)."""
        lease = self.leases.pop(r.lease_id, None)
        if lease is None:
            return None
        rev = P.Revocation(lease, P.REASONS.get(r.reason, "REASON_%d" %
                                                r.reason), r.message)
        lease.revoked = rev
        return lease, rev

    def lose(self, exc, closing):
        """The connection ended with exc: empty the tables. Returns (the
        requests that waited, the gates to open now, [(lease, Revocation
        or None when the client itself closed)] for the leases it ended)."""
        pending = list(self.pending.values())
        self.pending.clear()
        leases = [lease for lease in self.leases.values()
                  if not lease.released]
        self.leases.clear()
        gates = [(p.raw, p.gate) for p in pending if p.abandoned]
        ended = []
        for lease in leases:
            rev = None
            if not closing:
                rev = P.Revocation(lease, "DISCONNECT", str(exc))
                lease.revoked = rev
            ended.append((lease, rev))
        return pending, gates, ended

    def forget(self, lease):
        """Drop lease from the table only if it is the lease there: a later
        connection's lease may have the same id."""
        if self.leases.get(lease.lease_id) is lease:
            del self.leases[lease.lease_id]

    # ------------------------------------------------------------ answers

    def answer(self, m, want, op, resource=None):
        """The value of a final answer of the kind want, or the error it
        stands for raised."""
        kind = m.WhichOneof("kind")
        if kind == want:
            return getattr(m, want)
        if kind == "error":
            raise P.daemon_error(m.error, self.socket_path,
                                 resource=resource, op=op)
        raise P.unexpected_reply(m, self.socket_path, op)

    def acquire_answer(self, p, m, text, timeout):
        """An acquire's final answer: (lease, None, False), or (None, the
        exception to raise, True when the daemon is stopping and the
        connection is done for; False: open the gate before raising)."""
        if p.lease is not None:
            return p.lease, None, False
        if m.WhichOneof("kind") == "error":
            exc = P.daemon_error(m.error, self.socket_path, resource=text,
                                 op="acquire", timeout=timeout)
            return None, exc, isinstance(exc, E.ConnectionLost)
        return None, P.unexpected_reply(m, self.socket_path, "Acquire"), False

    def acquire_request(self, p, raw, text, shared, timeout, deadline,
                        ttl_ms, on_queued, on_revoked, auto_renew,
                        lock_delay, gate):
        """Build an acquire (what is left of the timeout goes to the
        daemon) and fill its pending entry p."""
        req = P.acquire_in_time(
            self.next_id(), raw, text, shared, timeout, deadline, ttl_ms,
            on_queued, lock_delay, self.socket_path)
        p.acquire = True
        p.raw = raw
        p.gate = gate
        p.on_queued = on_queued
        p.on_revoked = on_revoked
        p.auto_renew = auto_renew
        return req

    # ------------------------------------------------------------ giving up

    def withdraw(self, req_id, p):
        """The waiter of an acquire gave up (interrupted, cancelled): leave
        nothing granted or queued (see Withdrawal)."""
        if not p.done():
            # The final answer is still to come: receive() releases a grant
            # that raced ahead and opens the gate.
            p.abandoned = True
            return Withdrawal(pb.Request(release=pb.Release(
                request_id=req_id)), p.conn, None, False)
        if p.lease is not None:
            lease = p.lease
            self.forget(lease)
            lease.released = True
            return Withdrawal(pb.Request(release=pb.Release(
                lease_id=lease.lease_id)), lease._conn, lease, True)
        return Withdrawal(None, None, None, True)

    def expire(self, req_id, p):
        """An acquire's own deadline ran out before the daemon answered:
        the withdrawal to send (a grant that comes later is released on
        arrival), or None when the answer came meanwhile."""
        if p.done():
            return None
        p.abandoned = True
        if p.gate is not None:
            # Closed to others until the daemon answers the withdrawal, but
            # no longer "ours": asking again is not AlreadyHeld.
            p.gate.owner = None
        return pb.Request(release=pb.Release(request_id=req_id))

    # ------------------------------------------------------------ gates

    def gate_wait(self, raw, me, text, timeout, deadline):
        """None when raw's gate is open; else (the gate to wait for, seconds
        left or None for no end). Raises AlreadyHeld when me holds it,
        WouldBlock for a try, Timeout when the deadline passed."""
        g = self.gates.get(raw)
        if g is None:
            return None
        if g.owner is not None and g.owner == me:
            raise E.AlreadyHeld(
                "this %s already holds or waits for %r through this %s: a "
                "second lease would wait for itself forever. Release the "
                "first one, or use %s for re-entrant locking" %
                (self.who, text, self.client_name, self.lock_name),
                code="ALREADY_HELD", socket_path=self.socket_path,
                resource=text)
        if timeout == 0:
            raise E.WouldBlock(
                "could not lock %r without waiting: another %s of this "
                "process holds or waits for it (same %s). Retry later, or "
                "pass a timeout" % (text, self.who, self.client_name),
                socket_path=self.socket_path, resource=text)
        if deadline is None:
            return g, None
        left = deadline - time.monotonic()
        if left <= 0:
            raise P.gate_timeout(text, timeout, g.owner is None, self.who,
                                 self.socket_path)
        return g, left

    def gate_take(self, raw, gate):
        self.gates[raw] = gate
        return gate

    def gate_exit(self, raw, gate):
        """Open raw's gate if it is still gate; True if it was."""
        if gate is not None and self.gates.get(raw) is gate:
            del self.gates[raw]
            return True
        return False

    # ------------------------------------------------------------ operations

    def acquire(self, resource, shared, timeout, ttl, on_revoked, on_queued,
                auto_renew, lock_delay):
        """Plan: acquire a lease within the timeout. When the daemon goes
        away while the request waits (or before it went out), nothing was
        granted that still stands: ask the daemon that comes back, within
        the same timeout."""
        raw, text = P.check_name(resource)
        timeout = P.normalize_timeout(timeout)
        ttl_ms = P.seconds_to_ms(ttl, "ttl") if ttl else 0
        deadline = None if timeout is None else time.monotonic() + timeout
        yield "_connected", deadline, timeout == 0, text, timeout
        gate = yield "_gate_enter", raw, text, timeout, deadline
        while True:
            try:
                # ConnectionLost leaves the gate to us; any other outcome
                # settles it.
                return (yield ("_acquire_on", raw, text, shared, timeout,
                               deadline, ttl_ms, on_queued, on_revoked,
                               auto_renew, lock_delay, gate))
            except E.ConnectionLost as exc:
                if not (P.may_requeue(exc, timeout, deadline) and
                        self.may_reconnect()):
                    yield "_gate_exit", raw, gate
                    raise exc
            try:
                yield "_connected", deadline, False, text, timeout
            except BaseException as exc:
                yield "_gate_exit", raw, gate
                raise exc

    # ------------------------------------------------------------ connecting

    @staticmethod
    def connect_seconds(connect_timeout, deadline, once, lost):
        """How long one attempt to connect may take: connect_timeout, cut
        to what is left before the deadline when connecting again after a
        loss (lost) with back-off."""
        if deadline is not None and not once and lost is not None:
            return max(min(connect_timeout, deadline - time.monotonic()),
                       0.001)
        return connect_timeout

    def retry_delay(self, exc, lost, once, backoff, deadline, text, timeout):
        """An attempt to connect again after the loss lost failed with exc:
        the seconds to wait before the next, or the error raised (a single
        attempt, a refusal no retry cures, or no time left)."""
        if once or not P.may_retry_connect(exc):
            raise P.reconnect_failed(exc, lost, self.socket_path) from None
        delay = backoff.delay(deadline)
        if delay is None:
            raise P.back_too_late(text, timeout, self.socket_path, exc)
        return delay

    # ------------------------------------------------------------ plans

    def call(self, req, want, op, resource=None, conn=None):
        """Plan: one request and the wanted part of its answer. Sent on the
        connection conn only, when given (a lease's release or renew must
        never reach a later connection, whose leases may have the same
        ids); else on the current one, connecting again when it was lost,
        and once more on a new one when a read-only request finds its
        connection broken (the daemon restarted while the client idled)."""
        if conn is not None:
            return (yield "_call_on", req, want, op, resource, conn)
        yield ("_connected",)
        try:
            return (yield "_call_on", req, want, op, resource, None)
        except E.ConnectionLost as exc:
            if not (P.may_resend(exc, op) and self.may_reconnect()):
                raise exc
        yield ("_connected",)
        return (yield "_call_on", req, want, op, resource, None)

    def ping(self, payload):
        t = time.perf_counter()
        r = yield from self.call(pb.Request(ping=pb.Ping(payload=payload)),
                               "pong", "ping")
        return {"role": r.role, "payload": r.payload,
                "seconds": time.perf_counter() - t}

    def _paged(self, req, field, reply, op, to_dict, resource):
        if resource is not None:
            getattr(req, field).resource = P.check_name(resource)[0]
        # The daemon answers in pages; merging them adds up the resources.
        whole = reply()
        while True:
            page = yield from self.call(req, field, op)
            whole.MergeFrom(page)
            if not page.next_cursor:
                return to_dict(whole)
            getattr(req, field).cursor = page.next_cursor

    def stats(self, resource=None):
        return self._paged(pb.Request(stats=pb.StatsRequest()), "stats",
                           pb.Stats, "stats request", P.stats_dict, resource)

    def status(self, resource=None):
        return self._paged(pb.Request(status=pb.StatusRequest()), "status",
                           pb.Status, "status request", P.status_dict,
                           resource)

    def revoke(self, lease_id=None, pid=None):
        if (lease_id is None) == (pid is None):
            raise TypeError("revoke() needs exactly one of lease_id or pid")
        req = pb.Request(revoke=pb.Revoke())
        if lease_id is not None:
            req.revoke.lease_id = lease_id
        else:
            req.revoke.pid = pid
        return (yield from self.call(req, "revoke_done", "revoke")).revoked

    def stats_reset(self):
        yield from self.call(pb.Request(stats_reset=pb.StatsReset()),
                             "stats_reset_done", "stats reset")

    def renew(self, lease, ttl=None):
        lease.check()
        req = pb.Request(renew=pb.Renew(lease_id=lease.lease_id))
        if ttl:
            req.renew.ttl_ms = P.seconds_to_ms(ttl, "ttl")
        r = yield from self.call(req, "renewed", "renew", lease.resource,
                                 lease._conn)
        lease.ttl = r.ttl_ms / 1000.0 if r.ttl_ms else None
        return lease.ttl

    def convert(self, lease, shared, timeout=None):
        """Plan: upgrade lease to exclusive (shared False) within timeout
        (None: no end, 0: try once), or downgrade it to shared, in place;
        returns its token, new for an upgrade. An upgrade that fails for
        any reason leaves the lease held shared: when its deadline (plus
        the grace an acquire gets) passes unanswered or its caller is
        interrupted, it is withdrawn by converting the lease back to shared,
        and a Converted that comes later is ignored."""
        op = "downgrade" if shared else "upgrade"
        if lease.released:
            raise E.ArbiterError(
                "cannot %s the lease on %r (lease %d): it was released. "
                "Acquire the resource anew" %
                (op, lease.resource, lease.lease_id),
                socket_path=self.socket_path, resource=lease.resource)
        lease.check()
        req = pb.Request(convert=pb.Convert(
            lease_id=lease.lease_id, mode=pb.SHARED if shared else
            pb.EXCLUSIVE))
        timeout = None if shared else P.normalize_timeout(timeout)
        if timeout is not None:
            req.convert.timeout_ms = (0 if timeout == 0 else max(
                1, P.seconds_to_ms(timeout, "timeout")))
        conn = lease._conn
        try:
            if shared:
                # Never waits on others: the I/O bound of any request.
                r = yield ("_call_on", req, "converted", op, lease.resource,
                           conn)
            else:
                deadline = (None if timeout is None else
                            time.monotonic() + timeout)
                m = yield ("_wait_on", req, conn,
                           P.acquire_deadline(deadline))
                if m is None:
                    yield "_send_ignored", self.withdraw_convert(lease), conn
                    raise P.convert_expired(lease, timeout, self.socket_path)
                r = self.answer(m, "converted", op, lease.resource)
        except E.ConnectionLost as exc:
            if lease.revoked is not None:
                raise lease.revoked.error(self.socket_path) from exc
            raise
        except E.ArbiterError as exc:
            if exc.code is None:
                raise   # made here, not the daemon's answer
            raise P.convert_error(exc, lease, op, timeout,
                                  self.socket_path) from None
        except BaseException:
            if not shared:
                # Interrupted or cancelled: leave the lease shared, whatever
                # the daemon did meanwhile.
                yield "_send_ignored", self.withdraw_convert(lease), conn
            raise
        mode = r.mode if r.HasField("mode") else req.convert.mode
        lease.mode = P.SHARED if mode == pb.SHARED else P.EXCLUSIVE
        lease.token = r.token
        if r.valid_until_ns:
            lease.valid_until = P.deadline_of(r.valid_until_ns)
        return lease.token

    @staticmethod
    def withdraw_convert(lease):
        """The request that gives a waiting upgrade of lease up: a convert
        to shared, which withdraws it, or downgrades the lease again if the
        upgrade was done meanwhile."""
        return pb.Request(convert=pb.Convert(
            lease_id=lease.lease_id, mode=pb.SHARED, timeout_ms=0))

    def release(self, lease):
        """Release a lease the caller marked released and that was not
        revoked before: ends quietly when the daemon had already ended it
        or the connection is gone (the lease ended with it)."""
        req = pb.Request(release=pb.Release(lease_id=lease.lease_id))
        try:
            yield from self.call(req, "released", "release", lease.resource,
                                 lease._conn)
        except E.ConnectionLost:
            # Lost while the release was on its way: the daemon may well
            # have applied it (its answer is what went missing), so this
            # is no revocation. A loss seen before the release was called
            # has already marked the lease (lose()), and check() says so.
            pass
        except E.ArbiterError as exc:
            if exc.code != "UNKNOWN_LEASE" or lease.revoked is None:
                raise


def step(plan, value=None, exc=None):
    """Advance plan with the last step's result value (or exception exc):
    returns (True, its result) when it ended, else (False, its next
    step)."""
    try:
        if exc is not None:
            return False, plan.throw(exc)
        return False, plan.send(value)
    except StopIteration as stop:
        return True, stop.value


def note_revoked(exc, ev):
    """A with block ended and releasing its lease raised LeaseRevoked exc:
    raise it, or when the block raised ev, add it to ev as a note."""
    if ev is None:
        raise exc
    ev.add_note("arbiter: " + str(exc))
