"""The blocking client: Client, Lease, ArbiterLock.

Threads. One Client is one connection to the daemon and may be shared by any
number of threads. Requests go out under a send lock. Replies are read
leader/follower style: a thread waiting for a reply reads the socket itself
when no other thread is reading, and hands every frame it reads to the
thread it belongs to; while no thread waits, a watcher thread polls the
socket, so revocations are reported at once even while the application is
idle. (Handing every reply over from a dedicated reader thread would add a
thread switch, about 30 us, to each round trip.) A worker thread runs
on_revoked/on_queued callbacks and releases leases dropped by the garbage
collector; a renewer thread (started on the first lease with a ttl) renews
ttl leases at a third of their ttl.

Leases belong to the connection, not to a thread. So that threads exclude
each other the way processes do, the Client lets one thread at a time hold or
wait for a given resource: a second thread asking for it waits in-process
(within its timeout) until the first releases, then asks the daemon. The
same thread asking again for a resource it holds raises AlreadyHeld at once
instead of waiting for itself forever (ArbiterLock counts re-entrant
acquires instead).

Restarts. When the daemon's connection is lost (the daemon was killed or
restarted), every lease of the Client ends and its holder is told
(on_revoked, LeaseRevoked, is_locked False): nothing is re-acquired behind
its back. The Client itself connects again for its next call, and an
acquire that was waiting, or is about to wait, connects again with back-off
(50 ms doubling to 1 s) and queues anew within its own timeout; timeout=0
answers at once. Each new connection is checked like the first (trust).

fork(): a Client does not survive fork. In the child its connection is
closed at once (so a dead parent's leases are never kept alive by a child)
and every call raises ConnectionLost: create a new Client in the child.
"""
import collections
import copy
import heapq
import itertools
import os
import select
import socket
import threading
import time
import weakref
from queue import SimpleQueue

from . import _proto as P
from . import _session as S
from . import _trust
from . import errors as E
from ._session import QueueInfo  # noqa: F401 (re-exported)

_live_clients = weakref.WeakSet()
_Pending = S.Pending


class Lease(P.BaseLease):
    """A granted lease (see BaseLease for its fields). ``release()`` ends it;
    as a context manager it releases on exit. Any thread may release it."""

    __slots__ = ()

    def release(self):
        """End the lease. Raises LeaseRevoked (after cleaning up) if the
        daemon had already ended it: the work done since then was not
        protected. Releasing twice is a no-op."""
        self._client._release_lease(self)

    def renew(self, ttl=None):
        """Extend a ttl lease now (ttl in seconds; None keeps its own)."""
        return self._client.renew(self, ttl)

    def upgrade(self, timeout=None):
        """Make this shared lease exclusive in place, without letting go:
        waits (None: for ever, 0: not at all, else seconds) for the other
        shared holders to leave, ahead of every queued request. Returns the
        new fencing token (also in ``token``; ``mode`` becomes
        "exclusive"). Raises Deadlock when another holder already waits to
        upgrade, Timeout (WouldBlock for 0) when time runs out, and
        LeaseRevoked when the lease is gone; on any failure the lease is
        still held shared."""
        return self._client._run(self._client._session.convert(
            self, False, timeout))

    def downgrade(self):
        """Make this exclusive lease shared in place (never waits): the
        readers queued behind it get in. Returns the token (unchanged)."""
        return self._client._run(self._client._session.convert(self, True))

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        _release_on_exit(self, ev)
        return False


def _release_on_exit(lease, ev):
    try:
        lease.release()
    except E.LeaseRevoked as exc:
        S.note_revoked(exc, ev)


class _LeaseContext(P.LeaseContextBase):
    __slots__ = ()

    def __enter__(self):
        self._lease = self._client.acquire(*self._args[0], **self._args[1])
        return self._lease

    def __exit__(self, et, ev, tb):
        lease, self._lease = self._lease, None
        _release_on_exit(lease, ev)
        return False


class Client:
    """A connection to arbiterd.

    ``socket_path``: the daemon's socket; None means $ARBITER_SOCKET, else
    the default (/run/arbiter/arbiter.sock for root,
    /tmp/arbiter-UID/arbiter.sock otherwise). ``name``: shown by `arbiterctl
    status` (default: the program's name). ``on_revoked(revocation)`` is
    called (on the client's worker thread) whenever a lease of this client
    ends without being released: TTL expiry, admin revoke, daemon shutdown,
    lost connection.

    ``trust_uids``: uids or user names (or ``"*"``) trusted to serve the
    socket besides your own uid, root and $ARBITER_TRUST_UID.
    ``connect_timeout`` bounds connect and handshake; ``io_timeout``
    (seconds, default 30) bounds the wait for any other answer (ping,
    stats, status, release, renew, revoke): when it runs out the connection
    is given up (ConnectionLost). An acquire with a timeout gives up by
    itself shortly after it, whatever the daemon does.

    Raises NotRunning when no daemon answers, Forbidden when the socket or
    the daemon refuses this uid, UntrustedServer when the socket's folder or
    the server's uid is not trusted, ProtocolError on a version mismatch.
    """

    def __init__(self, socket_path=None, name=None, *, on_revoked=None,
                 connect_timeout=10.0, io_timeout=P.IO_TIMEOUT,
                 trust_uids=None):
        self.socket_path, is_default = P.resolve_socket(socket_path)
        self.io_timeout = P.check_io_timeout(io_timeout, "io_timeout")
        self.trust_uids = trust_uids
        self.name = name if name is not None else P.default_client_name()
        self.on_revoked = on_revoked
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._gate_cond = threading.Condition(threading.Lock())
        self._session = S.Session(
            self.socket_path, lambda raw, granted: Lease(self, raw, granted),
            "thread", "Client", "ArbiterLock", self._may_reconnect)
        self._closed = None
        self._closing = False
        self._work = SimpleQueue()
        self._renew_cond = threading.Condition(threading.Lock())
        self._renew_heap = []
        self._renew_seq = itertools.count()
        self._renew_thread = None
        self._reader = P.FrameReader(self.socket_path)
        self._inbox = collections.deque()    # read, not yet dispatched
        # recv_into one buffer: sock.recv(256 KiB) would malloc (mmap) and
        # free 256 KiB per call, which costs ~200 us on small VMs.
        self._rbuf = bytearray(65536)
        self._rview = memoryview(self._rbuf)
        self._cv = threading.Condition(threading.Lock())
        # The watcher parks on its own condition (same lock), so handing the
        # reader role between callers never wakes it.
        self._watch_cv = threading.Condition(self._cv._lock)
        self._reading = False                # a thread has the reader role
        self._watch_wanted = False           # parked long: notify at idle
        self._callers = 0                    # threads waiting for replies

        self.connect_timeout = connect_timeout
        self._is_default = is_default
        self._conn_lock = threading.Lock()   # one (re)connect at a time
        self._sock = None
        self._thread = None
        self._attach(*self._open(connect_timeout))
        threading.Thread(target=self._work_loop, args=(self._work,),
                         daemon=True, name="arbiter-callbacks").start()
        _live_clients.add(self)

    def _open(self, seconds):
        """Connect and say Hello within seconds, checking the socket's
        folder and the server's uid: (socket, welcome, reader, frames that
        came after the Welcome)."""
        if self._is_default:
            _trust.check_default_folder(self.socket_path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        reader = P.FrameReader(self.socket_path)
        start = time.monotonic()     # one bound for connect + handshake
        try:
            sock.settimeout(seconds)
            try:
                sock.connect(self.socket_path)
            except socket.timeout:
                raise E.NotRunning(
                    "connecting to %s timed out after %g s: is arbiterd "
                    "stopped or overloaded?" % (self.socket_path, seconds),
                    socket_path=self.socket_path) from None
            except OSError as exc:
                raise P.connect_error(exc, self.socket_path) from None
            _trust.check_peer(sock, self.socket_path, self.trust_uids)
            welcome, extra = self._handshake(
                sock, reader, seconds - (time.monotonic() - start))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock, welcome, reader, extra

    def _attach(self, sock, welcome, reader, extra):
        """Make a new connection the client's own: the first one, or one
        made after a loss (once the old one's watcher has ended and no
        thread reads it)."""
        old = self._sock
        if old is not None:
            t = self._thread
            if t is not None and t is not threading.current_thread():
                t.join(self.io_timeout)
            with self._cv:
                while self._reading:
                    self._cv.wait()
                self._reading = True     # nobody reads during the swap
        try:
            with self._send_lock, self._lock:
                self._sock = sock
                self._reader = reader
                self._inbox = collections.deque(extra)
                self._poller = select.poll()
                self._poller.register(sock.fileno(), select.POLLIN)
                self._session.shutdown_seen = False
                self.server_version = welcome.server_version
                self.connection_id = welcome.connection_id
                self.role = welcome.role
                self.max_frame_bytes = welcome.limits.max_frame_bytes or 65536
                self._closed = None
        finally:
            if old is not None:
                with self._cv:
                    self._reading = False
                    self._cv.notify_all()
        if old is not None:
            old.close()
        self._thread = threading.Thread(
            target=self._watch_loop, args=(sock,), daemon=True,
            name="arbiter-watcher-%d" % self.connection_id)
        self._thread.start()

    def _may_reconnect(self):
        return P.may_reconnect(self._closing, self._pid, self._closed)

    def _connected(self, deadline=None, once=True, text=None, timeout=None):
        """Return when the client is connected: at once, or after
        connecting again when the last connection was lost. once: a single
        attempt (its failure is raised); else attempts with back-off until
        the monotonic deadline (None: no end), then Timeout."""
        if self._closed is None and self._pid == os.getpid():
            return
        backoff = P.Backoff()
        while True:
            with self._conn_lock:
                if self._closed is None and self._pid == os.getpid():
                    return
                if not self._may_reconnect():
                    self._raise_dead()
                lost = self._closed
                try:
                    self._attach(*self._open(self._session.connect_seconds(
                        self.connect_timeout, deadline, once, lost)))
                    return
                except E.ArbiterError as exc:
                    delay = self._session.retry_delay(
                        exc, lost, once, backoff, deadline, text, timeout)
            time.sleep(delay)

    def _handshake(self, sock, reader, seconds):
        path = self.socket_path
        deadline = time.monotonic() + seconds
        try:
            sock.sendall(P.hello_frame(1, self.name))
            msgs = []
            while not msgs:
                # One bound for the whole handshake, however it trickles in.
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                sock.settimeout(left)
                data = sock.recv(65536)
                if not data:
                    raise P.lost(path, "it closed during the handshake")
                msgs = reader.feed(data)
        except socket.timeout:
            raise E.ProtocolError(
                "no answer to Hello from %s in time: is that socket an "
                "arbiter (and is it running, not stopped)?" % path,
                socket_path=path) from None
        except OSError as exc:
            raise P.lost(path, "during the handshake: %s" % exc) from None
        m = msgs[0]
        if m.WhichOneof("kind") != "welcome":
            raise P.welcome_error(m, path)
        # Frames after the Welcome are never expected; keep them for the
        # reader.
        return m.welcome, msgs[1:]

    # ------------------------------------------------------------ plumbing

    def __repr__(self):
        return "<arbiter_client.Client %s conn=%s %s>" % (
            self.socket_path, getattr(self, "connection_id", "?"),
            "closed" if self._closed else "open")

    @property
    def closed(self):
        """True once the connection is closed (by close(), the daemon, or
        fork)."""
        return self._closed is not None

    def _dead(self):
        return self._closed is not None or self._pid != os.getpid()

    def _raise_dead(self):
        if self._pid != os.getpid():
            raise P.forked("Client", self._pid, self.socket_path)
        raise copy.copy(self._closed)

    def _submit(self, req, pending, conn=None):
        """Register pending under req.id and send req (only on the
        connection conn, when given: a lease's release or renew must never
        reach a later connection, whose leases may have the same ids)."""
        data = P.encode(req)
        with self._lock:
            if self._closed is not None or self._pid != os.getpid():
                self._raise_dead()
            sock = self._sock
            if conn is not None and conn is not sock:
                raise P.lost(self.socket_path, "before this request")
            self._session.register(req.id, pending, sock)
        try:
            with self._send_lock:
                self._sendall(sock, data)
        except socket.timeout:
            raise copy.copy(self._fail(P.io_expired(
                self.socket_path, "request (no room to send it)",
                self.io_timeout), sock)) from None
        except OSError as exc:
            raise copy.copy(self._fail(self._lost_why(
                "sending: %s" % exc), sock)) from None
        return sock

    def _sendall(self, sock, data):
        """sendall, but waiting at most io_timeout for room (a stopped
        daemon that reads nothing cannot block a sender forever)."""
        view = memoryview(data)
        deadline = None
        while view:
            try:
                view = view[sock.send(view, socket.MSG_DONTWAIT):]
                continue
            except (BlockingIOError, InterruptedError):
                pass
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.io_timeout
            if now >= deadline:
                raise socket.timeout("no room to send for %g s" %
                                     self.io_timeout)
            p = select.poll()           # not select(): fds may be > 1023
            p.register(sock.fileno(), select.POLLOUT)
            p.poll(max(1, int((deadline - now) * 1000)))

    # Tables in the session, under the names the tests know.
    _leases = property(lambda self: self._session.leases)
    _gates = property(lambda self: self._session.gates)
    _ids = property(lambda self: self._session.ids)

    def _run(self, plan):
        """Carry out a session plan (see _session)."""
        done, out = S.step(plan)
        while not done:
            done, out = S.step(plan, *self._perform(out))
        return out

    def _perform(self, step):
        try:
            return getattr(self, step[0])(*step[1:]), None
        except BaseException as exc:
            return None, exc

    def _call_on(self, req, want, op, resource, conn):
        p = _Pending()
        req.id = self._session.next_id()
        self._enter_call()
        try:
            sock = self._submit(req, p, conn)
        except BaseException:
            self._wait_abort()
            raise
        m = self._wait(p, time.monotonic() + self.io_timeout)
        if m is None:
            # No answer in time: the daemon is stopped or hung. Give the
            # connection up (its leases end when the daemon sees it closed)
            # rather than leave this request's fate unknown.
            self._fail(P.io_expired(self.socket_path, op, self.io_timeout),
                       sock)
            m = self._wait_result(p)
        return self._session.answer(m, want, op, resource)

    def _wait_on(self, req, conn, give_up):
        """Send req on the connection conn and wait for its answer until
        the monotonic time give_up (None: no end): the message, or None
        when give_up passed first (an answer that comes later is
        ignored)."""
        p = _Pending()
        req.id = self._session.next_id()
        self._enter_call()
        try:
            self._submit(req, p, conn)
        except BaseException:
            self._wait_abort()
            raise
        m = self._wait(p, give_up)
        if m is None:
            with self._lock:
                if not p.done():
                    p.abandoned = True
                    return None
            m = self._wait_result(p)
        return m

    def _send_ignored(self, req, conn):
        """Send a request whose answer nobody waits for (cleanup), on the
        connection conn only."""
        req.id = self._session.next_id()
        try:
            self._submit(req, _Pending(ignore=True), conn)
        except E.ArbiterError:
            pass

    def _enter_call(self):
        """Count a thread that will wait for a reply, before it sends, so
        the watcher leaves the reply to it."""
        with self._cv:
            self._callers += 1

    def _wait(self, p, deadline=None):
        """Wait for p's final answer (after _enter_call), reading the socket
        ourselves whenever no other thread is reading it. Returns None when
        the monotonic deadline (None: none) passed first."""
        cv = self._cv
        try:
            while True:
                with cv:
                    while self._reading and not p.done():
                        if deadline is None:
                            cv.wait()
                        else:
                            left = deadline - time.monotonic()
                            if left <= 0:
                                break
                            cv.wait(left)
                    if p.done():
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        return None
                    self._reading = True
                try:
                    self._read_some(True, deadline)
                finally:
                    with cv:
                        self._reading = False
                        cv.notify_all()
        finally:
            with cv:
                self._callers -= 1
                if self._callers == 0 and self._watch_wanted:
                    self._watch_wanted = False
                    self._watch_cv.notify()
        return self._wait_result(p)

    @staticmethod
    def _wait_result(p):
        if p.exc is not None:
            raise copy.copy(p.exc)     # one instance per raise: it is shared
        return p.msg

    def _wait_abort(self):
        with self._cv:
            self._callers -= 1

    def _read_some(self, block, deadline=None):
        """With the reader role: read what is there (block: wait for
        something, until the monotonic deadline if not None) and dispatch
        every whole frame."""
        inbox = self._inbox
        sock = self._sock
        if not inbox:
            if block:
                if deadline is None:
                    ms = None
                else:
                    ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                try:
                    if not self._poller.poll(ms):
                        return
                except InterruptedError:
                    return
            try:
                n = sock.recv_into(self._rbuf, 0, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(self._lost_why(str(exc)), sock)
                return
            if not n:
                self._fail(self._lost_why(None), sock)
                return
            try:
                inbox.extend(self._reader.feed(self._rview[:n]))
            except E.ArbiterError as exc:
                self._fail(exc, sock)
                return
        while inbox:
            self._dispatch(inbox.popleft())

    def _lost_why(self, err):
        if self._closing or self._closed is not None:
            return E.ConnectionLost(
                "this Client was closed (arbiter at %s)" % self.socket_path,
                socket_path=self.socket_path)
        if self._session.shutdown_seen:     # however the socket broke
            return P.shut_down(self.socket_path)
        return P.lost(self.socket_path, err)

    # The watcher parks while threads wait for replies. Waking it each time
    # the count of waiting threads drops to 0 would put a thread switch on
    # every round trip (+35 us here), so it re-checks after WATCH_RESUME
    # seconds, doubling up to WATCH_MAX; each time such a wait runs out it
    # asks to be woken by the next thread that leaves the client idle (so a
    # long acquire costs about one wake-up a second, and the watcher
    # resumes as soon as it ends). Frames
    # that arrive meanwhile wait in the socket buffer; any thread calling
    # the client reads them first.
    WATCH_RESUME = 0.02
    WATCH_MAX = 1.0

    def _watch_loop(self, sock):
        """While no thread waits for a reply, watch the socket for events
        (Revoked) and EOF, so they are seen even when the app is idle.
        Ends with the connection sock."""
        cv = self._cv
        wcv = self._watch_cv
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        try:
            while True:
                with cv:
                    delay = self.WATCH_RESUME
                    while ((self._callers or self._reading) and
                           self._closed is None):
                        if not wcv.wait(delay):
                            self._watch_wanted = True
                            delay = min(delay * 2, self.WATCH_MAX)
                    self._watch_wanted = False
                    if self._closed is not None or self._sock is not sock:
                        return
                poller.poll()
                with cv:
                    if self._closed is not None or self._sock is not sock:
                        return
                    if self._callers or self._reading:
                        continue  # a waiting thread reads it
                    self._reading = True
                try:
                    self._read_some(False)
                finally:
                    with cv:
                        self._reading = False
                        cv.notify_all()
        except BaseException as exc:  # a bug: never leave waiters hanging
            self._fail(E.ProtocolError(
                "arbiter_client watcher failed: %r" % exc,
                socket_path=self.socket_path), sock)

    def _dispatch(self, m):
        with self._lock:
            actions = self._session.receive(m)
        for act in actions:
            getattr(self, act[0])(*act[1:])

    def _on_queued(self, callback, info):
        self._post(callback, info)

    def _on_revoked(self, lease, rev):
        self._notify_revoked(lease, rev)

    def _on_answer(self, p):
        pass    # the waiting thread sees p.msg (the reader wakes it)

    def _on_renew(self, lease):
        self._schedule_renew(lease)

    def _notify_revoked(self, lease, rev):
        for cb in (lease._on_revoked, self.on_revoked):
            if cb is not None:
                self._post(cb, rev)

    def _fail(self, exc, sock=None):
        """The connection (sock, when given: only if it is still the
        client's) is gone: fail every waiter, revoke every lease. Returns
        the exception the connection ended with."""
        with self._lock:
            if sock is not None and sock is not self._sock:
                return exc      # an earlier connection, already given up
            if self._closed is not None:
                return self._closed
            self._closed = exc
            sock = self._sock
            pending, gates, ended = self._session.lose(exc, self._closing)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        for raw, gate in gates:
            self._gate_exit(raw, gate)
        for p in pending:
            p.exc = exc
        with self._cv:
            self._cv.notify_all()
            self._watch_cv.notify_all()
        for lease, rev in ended:
            if rev is not None:
                self._notify_revoked(lease, rev)
        with self._renew_cond:
            self._renew_cond.notify_all()
        return exc

    # --------------------------------------------------- worker (callbacks)

    def _post(self, fn, *args):
        """Run fn(*args) on the worker thread (SimpleQueue.put is reentrant:
        safe from __del__ and from the reader)."""
        self._work.put((fn, args))

    def _work_loop(self, q):
        while True:
            fn, args = q.get()
            if fn is None:
                return
            try:
                fn(*args)
            except Exception:  # a callback's bug must not stop the others
                import logging
                logging.getLogger("arbiter_client").exception(
                    "arbiter_client callback %r failed", fn)

    # ------------------------------------------------------------ renewing

    def _schedule_renew(self, lease):
        due = time.monotonic() + lease.ttl / 3.0
        with self._renew_cond:
            heapq.heappush(self._renew_heap,
                           (due, next(self._renew_seq), lease))
            if self._renew_thread is None:
                self._renew_thread = threading.Thread(
                    target=self._renew_loop, daemon=True,
                    name="arbiter-renewer")
                self._renew_thread.start()
            self._renew_cond.notify()

    def _renew_loop(self):
        heap = self._renew_heap
        while True:
            with self._renew_cond:
                while True:
                    # A lost connection's leases are revoked (skipped
                    # below); the renewer serves the next connection too.
                    if self._closing or self._pid != os.getpid():
                        return
                    if not heap:
                        self._renew_cond.wait()
                        continue
                    left = heap[0][0] - time.monotonic()
                    if left > 0:
                        self._renew_cond.wait(left)
                        continue
                    lease = heapq.heappop(heap)[2]
                    break
            if not lease.held:
                continue
            try:
                self.renew(lease)
            except E.ArbiterError:
                continue  # released, revoked or lost: nothing to renew
            if lease.held:
                self._schedule_renew(lease)

    # ------------------------------------------------------------ gates

    def _gate_enter(self, raw, text, timeout, deadline):
        me = threading.get_ident()
        with self._gate_cond:
            while True:
                wait = self._session.gate_wait(raw, me, text, timeout,
                                               deadline)
                if wait is None:
                    return self._session.gate_take(raw, S.Gate(me))
                self._gate_cond.wait(wait[1])

    def _gate_exit(self, raw, gate):
        with self._gate_cond:
            if self._session.gate_exit(raw, gate):
                self._gate_cond.notify_all()

    # ------------------------------------------------------------ leases

    def lease(self, resource, shared=False, timeout=None, ttl=None, **kw):
        """A context manager: acquires on entry and yields the Lease,
        releases on exit. Arguments as for acquire(). On exit it raises
        LeaseRevoked if the daemon ended the lease while the block ran."""
        return _LeaseContext(self, ((resource, shared, timeout, ttl), kw))

    def acquire(self, resource, shared=False, timeout=None, ttl=None, *,
                on_revoked=None, on_queued=None, auto_renew=True,
                lock_delay=None):
        """Acquire a lease and return it (release it with lease.release()).

        ``resource``: str or bytes, 1..255 bytes of printable UTF-8 (a name,
        not a path). ``shared``: shared instead of exclusive. ``timeout``:
        None waits forever, 0 tries once (WouldBlock if busy), else seconds
        (Timeout when they run out). ``ttl``: seconds; the lease must be
        renewed within it, which this client does by itself at ttl/3 unless
        ``auto_renew=False``. ``on_revoked(revocation)``: called when this
        lease is revoked. ``on_queued(QueueInfo)``: called while waiting,
        whenever the queue position changes. ``lock_delay``: seconds the
        daemon holds the resource back after an unclean end of this lease.

        A KeyboardInterrupt (or any exception) while waiting withdraws the
        request: nothing stays granted or queued. With a timeout, the call
        returns within it (plus about 0.15 s) even when the daemon is
        stopped or never answers: the request is withdrawn, and a grant that
        comes later is released at once.
        """
        return self._run(self._session.acquire(
            resource, shared, timeout, ttl, on_revoked, on_queued, auto_renew,
            lock_delay))

    def _acquire_on(self, raw, text, shared, timeout, deadline, ttl_ms,
                    on_queued, on_revoked, auto_renew, lock_delay, gate):
        """One acquire on the current connection. ConnectionLost leaves the
        gate to the caller (which may ask again); any other outcome settles
        it."""
        try:
            p = _Pending()
            req = self._session.acquire_request(
                p, raw, text, shared, timeout, deadline, ttl_ms, on_queued,
                on_revoked, auto_renew, lock_delay, gate)
            self._enter_call()
            try:
                self._submit(req, p)
            except BaseException:
                self._wait_abort()
                raise
        except E.ConnectionLost:
            raise
        except BaseException:
            self._gate_exit(raw, gate)
            raise
        try:
            m = self._wait(p, P.acquire_deadline(deadline))
        except E.ConnectionLost:
            raise
        except E.ArbiterError:
            self._gate_exit(raw, gate)
            raise
        except BaseException:
            self._withdraw(req.id, p)
            raise
        if m is None:
            # The daemon did not answer in time (stopped, hung): withdraw,
            # unless the answer came in the meantime.
            with self._lock:
                withdrawal = self._session.expire(req.id, p)
            if withdrawal is not None:
                self._send_ignored(withdrawal, p.conn)
                raise P.acquire_expired(text, timeout, self.socket_path)
            try:
                m = self._wait_result(p)
            except E.ConnectionLost:
                raise
            except E.ArbiterError:
                self._gate_exit(raw, gate)
                raise
        lease, exc, stopping = self._session.acquire_answer(p, m, text,
                                                             timeout)
        if lease is not None:
            return lease
        if stopping:
            # The daemon is stopping: this connection is done for.
            self._fail(P.shut_down(self.socket_path), p.conn)
        else:
            self._gate_exit(raw, gate)
        raise exc

    def _withdraw(self, req_id, p):
        """The waiting thread was interrupted: leave nothing behind."""
        with self._lock:
            w = self._session.withdraw(req_id, p)
        if w.request is not None:
            self._send_ignored(w.request, w.conn)
        if w.gate_free:
            self._gate_exit(p.raw, p.gate)

    def _release_lease(self, lease):
        with self._lock:
            if lease.released:
                return
            lease.released = True
            revoked_before = lease.revoked
        try:
            if revoked_before is None and not self._dead():
                self._run(self._session.release(lease))
        finally:
            with self._lock:
                self._session.forget(lease)
            self._gate_exit(lease._raw, lease._gate)
        lease.check()

    def release(self, lease):
        """Same as lease.release()."""
        lease.release()

    def renew(self, lease, ttl=None):
        """Renew a ttl lease now; ``ttl`` (seconds) replaces its ttl. Returns
        the ttl in seconds the daemon set."""
        return self._run(self._session.renew(lease, ttl))

    def lock(self, resource, timeout=-1, **kw):
        """A filelock-compatible ArbiterLock on this client."""
        return ArbiterLock(resource, timeout, client=self, **kw)

    # ------------------------------------------------------------ requests

    def ping(self, payload=b""):
        """Round trip to the daemon: {'role', 'payload', 'seconds'}."""
        return self._run(self._session.ping(payload))

    def stats(self, resource=None):
        """The daemon's figures as a dict shaped like `arbiterctl stats
        --json`: total_acquisitions, failed_acquisitions, average_wait_time,
        max_wait_time (seconds) and the other totals at the top level, and
        ``resources`` keyed by resource name."""
        return self._run(self._session.stats(resource))

    def status(self, resource=None):
        """Who holds and who waits, as a dict shaped like `arbiterctl status
        --json`. The daemon answers in pages of at most 1000 resources;
        this fetches them all (a resource created or ended meanwhile may be
        missing)."""
        return self._run(self._session.status(resource))

    def revoke(self, lease_id=None, pid=None):
        """Admin: end one lease (by id) or every lease of a pid; returns how
        many were ended. Their holders get Revoked (reason ADMIN)."""
        return self._run(self._session.revoke(lease_id, pid))

    def stats_reset(self):
        """Admin: start the figures afresh."""
        self._run(self._session.stats_reset())

    # ------------------------------------------------------------ closing

    def close(self):
        """Close the connection: every lease of this client ends at once
        (no on_revoked calls for them). Idempotent."""
        if self._pid != os.getpid():
            return
        self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._fail(self._lost_why(None))
        with self._lock:        # closed after a loss: say closed from now on
            self._closed = self._lost_why(None)
        self._sock.close()
        with self._renew_cond:
            self._renew_cond.notify_all()
        self._work.put((None, ()))
        _live_clients.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _after_fork_in_child(self):
        # Threads are gone; drop the parent's connection without touching
        # it: point its fd at /dev/null so the daemon sees the parent's
        # close alone, and the number stays valid for the socket object.
        try:
            fd = os.open(os.devnull, os.O_RDWR)
            os.dup2(fd, self._sock.fileno())
            os.close(fd)
        except OSError:
            pass
        # A parent thread may have held any lock at fork time: make new ones.
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._cv = threading.Condition(threading.Lock())
        self._watch_cv = threading.Condition(self._cv._lock)
        self._gate_cond = threading.Condition(threading.Lock())
        self._renew_cond = threading.Condition(threading.Lock())
        self._conn_lock = threading.Lock()
        self._callers = 0
        self._reading = False
        self._closed = P.forked("Client", self._pid, self.socket_path)


# ---------------------------------------------------------------- defaults

_default_lock = threading.Lock()
_default_clients = {}


def default_client(socket_path=None, trust_uids=None):
    """The process-wide Client for a socket (made on first use, made again
    after fork; after a lost connection it connects again by itself).
    ArbiterLock uses it when given no client. ``trust_uids`` as for Client
    (one Client per socket and trust list)."""
    path, _ = P.resolve_socket(socket_path)
    key = (path, _trust_key(trust_uids))
    with _default_lock:
        c = _default_clients.get(key)
        if c is None or not c._may_reconnect():
            # socket_path as given: an unnamed one is checked as the default
            c = _default_clients[key] = Client(socket_path,
                                               trust_uids=trust_uids)
        return c


def _trust_key(trust_uids):
    if trust_uids is None:
        return None
    if isinstance(trust_uids, (str, bytes, int)):
        return repr(trust_uids)
    return tuple(sorted(repr(u) for u in trust_uids))


def _after_fork_in_child():
    global _default_lock
    _default_lock = threading.Lock()
    _default_clients.clear()
    for c in list(_live_clients):
        c._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------- ArbiterLock

class _AcquireReturnProxy:
    """What acquire() returns, so `with lock.acquire(timeout=5):` works."""

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        return self.lock

    def __exit__(self, et, ev, tb):
        _release_on_exit(self.lock, ev)
        return False


class _LocalCtx(P.LockCount, threading.local):
    """One LockCount per thread."""


class ArbiterLock(P.LockBase):
    """A lock with filelock.FileLock's API, backed by an arbiter lease.

    Swap ``FileLock("/data/db.lock")`` for ``ArbiterLock("db")``:
    ``acquire(timeout=None, blocking=True)``, ``release(force=False)``,
    ``is_locked``, ``lock_counter``, ``with lock:`` and ``with
    lock.acquire(timeout=5):`` work the same, and acquiring again what the
    object already holds only counts up (released when the count is back to
    0). ``timeout``: -1 (default) waits forever, 0 tries once, else seconds;
    failures raise Timeout (WouldBlock for a try), a TimeoutError like
    filelock.Timeout.

    ``thread_local=True`` (default, as in filelock): each thread has its own
    count and lease, so threads sharing the object exclude each other.
    ``thread_local=False``: one count per object shared by all threads.

    ``client``: the Client to use; default: one Client per process and
    socket (see default_client()), made again if its connection was lost.
    ``shared``, ``ttl``, ``on_revoked``: as for Client.acquire();
    ``trust_uids``: as for Client (without ``client=``).

    When the daemon ends the lease (ttl expiry, admin revoke, daemon lost),
    ``is_locked`` turns False at once and the next acquire() takes a new
    lease with a count of its own; releases beyond that count (and the
    release that ends a revoked lease's count) raise LeaseRevoked.
    """

    def __init__(self, resource, timeout=-1, *, shared=False, ttl=None,
                 blocking=True, thread_local=True, client=None,
                 socket_path=None, on_revoked=None, trust_uids=None,
                 **_ignored):
        self._setup(resource, timeout, shared, ttl, blocking, on_revoked,
                    socket_path, trust_uids)
        self._client = client
        self._thread_local = thread_local
        self._ctx = _LocalCtx() if thread_local else P.LockCount()
        self._mutex = threading.Lock()       # guards counts (shared ctx)
        self._acq_mutex = threading.Lock()   # one acquirer (shared ctx)
        self._held = weakref.WeakSet()

    @property
    def lock_file(self):
        """filelock compatibility: the resource name."""
        return self.resource

    @property
    def client(self):
        if self._client is not None:
            return self._client
        return default_client(self._socket_path, self._trust_uids)

    def _count(self):
        return self._ctx

    def acquire(self, timeout=None, poll_interval=None, *, blocking=None,
                poll_intervall=None):
        """Acquire (or count up if already held). ``timeout``: None uses
        the object's timeout; negative waits forever; 0 tries once.
        ``blocking=False`` tries once. ``poll_interval`` is accepted for
        filelock compatibility and ignored: nothing polls, the daemon wakes
        the waiter."""
        timeout = self._wait_for(timeout, blocking)
        ctx = self._ctx
        if self._thread_local:
            if not ctx.reenter():
                _end_quietly(ctx.ended())
                ctx.adopt(self._take(timeout))
            return _AcquireReturnProxy(self)
        with self._mutex:
            if ctx.reenter():
                return _AcquireReturnProxy(self)
        t = P.normalize_timeout(timeout)
        start = time.monotonic()
        if not self._acq_mutex.acquire(timeout=-1 if t is None else t):
            raise E.Timeout("gave up waiting for %r after %g s: another "
                            "thread is acquiring this lock object" %
                            (self.resource, t), resource=self.resource)
        try:
            with self._mutex:
                if ctx.reenter():
                    return _AcquireReturnProxy(self)
                ended = ctx.ended()
            _end_quietly(ended)
            if t:       # what is left of it after waiting for the mutex
                timeout = max(t - (time.monotonic() - start), 1e-3)
            lease = self._take(timeout)
            with self._mutex:
                if ctx.lease is not None:
                    self._held.discard(ctx.lease)
                ctx.adopt(lease)
        finally:
            self._acq_mutex.release()
        return _AcquireReturnProxy(self)

    def _take(self, timeout):
        args, kw = self._take_args(timeout)
        lease = self.client.acquire(*args, **kw)
        self._held.add(lease)
        return lease

    def release(self, force=False):
        """Count down; at zero (or with force=True) release the lease.
        Raises LeaseRevoked if the daemon ended the lease meanwhile.
        Releasing an unlocked lock does nothing."""
        with self._mutex:
            lease = self._count_down(force)
        if lease is not None:
            self._held.discard(lease)
            lease.release()

    def _exit(self, ev):
        _release_on_exit(self, ev)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, et, ev, tb):
        self._exit(ev)
        return False

    def __del__(self):
        # Like filelock: a lock dropped while held is released. Done on the
        # client's worker thread, since __del__ may run anywhere.
        for lease in list(getattr(self, "_held", ())):
            if lease.held:
                try:
                    lease._client._post(_quiet_release, lease)
                except Exception:
                    pass


def _end_quietly(lease):
    """Clean up after a lease the daemon ended (lets the next one in)."""
    if lease is not None:
        try:
            lease.release()
        except E.LeaseRevoked:
            pass


def _quiet_release(lease):
    try:
        lease.release()
    except E.ArbiterError:
        pass
