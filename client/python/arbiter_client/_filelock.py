"""FileLock and AsyncFileLock: drop-in replacements for filelock's classes.

``from filelock import FileLock`` becomes ``from arbiter_client import
FileLock``; nothing else changes. The path is not opened: it names an
arbiter resource (see resource_name()), so no file is made on disk, a lock
dies with its process, and waiters are woken by the daemon instead of
polling.

What is kept from filelock (3.9, Debian 12's, and the 3.20 API):

- FileLock(lock_file, timeout=-1, mode=0o644, thread_local=True, *,
  blocking=True, is_singleton=False, poll_interval=0.05), positional order
  included; an unknown keyword is a TypeError.
- lock_file, timeout and blocking (settable), poll_interval, mode,
  is_locked, lock_counter, is_thread_local(), is_singleton.
- acquire(timeout=None, poll_interval=None, *, poll_intervall=None,
  blocking=None) returns a proxy for ``with lock.acquire(timeout=5):``;
  release(force=False); ``with lock:``; ``@lock`` on a function; acquires
  nest (counted) and the lock ends when the count is back to 0.
- thread_local=True: each thread has its own count (and its own timeout and
  blocking, as filelock's thread-local context has), so threads sharing the
  object exclude each other; thread_local=False: one count for all threads.
- is_singleton=True: one object per lock (per class, resource and socket);
  asking again with different arguments is a ValueError.
- Failures to acquire in time raise Timeout (FileLockTimeout here): a
  filelock.Timeout when filelock is importable, always an
  arbiter_client.Timeout and a TimeoutError, with ``lock_file`` and
  filelock's message followed by arbiter's explanation.
- Debug lines go to the "filelock" logger, in filelock's words, so logging
  set up for filelock (levels, handlers, silencing) applies unchanged.

Two lock objects on one path in one process. filelock's second object waits
for the first like another process would (a timeout gives Timeout), but a
thread waiting without a timeout for a lock that it holds itself through
another object would wait forever; recent filelock releases raise
RuntimeError then, and so does this module (LockDeadlock, an AlreadyHeld and
a RuntimeError). The sync FileLock shares one connection per process and
socket (default_client()), so it queues in-process first: a table of
"slots", one per socket and resource, lets one lock context (a thread of a
thread-local object, or the object) at a time past it to the daemon; the
others wait in arrival order, within their timeout. The asyncio
AsyncFileLock uses one connection per lock object instead (made on first
use in the running loop), so the daemon queues two objects on one name as it
queues two processes.

Locks dropped while held are released (filelock does it in __del__): the
sync lock hands its leases to a reaper thread, since __del__ may run inside
any other code; the async lock closes its connection, which ends its lease.
After fork the child does not hold the parent's lock: a lease belongs to
the process that took it, and the child's first acquire takes its own.
"""
import asyncio
import collections
import contextlib
import inspect
import logging
import os
import socket
import threading
import time
import warnings
import weakref
from queue import SimpleQueue

from . import _proto as P
from . import errors as E
from ._async import AsyncAcquireReturnProxy, AsyncClient, AsyncLockContext
from ._async import _AcquireCall as _AsyncAcquire
from ._async import _end_quietly as _end_quietly_async
from ._sync import _AcquireReturnProxy, _end_quietly, _release_on_exit
from ._sync import default_client

try:  # catch-compatible with filelock when it is installed
    from filelock import Timeout as _UpstreamTimeout
except Exception:  # not installed (or broken): ours stands alone
    _UpstreamTimeout = None

#: filelock's logger: configuring "filelock" configures these locks too.
_LOGGER = logging.getLogger("filelock")

_TIMEOUT_BASES = ((E.Timeout,) if _UpstreamTimeout is None else
                  (_UpstreamTimeout, E.Timeout))


class FileLockTimeout(*_TIMEOUT_BASES):
    """The lock could not be acquired in time (or at once, for a try).

    A ``filelock.Timeout`` when filelock is importable, and always an
    ``arbiter_client.Timeout`` (so a ``TimeoutError``). ``lock_file`` is the
    path as given; ``str()`` starts with filelock's own sentence and goes
    on with what arbiter saw (who holds it, how long was waited)."""

    def __init__(self, lock_file, detail=None, *, code=None,
                 daemon_message=None, socket_path=None, resource=None):
        self._lock_file = lock_file
        self.detail = detail
        msg = "The file lock '%s' could not be acquired." % (lock_file,)
        if detail:
            msg += " " + detail[:1].upper() + detail[1:]
        E.ArbiterError.__init__(self, msg, code=code,
                                daemon_message=daemon_message,
                                socket_path=socket_path, resource=resource)

    @property
    def lock_file(self):
        """The path of the lock, as given to the lock object."""
        return self._lock_file

    def __str__(self):
        return self.args[0]

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self._lock_file)

    def __reduce__(self):
        return (_rebuild_timeout, (type(self), self._lock_file, self.detail,
                                   self.code, self.daemon_message,
                                   self.socket_path, self.resource))


def _rebuild_timeout(cls, lock_file, detail, code, daemon_message,
                     socket_path, resource):
    return cls(lock_file, detail, code=code, daemon_message=daemon_message,
               socket_path=socket_path, resource=resource)


class LockDeadlock(E.AlreadyHeld, RuntimeError):
    """A wait without timeout for a lock this very thread (task) holds
    through another lock object: it would never end. A RuntimeError, as
    recent filelock releases raise in this case."""


def resource_name(lock_file):
    """The arbiter resource a lock path stands for: the path made absolute,
    with the symlinks of its folder resolved and its last part kept as
    written (as filelock's own identity of a lock file), so ``app.lock``,
    ``./app.lock`` and ``/srv/app/app.lock`` (from /srv/app) are one lock.
    Nothing is created or opened. Names must stay within 255 bytes of
    printable UTF-8 (InvalidName otherwise)."""
    path = os.fsdecode(os.fspath(lock_file))
    if not path:
        raise E.InvalidName("the lock path is empty; give the path of a "
                            "lock file (it names the lock, nothing is "
                            "created)", code="INVALID_NAME", resource=path)
    folder, last = os.path.split(path)
    name = os.path.join(os.path.realpath(folder or os.curdir), last)
    P.check_name(name)
    return name


# ------------------------------------------------------------ construction

class _LockMeta(type):
    """Checks the arguments as the constructor would (so a misspelt keyword
    is a TypeError before anything is looked up) and keeps the singletons:
    one live object per (class, socket, resource) when is_singleton=True."""

    def __init__(cls, name, bases, ns):
        super().__init__(name, bases, ns)
        cls._signature = inspect.signature(cls.__init__)
        cls._instances = weakref.WeakValueDictionary()
        cls._instances_lock = threading.Lock()

    def __call__(cls, *args, **kwargs):
        try:
            bound = cls._signature.bind(None, *args, **kwargs)
        except TypeError as exc:    # as Python says it, naming the class
            raise TypeError("%s() %s" % (cls.__name__, exc)) from None
        bound.apply_defaults()
        given = dict(bound.arguments)
        del given["self"]
        if not given["is_singleton"]:
            return super().__call__(*args, **kwargs)
        key = (_socket_key(given["client"], given["socket_path"]),
               resource_name(given["lock_file"]))
        with cls._instances_lock:
            inst = cls._instances.get(key)
            if inst is None:
                inst = super().__call__(*args, **kwargs)
                cls._instances[key] = inst
                return inst
        differ = ["%s (the existing lock has %r, %r was passed)" %
                  (k, inst._init_args[k], v) for k, v in given.items()
                  if k not in ("lock_file", "is_singleton") and
                  not _same(inst._init_args[k], v)]
        if differ:
            raise ValueError(
                "singleton lock %r already exists with other arguments: %s. "
                "Pass the same arguments, or is_singleton=False for an "
                "object of its own" % (inst.lock_file, "; ".join(differ)))
        return inst


def _same(a, b):
    if callable(a) or callable(b) or hasattr(a, "acquire"):
        return a is b
    return a == b


def _socket_key(client, socket_path):
    if client is not None:
        return client.socket_path
    return P.resolve_socket(socket_path)[0]


class _Ctx(P.LockCount):
    """What filelock keeps in its (thread-local) context: the count and the
    lease behind it, plus the defaults timeout/blocking/poll_interval."""

    def __init__(self, timeout, blocking, poll_interval):
        super().__init__()
        self.timeout = timeout
        self.blocking = blocking
        self.poll_interval = poll_interval
        self.token = object()       # who holds a slot
        self.pid = os.getpid()

    def forget_parent(self):
        """In a forked child: the parent's lease is not ours."""
        P.LockCount.__init__(self)
        self.token = object()
        self.pid = os.getpid()


class _ThreadCtx(_Ctx, threading.local):
    """One _Ctx per thread, each starting from the constructor's values."""


def _wait_for(timeout, blocking):
    """(timeout, blocking) as filelock takes them -> None (forever), 0.0
    (try once) or seconds."""
    if not blocking:
        return 0.0
    if isinstance(timeout, str):
        timeout = float(timeout)
    return P.normalize_timeout(timeout)


def _left(t, start):
    if t is None or t == 0:
        return t
    return max(0.0, t - (time.monotonic() - start))


# ------------------------------------------------------------ in-process slots

class _Slot:
    """The in-process queue of one (socket, resource): its owner (a lock
    context's token) and the thread that took it, and the waiters in
    arrival order. A release hands the slot to the first waiter directly,
    so a newcomer never overtakes a waiter."""

    __slots__ = ("owner", "thread", "name", "queue", "cond")

    def __init__(self, lock):
        self.owner = self.thread = self.name = None
        self.queue = collections.deque()    # (token, ident, name) entries
        self.cond = threading.Condition(lock)

    def hand_on(self):
        """The owner is done: the first waiter owns it now (with
        _slot_lock held). Returns False when nobody waits."""
        if not self.queue:
            self.owner = self.thread = self.name = None
            return False
        self.owner, self.thread, self.name = self.queue.popleft()
        self.cond.notify_all()
        return True


_slot_lock = threading.Lock()
_slots = {}


def _slot_take(lock, token, t):
    """Let lock context `token` past the in-process queue of lock's
    (socket, resource), waiting at most t seconds (None: forever). Returns
    whether it had to wait."""
    key = lock._key
    me = threading.get_ident()
    name = threading.current_thread().name
    deadline = None if not t else time.monotonic() + t
    with _slot_lock:
        s = _slots.get(key)
        if s is None:
            s = _slots[key] = _Slot(_slot_lock)
        if s.owner is None:
            s.owner, s.thread, s.name = token, me, name
            return False
        if t is None and s.thread == me:
            raise lock._deadlock("thread")
        if t == 0:
            raise lock._busy("Another lock object of this process (thread "
                             "%r) holds it; retry later, or pass a timeout."
                             % s.name, t)
        entry = (token, me, name)
        s.queue.append(entry)
        try:
            while s.owner is not token:
                if deadline is None:
                    s.cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise lock._busy(
                        "Waited %g s for another lock object of this "
                        "process (thread %r) to release it." % (t, s.name),
                        t)
                s.cond.wait(left)
            return True
        except BaseException:
            if s.owner is token:        # handed over as we gave up
                if not s.hand_on() and _slots.get(key) is s:
                    del _slots[key]
            else:
                s.queue.remove(entry)
            raise


def _slot_give(key, token):
    with _slot_lock:
        s = _slots.get(key)
        if s is None or s.owner is not token:
            return
        if not s.hand_on():
            del _slots[key]


# A lock dropped while held is released here, not in __del__ (which may run
# inside any code, even with _slot_lock held by the same thread).
_reaper_queue = SimpleQueue()
_reaper_started = None          # pid of the process whose reaper runs
_reaper_start_lock = threading.Lock()


def _reaper_ensure():
    global _reaper_started
    if _reaper_started == os.getpid():
        return
    with _reaper_start_lock:
        if _reaper_started != os.getpid():
            threading.Thread(target=_reaper_loop, args=(_reaper_queue,),
                             daemon=True, name="arbiter-filelock-reaper"
                             ).start()
            _reaper_started = os.getpid()


def _reaper_loop(q):
    while True:
        lease, key, token = q.get()
        try:
            lease.release()
        except Exception:
            pass            # revoked or connection gone: it is over anyway
        _slot_give(key, token)


def _after_fork_in_child():
    global _slot_lock, _slots, _reaper_queue, _reaper_start_lock
    _slot_lock = threading.Lock()
    _slots = {}
    _reaper_queue = SimpleQueue()
    _reaper_start_lock = threading.Lock()
    for cls in (FileLock, AsyncFileLock):   # a thread may have held one
        cls._instances_lock = threading.Lock()
    _async_holders.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------ shared part

class _BaseLock(P.CountView, metaclass=_LockMeta):
    """What FileLock and AsyncFileLock share: arguments and attributes."""

    def __init__(self, lock_file, timeout=-1, mode=0o644, thread_local=True,
                 *, blocking=True, is_singleton=False, poll_interval=0.05,
                 socket_path=None, client=None, trust_uids=None, ttl=None,
                 on_revoked=None):
        raise TypeError("make a FileLock or an AsyncFileLock")

    def _setup(self, args):
        """Common construction from the constructor's arguments (a dict)."""
        del args["self"]
        self._lock_file = os.fspath(args.pop("lock_file"))
        self._is_singleton = bool(args.pop("is_singleton"))
        self._init_args = args              # to compare singletons with
        self.resource = resource_name(self._lock_file)
        self._raw = self.resource.encode("utf-8")
        _wait_for(args["timeout"], True)    # a TypeError now, not later
        self._mode = args["mode"]
        self._thread_local = bool(args["thread_local"])
        self._socket_path = args["socket_path"]
        self._trust_uids = args["trust_uids"]
        self.ttl = args["ttl"]
        self.on_revoked = args["on_revoked"]
        self._key = (_socket_key(args["client"], self._socket_path),
                     self._raw)
        self._ctx = (_ThreadCtx if self._thread_local else _Ctx)(
            args["timeout"], args["blocking"], args["poll_interval"])
        self._mutex = threading.Lock()      # counts (shared context)
        self._holds = {}                    # token -> (lease, pid)

    def _context(self):
        ctx = self._ctx
        if ctx.pid != os.getpid():
            with self._mutex:
                if ctx.pid != os.getpid():
                    self._holds.pop(ctx.token, None)
                    ctx.forget_parent()
        return ctx

    @property
    def lock_file(self):
        """The path as given (``os.fspath`` of it)."""
        return self._lock_file

    @property
    def timeout(self):
        """Default timeout of acquire(), in seconds (negative: forever)."""
        return self._context().timeout

    @timeout.setter
    def timeout(self, value):
        self._context().timeout = float(value)

    @property
    def blocking(self):
        """Default of acquire(blocking=...)."""
        return self._context().blocking

    @blocking.setter
    def blocking(self, value):
        self._context().blocking = value

    @property
    def poll_interval(self):
        """Accepted for compatibility; nothing polls."""
        return self._context().poll_interval

    @poll_interval.setter
    def poll_interval(self, value):
        self._context().poll_interval = value

    @property
    def mode(self):
        """Accepted for compatibility; no file is created."""
        return self._mode

    @property
    def is_singleton(self):
        return self._is_singleton

    def is_thread_local(self):
        return self._thread_local

    def _count(self):
        return self._context()

    def _defaults(self, ctx, timeout, poll_intervall, blocking):
        if poll_intervall is not None:
            warnings.warn("use poll_interval instead of poll_intervall",
                          DeprecationWarning, stacklevel=3)
        if timeout is None:
            timeout = ctx.timeout
        if blocking is None:
            blocking = ctx.blocking
        return _wait_for(timeout, blocking)

    def _on_queued(self):
        """A Queued callback that logs, when debug lines are wanted."""
        if not _LOGGER.isEnabledFor(logging.DEBUG):
            return None
        lid, path = id(self), self._lock_file

        def on_queued(q):
            _LOGGER.debug("Lock %s not acquired on %s, queued at position "
                          "%d behind pid %s (%s)", lid, path, q.position,
                          q.holder_pid, q.holder_name)
        return on_queued

    def _give_up(self, t):
        """Log as filelock does when an acquire gives up."""
        if t == 0:
            _LOGGER.debug("Failed to immediately acquire lock %s on %s",
                          id(self), self._lock_file)
        else:
            _LOGGER.debug("Timeout on acquiring lock %s on %s", id(self),
                          self._lock_file)

    def _timed_out(self, exc, t):
        """The client's Timeout (or WouldBlock) as ours."""
        self._give_up(t)
        return FileLockTimeout(self._lock_file, str(exc), code=exc.code,
                               daemon_message=exc.daemon_message,
                               socket_path=exc.socket_path,
                               resource=self.resource)

    def _busy(self, detail, t):
        """Given up in this process (another object or thread has it)."""
        self._give_up(t)
        return FileLockTimeout(self._lock_file, detail,
                               socket_path=self._key[0],
                               resource=self.resource)

    def _deadlock(self, who):
        return LockDeadlock(
            "Deadlock: lock %r (arbiter resource %r) is already held by "
            "another lock object in this %s, and this acquire has no "
            "timeout, so it would wait for itself forever. Use one object "
            "(is_singleton=True gives one per path), or pass a timeout" %
            (self._lock_file, self.resource, who), code="ALREADY_HELD",
            socket_path=self._key[0], resource=self.resource)

    def __repr__(self):
        return "<%s %r resource=%r %s counter=%d>" % (
            type(self).__name__, self._lock_file, self.resource,
            "locked" if self.is_locked else "unlocked", self.lock_counter)


# ------------------------------------------------------------ FileLock

class FileLock(_BaseLock, contextlib.ContextDecorator):
    """A drop-in for ``filelock.FileLock`` on an arbiter lease.

    ``lock_file``: a path; it names the lock (see resource_name()) and is
    never created. ``timeout``: default for acquire(): negative waits
    forever, 0 tries once, else seconds. ``mode``: kept for compatibility
    (no file, so no permissions). ``thread_local``: see the module text.
    ``blocking=False``: acquire() tries once. ``is_singleton``: one object
    per path. ``poll_interval``: accepted and ignored (nothing polls).

    Beyond filelock, keyword only: ``socket_path`` and ``trust_uids`` (as
    for Client; default $ARBITER_SOCKET, else the default socket),
    ``client`` (a Client to use instead of the process-wide one), ``ttl``
    (seconds; the lease is renewed by the client and ends if the process
    hangs) and ``on_revoked`` (called when the daemon ends the lease).

    Errors: FileLockTimeout (a filelock.Timeout) when not acquired in time;
    LockDeadlock when a wait without timeout would wait for this thread
    itself; NotRunning, ConnectionLost, UntrustedServer... from the client
    when the daemon cannot be reached; LeaseRevoked from release() (or the
    end of a ``with`` block) if the daemon ended the lease meanwhile (then
    ``is_locked`` is already False).
    """

    def __init__(self, lock_file, timeout=-1, mode=0o644, thread_local=True,
                 *, blocking=True, is_singleton=False, poll_interval=0.05,
                 socket_path=None, client=None, trust_uids=None, ttl=None,
                 on_revoked=None):
        self._setup(dict(locals()))
        self._client = client
        self._acq_mutex = threading.Lock()  # one acquirer (shared context)

    @property
    def client(self):
        """The Client used: the one given, else the process-wide one."""
        if self._client is not None:
            return self._client
        return default_client(self._socket_path, self._trust_uids)

    def acquire(self, timeout=None, poll_interval=None, *, poll_intervall=None,
                blocking=None):
        """Acquire, or count up if this context holds it already.

        ``timeout``: None uses the object's; negative waits forever; 0
        tries once. ``blocking=False`` tries once. ``poll_interval`` (and
        the old spelling ``poll_intervall``, with filelock's
        DeprecationWarning) is ignored: the daemon wakes the waiter.
        Returns a proxy for ``with lock.acquire(...):``."""
        ctx = self._context()
        t = self._defaults(ctx, timeout, poll_intervall, blocking)
        if self._thread_local:
            if not ctx.reenter():
                self._first_acquire(ctx, t)
            return _AcquireReturnProxy(self)
        with self._mutex:
            if ctx.reenter():
                return _AcquireReturnProxy(self)
        start = time.monotonic()
        waited = not self._acq_mutex.acquire(False)
        if waited and not self._acq_mutex.acquire(
                timeout=-1 if t is None else t):
            raise self._busy("Another thread is acquiring this lock object; "
                             "waited %g s." % t, t)
        try:
            with self._mutex:
                if ctx.reenter():
                    return _AcquireReturnProxy(self)
            self._first_acquire(ctx, _left(t, start) if waited else t)
        finally:
            self._acq_mutex.release()
        return _AcquireReturnProxy(self)

    def _first_acquire(self, ctx, t):
        lid, path = id(self), self._lock_file
        _LOGGER.debug("Attempting to acquire lock %s on %s", lid, path)
        start = time.monotonic()
        ended = ctx.ended()
        waited = False
        if ended is None:
            waited = _slot_take(self, ctx.token, t)
        else:       # the daemon ended our lease: we still own the slot
            _end_quietly(ended)
        left = _left(t, start) if waited else t
        try:
            lease = self.client.acquire(
                self._raw, False, left, self.ttl, on_revoked=self.on_revoked,
                on_queued=self._on_queued())
        except E.Timeout as exc:
            if ended is None:
                _slot_give(self._key, ctx.token)
            raise self._timed_out(exc, t) from None
        except BaseException:
            if ended is None:
                _slot_give(self._key, ctx.token)
            raise
        _reaper_ensure()
        with self._mutex:
            ctx.adopt(lease)
            self._holds[ctx.token] = (lease, ctx.pid)
        _LOGGER.debug("Lock %s acquired on %s", lid, path)

    def release(self, force=False):
        """Count down; at 0 (at once with ``force=True``) end the lease.
        Releasing a lock that is not held does nothing. Raises
        LeaseRevoked if the daemon ended the lease while it was counted."""
        ctx = self._context()
        with self._mutex:
            lease, ended = ctx.count_down(force)
            if lease is not None:
                self._holds.pop(ctx.token, None)
        if ended is not None:
            ended.check()
        if lease is None:
            return
        lid, path = id(self), self._lock_file
        _LOGGER.debug("Attempting to release lock %s on %s", lid, path)
        try:
            lease.release()
        finally:
            _slot_give(self._key, ctx.token)
        _LOGGER.debug("Lock %s released on %s", lid, path)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, et, ev, tb):
        _release_on_exit(self, ev)
        return False

    def __del__(self):
        holds = getattr(self, "_holds", None)
        if not holds:
            return
        try:
            pid = os.getpid()
            for token, (lease, owner_pid) in list(holds.items()):
                if owner_pid == pid:
                    _reaper_queue.put((lease, self._key, token))
        except Exception:   # interpreter shutdown: the connection ends too
            pass


# ------------------------------------------------------------ AsyncFileLock

_async_holders = {}     # (socket, resource) -> (weakref to task, lock id)

_AsyncDecorator = getattr(contextlib, "AsyncContextDecorator", object)


class AsyncFileLock(_BaseLock, AsyncLockContext, _AsyncDecorator):
    """A drop-in for filelock's ``AsyncFileLock`` on an arbiter lease:
    ``async with lock:``, ``await lock.acquire(timeout=..., blocking=...)``,
    ``await lock.release(force=False)``, ``@lock`` on a coroutine function;
    attributes, arguments and errors as FileLock's (``client`` is an
    AsyncClient here).

    As filelock's, thread_local defaults to False: the count belongs to the
    object, so every task sharing the object shares the lock (a task
    acquiring it while another task holds it only counts up). Tasks that
    must exclude each other use lock objects of their own.

    Each object has its own connection to the daemon (made on first use, in
    the running loop; made again after the daemon closed it, after fork, or
    in another event loop), so two objects on one path queue at the daemon
    like two processes. ``loop``, ``run_in_executor`` and ``executor`` are
    accepted for compatibility and ignored: nothing blocks the loop.
    """

    def __init__(self, lock_file, timeout=-1, mode=0o644, thread_local=False,
                 *, blocking=True, is_singleton=False, poll_interval=0.05,
                 loop=None, run_in_executor=True, executor=None,
                 socket_path=None, client=None, trust_uids=None, ttl=None,
                 on_revoked=None):
        self._setup(dict(locals()))
        self._given_client = client
        self._own_client = None
        self._amutex = None         # (loop, asyncio.Lock): one acquirer

    @property
    def loop(self):
        """Accepted for compatibility: the running loop is used."""
        return self._init_args["loop"]

    @property
    def run_in_executor(self):
        """Accepted for compatibility: nothing runs in an executor."""
        return self._init_args["run_in_executor"]

    @property
    def executor(self):
        return self._init_args["executor"]

    @property
    def client(self):
        """The AsyncClient used: the one given, else this object's own
        (made again when closed, after fork, or in another event loop)."""
        if self._given_client is not None:
            return self._given_client
        c = self._own_client
        loop = asyncio.get_running_loop()
        if c is not None and (c.closed or _pid_of(c) != os.getpid() or
                              getattr(c, "_loop", None) not in (None, loop)):
            _shut_quietly(c)
            c = None
        if c is None:
            c = self._own_client = AsyncClient(self._socket_path,
                                               trust_uids=self._trust_uids)
        return c

    def acquire(self, timeout=None, poll_interval=None, *, poll_intervall=None,
                blocking=None):
        """``await lock.acquire(...)`` (arguments as FileLock.acquire())
        gives a proxy for ``async with``; ``async with lock.acquire(...):``
        works directly too."""
        ctx = self._context()
        return _AsyncAcquire(self, (self._defaults(
            ctx, timeout, poll_intervall, blocking),))

    async def _acquire(self, t):
        ctx = self._context()
        if ctx.reenter():
            return AsyncAcquireReturnProxy(self)
        start = time.monotonic()
        mutex = self._acquirer_mutex()
        waited = mutex.locked()
        if waited and t == 0:
            raise self._busy("Another task is acquiring this lock object.",
                             t)
        try:
            await asyncio.wait_for(mutex.acquire(), t or None)
        except asyncio.TimeoutError:
            raise self._busy("Another task is acquiring this lock object; "
                             "waited %g s." % t, t) from None
        try:
            if ctx.reenter():
                return AsyncAcquireReturnProxy(self)
            await self._first_acquire(ctx, _left(t, start) if waited else t)
        finally:
            mutex.release()
        return AsyncAcquireReturnProxy(self)

    def _acquirer_mutex(self):
        loop = asyncio.get_running_loop()
        if self._amutex is None or self._amutex[0] is not loop:
            self._amutex = (loop, asyncio.Lock())
        return self._amutex[1]

    async def _first_acquire(self, ctx, t):
        lid, path = id(self), self._lock_file
        _LOGGER.debug("Attempting to acquire lock %s on %s", lid, path)
        task = asyncio.current_task()
        ended = ctx.ended()
        if ended is not None:
            await _end_quietly_async(ended)
        elif t is None:
            held = _async_holders.get(self._key)
            if held is not None and held[1] != lid and \
                    held[0]() is task is not None:
                raise self._deadlock("task")
        try:
            lease = await self.client.acquire(
                self._raw, False, t, self.ttl, on_revoked=self.on_revoked,
                on_queued=self._on_queued())
        except E.Timeout as exc:
            raise self._timed_out(exc, t) from None
        ctx.adopt(lease)
        if task is not None:
            _async_holders[self._key] = (weakref.ref(task), lid)
        _LOGGER.debug("Lock %s acquired on %s", lid, path)

    async def release(self, force=False):
        """As FileLock.release(), awaited."""
        lease = self._count_down(force)
        if lease is None:
            return
        lid, path = id(self), self._lock_file
        _LOGGER.debug("Attempting to release lock %s on %s", lid, path)
        held = _async_holders.get(self._key)
        if held is not None and held[1] == lid:
            del _async_holders[self._key]
        await lease.release()
        _LOGGER.debug("Lock %s released on %s", lid, path)

    def __enter__(self):
        raise NotImplementedError("Do not use `with` for asyncio locks, use "
                                  "`async with` instead.")

    def __exit__(self, et, ev, tb):
        raise NotImplementedError("Do not use `with` for asyncio locks, use "
                                  "`async with` instead.")

    def __del__(self):
        # A dropped lock ends its lease: closing its own connection does.
        c = getattr(self, "_own_client", None)
        if c is not None:
            _shut_quietly(c)


def _pid_of(client):
    """The process an AsyncClient was made in."""
    return getattr(client, "_pid", os.getpid())


def _shut_quietly(client):
    """Shut an AsyncClient's socket down from anywhere (__del__, another
    loop, a closed loop): the daemon sees the connection end and ends its
    leases; its own loop, if it still runs, sees EOF and cleans up."""
    try:
        tr = getattr(client, "_transport", None)
        if tr is not None and _pid_of(client) == os.getpid():
            tr.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    except Exception:   # already closed, or interpreter shutdown
        pass


__all__ = ["FileLock", "AsyncFileLock", "FileLockTimeout", "LockDeadlock",
           "AsyncAcquireReturnProxy", "resource_name"]
