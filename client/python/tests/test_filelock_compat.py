"""arbiter_client.FileLock and AsyncFileLock as drop-ins for filelock.

Written from filelock's documented API (its README and API reference:
constructor, attributes, acquire/release, context manager, decorator,
re-entrancy, thread-local contexts, singletons, Timeout), not from its
test suite. Where Debian's python3-filelock is installed, the tests marked
with the ``impl`` fixture run the very same body against filelock.FileLock
on a real file too, to show the behaviours match; the rest check arbiter's
own side (no file, the daemon's view, revocation, asyncio).

Every lock here finds the daemon through $ARBITER_SOCKET, as an application
switched with one line would.
"""
import asyncio
import gc
import logging
import os
import subprocess
import sys
import threading
import time
import warnings

import pytest

import arbiter_client as A
from arbiter_client import AsyncFileLock, FileLock
from conftest import client_env, until

try:
    import filelock
except ImportError:
    filelock = None

needs_filelock = pytest.mark.skipif(
    filelock is None, reason="python3-filelock is not installed (Debian: "
    "apt-get install python3-filelock)")


@pytest.fixture
def env(daemon, monkeypatch):
    """The module's daemon, reached as a switched app reaches it."""
    monkeypatch.setenv("ARBITER_SOCKET", daemon.socket)
    return daemon


@pytest.fixture
def path(tmp_path, env):
    return str(tmp_path / "app.lock")


@pytest.fixture(params=["arbiter", "filelock"])
def impl(request, env):
    """The FileLock class under test: ours, or filelock's for comparison."""
    if request.param == "filelock":
        if filelock is None:
            pytest.skip("python3-filelock is not installed")
        return filelock.FileLock
    return FileLock


def count(lock):
    """lock_counter (filelock 3.9 has it only as _lock_counter)."""
    if hasattr(lock, "lock_counter"):
        return lock.lock_counter
    return lock._lock_counter


def holder_of(daemon, name):
    """pid of the holder of a resource, as the daemon sees it."""
    res = A.Client(daemon.socket).status(name)["resources"]
    r = res.get(name)
    return r["holders"][0]["pid"] if r and r["holders"] else None


def run_in_thread(fn):
    """fn() in another thread; returns what it returned or raised."""
    out = {}

    def body():
        try:
            out["value"] = fn()
        except BaseException as exc:
            out["error"] = exc
    t = threading.Thread(target=body)
    t.start()
    t.join(20)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out.get("value")


# ------------------------------------------------------------ same as filelock

def test_with_statement_and_counter(impl, path):
    lock = impl(path)
    assert not lock.is_locked and count(lock) == 0
    with lock as got:
        assert got is lock
        assert lock.is_locked and count(lock) == 1
        with lock:                          # re-entrant: counts
            assert count(lock) == 2
        assert lock.is_locked and count(lock) == 1
    assert not lock.is_locked and count(lock) == 0


def test_acquire_returns_proxy_for_with(impl, path):
    lock = impl(path, timeout=5)
    with lock.acquire(timeout=1) as got:
        assert got is lock and lock.is_locked and count(lock) == 1
    assert not lock.is_locked and count(lock) == 0
    lock.acquire()
    try:
        assert lock.is_locked
    finally:
        lock.release()
    assert not lock.is_locked


def test_release_force_and_release_unheld(impl, path):
    lock = impl(path)
    lock.release()                          # not held: nothing happens
    for _ in range(3):
        lock.acquire()
    assert count(lock) == 3
    lock.release()
    assert count(lock) == 2 and lock.is_locked
    lock.release(force=True)
    assert count(lock) == 0 and not lock.is_locked
    other = impl(path)
    other.acquire(timeout=0)                # really free
    other.release()


def test_decorator(impl, path):
    lock = impl(path)

    @lock
    def work(x):
        assert lock.is_locked and count(lock) == 1
        return x * 2

    assert work(21) == 42
    assert not lock.is_locked


def test_timeout_is_settable_and_used(impl, path):
    lock = impl(path)
    assert lock.timeout == -1
    lock.timeout = "0.5"                    # filelock converts with float()
    assert lock.timeout == 0.5
    lock.timeout = 0
    assert lock.timeout == 0.0


def test_two_objects_one_thread_timeout(impl, path):
    """filelock: a second object on the path waits like another process
    would, and gives Timeout when its timeout runs out."""
    first, second = impl(path), impl(path)
    with first:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as e:
            second.acquire(timeout=0.1)
        assert time.monotonic() - t0 >= 0.1
        assert not isinstance(e.value, A.AlreadyHeld)
        with pytest.raises(TimeoutError):
            second.acquire(blocking=False)
        assert not second.is_locked and count(second) == 0
    with second.acquire(timeout=1):         # free again
        assert second.is_locked


def test_blocking_false_in_constructor(path):
    holder = FileLock(path)
    with holder:
        lock = FileLock(path, blocking=False)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            lock.acquire(timeout=5)         # blocking=False wins
        assert time.monotonic() - t0 < 2
        lock.blocking = True
        with pytest.raises(TimeoutError):
            lock.acquire(timeout=0.05)


@needs_filelock
def test_except_filelock_timeout_catches_ours(path):
    first, second = FileLock(path), FileLock(path)
    with first:
        try:
            second.acquire(timeout=0.05)
        except filelock.Timeout as exc:
            caught = exc
        else:
            pytest.fail("no Timeout")
    assert isinstance(caught, A.Timeout) and isinstance(caught, TimeoutError)
    assert caught.lock_file == path
    # filelock's own sentence, then what arbiter saw
    assert str(caught).startswith(str(filelock.Timeout(path)))
    assert str(caught) != str(filelock.Timeout(path))


def test_timeout_class_without_filelock(path):
    """Whether or not filelock is importable, ours is an
    arbiter_client.Timeout with lock_file and filelock's wording."""
    first, second = FileLock(path), FileLock(path)
    with first:
        with pytest.raises(A.Timeout) as e:
            second.acquire(blocking=False)
    assert e.value.lock_file == path
    assert str(e.value).startswith(
        "The file lock '%s' could not be acquired." % path)
    assert e.value.resource == second.resource


def test_timeout_class_when_filelock_cannot_be_imported():
    code = (
        "import sys; sys.modules['filelock'] = None\n"
        "import arbiter_client as A\n"
        "T = A.FileLockTimeout\n"
        "assert T.__mro__[1] is A.Timeout, T.__mro__\n"
        "e = T('/p.lock', 'held')\n"
        "assert e.lock_file == '/p.lock' and isinstance(e, TimeoutError)\n"
        "assert str(e) == \"The file lock '/p.lock' could not be acquired. "
        "Held\", str(e)\n")
    subprocess.run([sys.executable, "-c", code], env=client_env(),
                   check=True, timeout=60)


# ------------------------------------------------------------ constructor

def test_positional_arguments_in_filelock_order(path):
    lock = FileLock(path, 5, 0o600, False)
    assert lock.timeout == 5 and lock.mode == 0o600
    assert lock.is_thread_local() is False and lock.blocking is True
    assert FileLock(path).is_thread_local() is True
    assert FileLock(path).mode == 0o644


def test_keyword_arguments_of_filelock(path):
    lock = FileLock(lock_file=path, timeout=2, mode=0o640,
                    thread_local=True, blocking=False, is_singleton=False,
                    poll_interval=0.2)
    assert (lock.lock_file, lock.timeout, lock.mode, lock.blocking,
            lock.is_singleton, lock.poll_interval) == \
        (path, 2, 0o640, False, False, 0.2)


@pytest.mark.parametrize("cls", [FileLock, AsyncFileLock])
def test_unknown_keyword_is_a_type_error(cls, path):
    with pytest.raises(TypeError, match="timout"):
        cls(path, timout=3)
    with pytest.raises(TypeError, match="is_singelton"):
        cls(path, is_singelton=True)
    with pytest.raises(TypeError):
        cls(path, 1, 0o644, True, "too many")
    with pytest.raises(TypeError):
        FileLock(path).acquire(timeout=1, poll=2)


def test_poll_interval_accepted_and_ignored(path):
    lock = FileLock(path)
    with lock.acquire(timeout=1, poll_interval=10):  # no 10 s sleep
        pass
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with lock.acquire(poll_intervall=0.5):
            pass
    assert any(issubclass(x.category, DeprecationWarning) for x in w)


def test_path_like_and_bytes_paths(tmp_path, env):
    p = tmp_path / "b.lock"
    assert FileLock(p).lock_file == str(p)
    assert FileLock(os.fsencode(str(p))).resource == str(p)


# ------------------------------------------------------------ no file: a name

def test_path_is_the_resource_name_and_no_file_is_made(tmp_path, env,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    lock = FileLock("app.lock")
    assert lock.lock_file == "app.lock"
    assert lock.resource == os.path.join(os.path.realpath(str(tmp_path)),
                                         "app.lock")
    with lock:
        assert holder_of(env, lock.resource) == os.getpid()
        assert not os.path.exists("app.lock")
    assert not os.listdir(str(tmp_path))
    # ./app.lock and the absolute path are the same lock
    with FileLock("./app.lock"):
        with pytest.raises(A.Timeout):
            FileLock(str(tmp_path / "app.lock")).acquire(blocking=False)


def test_other_process_holds_it(path, clients, env):
    """Another process (here another connection) holding the name makes
    FileLock wait, and its release wakes it: no polling."""
    lock = FileLock(path)
    other = clients(socket_path=env.socket).acquire(lock.resource)
    with pytest.raises(A.Timeout) as e:
        lock.acquire(timeout=0.2)
    assert "pid %d" % os.getpid() in str(e.value)   # who holds it
    result = {}

    def waiter():
        with lock.acquire(timeout=20):
            result["locked"] = lock.is_locked
    t = threading.Thread(target=waiter)
    t.start()
    watch = clients(socket_path=env.socket)
    until(lambda: watch.status(lock.resource)["resources"][lock.resource]
          ["waiters"], "the FileLock to queue at the daemon")
    other.release()
    t.join(20)
    assert result == {"locked": True}


WORKER = """
import sys
from arbiter_client import FileLock    # the one line changed from filelock

lock_path, counter, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = FileLock(lock_path, timeout=60)
for _ in range(rounds):
    with lock:                         # read, then write: loses updates
        with open(counter) as f:       # unless the lock excludes
            n = int(f.read())
        with open(counter, "w") as f:
            f.write(str(n + 1))
"""


def test_processes_lose_no_update(tmp_path, env):
    counter = tmp_path / "counter"
    counter.write_text("0")
    e = client_env()
    e["ARBITER_SOCKET"] = env.socket
    procs = [subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path / "count.lock"),
         str(counter), "25"], env=e) for _ in range(4)]
    for p in procs:
        assert p.wait(60) == 0
    assert counter.read_text() == "100"
    assert not (tmp_path / "count.lock").exists()


def test_name_too_long_is_invalid(tmp_path, env):
    with pytest.raises(ValueError):
        FileLock(str(tmp_path / ("x" * 300)))


# ------------------------------------------------------------ threads

def test_thread_local_each_thread_its_own_count(path):
    lock = FileLock(path)                   # thread_local=True
    with lock:
        with lock:
            assert lock.lock_counter == 2

            def other():
                seen = (lock.is_locked, lock.lock_counter)
                t0 = time.monotonic()
                try:
                    lock.acquire(timeout=0.1)
                except A.Timeout:
                    return seen, time.monotonic() - t0
                return "acquired", 0
            seen, waited = run_in_thread(other)
            assert seen == (False, 0) and waited >= 0.1
    got = run_in_thread(lambda: (lock.acquire(timeout=5),
                                 lock.is_locked, lock.release())[1])
    assert got is True


def test_thread_local_waiter_gets_it_when_released(path):
    lock = FileLock(path)
    lock.acquire()
    result = {}
    waiting = threading.Event()

    def other():
        waiting.set()
        with lock.acquire(timeout=10):
            result["locked"] = lock.is_locked
    t = threading.Thread(target=other)
    t.start()
    waiting.wait(10)
    lock.release()
    t.join(20)
    assert result == {"locked": True}


def test_threads_waiting_in_process_go_in_arrival_order(path):
    from arbiter_client import _filelock
    lock = FileLock(path)
    order = []
    lock.acquire()
    threads = []
    for i in range(3):
        def waiter(i=i):
            with lock.acquire(timeout=20):
                order.append(i)
        t = threading.Thread(target=waiter)
        t.start()
        threads.append(t)
        until(lambda: len(_filelock._slots[lock._key].queue) == i + 1,
              "waiter %d to queue in this process" % i)
    lock.release()
    for t in threads:
        t.join(20)
    assert order == [0, 1, 2]


def test_threads_and_objects_exclude_each_other(path):
    """8 threads, half sharing one object, half with objects of their own:
    never two inside at once, and every round done."""
    shared = FileLock(path)
    inside, done, bad = [], [], []

    def worker(i):
        lock = shared if i % 2 else FileLock(path)
        for _ in range(25):
            with lock.acquire(timeout=20):
                inside.append(i)
                if len(inside) != 1:
                    bad.append(list(inside))
                inside.remove(i)
            done.append(i)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert bad == [] and len(done) == 8 * 25


def test_thread_local_timeout_is_per_thread(path):
    """filelock's thread-local context holds the defaults too."""
    lock = FileLock(path, timeout=3)
    lock.timeout = 7
    assert run_in_thread(lambda: lock.timeout) == 3
    assert lock.timeout == 7


def test_not_thread_local_shares_the_lock(path):
    lock = FileLock(path, thread_local=False)
    with lock:
        def other():
            seen = (lock.is_locked, lock.lock_counter)
            with lock.acquire(timeout=0):   # counts up: it is held
                return seen, lock.lock_counter
        assert run_in_thread(other) == ((True, 1), 2)
        assert lock.lock_counter == 1


def test_two_objects_one_thread_forever_is_a_deadlock_error(path):
    first, second = FileLock(path), FileLock(path)
    with first:
        with pytest.raises(RuntimeError) as e:
            second.acquire()                # timeout -1: would never end
        assert isinstance(e.value, A.AlreadyHeld)
        assert "Deadlock" in str(e.value) and path in str(e.value)
    with second:
        pass


# ------------------------------------------------------------ singletons

def test_singleton_one_object_per_path(path, tmp_path, monkeypatch):
    a = FileLock(path, is_singleton=True)
    assert FileLock(path, is_singleton=True) is a
    assert a.is_singleton
    monkeypatch.chdir(tmp_path)
    assert FileLock("app.lock", is_singleton=True) is a
    assert FileLock(path) is not a
    with a:
        b = FileLock(path, is_singleton=True)
        with b:                             # the same object: re-entrant
            assert b.lock_counter == 2
    with pytest.raises(ValueError, match="timeout"):
        FileLock(path, timeout=4, is_singleton=True)
    assert AsyncFileLock(path, is_singleton=True) is not a


# ------------------------------------------------------------ arbiter's side

def test_is_locked_false_after_revocation(path, env):
    lock = FileLock(path)
    lock.acquire()
    env.ctl("revoke", "--lease", str(lock.lease.lease_id))
    deadline = time.monotonic() + 20
    while lock.is_locked:                   # the Revoked event arrives
        A.Client(env.socket).ping()
        assert time.monotonic() < deadline
    with pytest.raises(A.LeaseRevoked):
        lock.release()
    with lock.acquire(timeout=5):
        assert lock.is_locked


def test_dropped_while_held_is_released(path):
    lock = FileLock(path)
    lock.acquire()
    del lock
    gc.collect()
    with FileLock(path).acquire(timeout=10):
        pass


def test_child_after_fork_does_not_hold_the_parents_lock(path):
    lock = FileLock(path)
    with lock:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(r)
                out = [lock.is_locked, lock.lock_counter]
                try:
                    lock.acquire(blocking=False)
                    out.append("acquired")
                except A.Timeout:
                    out.append("timeout")
                os.write(w, repr(out).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            out = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert out == "[False, 0, 'timeout']"
        assert lock.is_locked


def test_debug_lines_on_the_filelock_logger(path, caplog):
    caplog.set_level(logging.DEBUG, logger="filelock")
    lock = FileLock(path)
    with lock:
        pass
    with FileLock(path):
        with pytest.raises(A.Timeout):
            lock.acquire(blocking=False)
    msgs = [r.getMessage() for r in caplog.records if r.name == "filelock"]
    lid = id(lock)
    for want in ("Attempting to acquire lock %s on %s",
                 "Lock %s acquired on %s",
                 "Attempting to release lock %s on %s",
                 "Lock %s released on %s",
                 "Failed to immediately acquire lock %s on %s"):
        assert want % (lid, path) in msgs


# ------------------------------------------------------------ asyncio

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_with_and_reentrancy(path, env):
    async def main():
        lock = AsyncFileLock(path)
        assert not lock.is_locked and lock.is_thread_local() is False
        async with lock:
            assert lock.is_locked and lock.lock_counter == 1
            proxy = await lock.acquire()
            async with proxy as got:
                assert got is lock and lock.lock_counter == 2
            assert holder_of(env, lock.resource) == os.getpid()
        assert not lock.is_locked and lock.lock_counter == 0
        async with lock.acquire(timeout=1):
            assert lock.is_locked
        await lock.acquire()
        await lock.release()
        assert not lock.is_locked
    run(main())


def test_async_two_objects_one_task(path):
    async def main():
        first, second = AsyncFileLock(path), AsyncFileLock(path)
        async with first:
            t0 = time.monotonic()
            with pytest.raises(A.Timeout) as e:
                await second.acquire(timeout=0.1)
            assert time.monotonic() - t0 >= 0.1
            if filelock is not None:
                assert isinstance(e.value, filelock.Timeout)
            with pytest.raises(A.Timeout):
                await second.acquire(blocking=False)
            with pytest.raises(RuntimeError, match="Deadlock"):
                await second.acquire()
        async with second:
            assert second.is_locked
    run(main())


def test_async_other_task_waits_for_other_object(path):
    async def main():
        first, second = AsyncFileLock(path), AsyncFileLock(path)
        await first.acquire()
        order = []

        async def other():
            async with second:
                order.append("second")
        t = asyncio.ensure_future(other())
        await asyncio.sleep(0)              # let it queue at the daemon
        order.append("first")
        await first.release()
        await t
        assert order == ["first", "second"]
    run(main())


def test_async_decorator_and_no_plain_with(path):
    async def main():
        lock = AsyncFileLock(path)

        @lock
        async def work():
            assert lock.is_locked
            return 7
        assert await work() == 7
        assert not lock.is_locked
        with pytest.raises(NotImplementedError):
            with lock:
                pass
    run(main())


def test_async_shared_object_counts_across_tasks(path):
    """filelock's AsyncFileLock (thread_local=False) belongs to the object:
    a second task using the same object counts up instead of waiting."""
    async def main():
        lock = AsyncFileLock(path)
        async with lock:
            async def other():
                async with lock.acquire(timeout=0):
                    return lock.lock_counter
            assert await asyncio.ensure_future(other()) == 2
    run(main())


def test_async_positional_and_compat_keywords(path):
    lock = AsyncFileLock(path, 3, 0o600, False, loop=None,
                         run_in_executor=False, executor=None)
    assert (lock.timeout, lock.mode, lock.is_thread_local(),
            lock.run_in_executor) == (3, 0o600, False, False)


def test_async_lock_usable_in_a_second_event_loop(path):
    lock = AsyncFileLock(path)

    async def once():
        async with lock:
            return lock.is_locked
    assert run(once()) is True
    assert run(once()) is True              # a new loop: a new connection


def test_async_is_locked_false_after_revocation(path, env):
    async def main():
        lock = AsyncFileLock(path)
        await lock.acquire()
        env.ctl("revoke", "--lease", str(lock.lease.lease_id))
        deadline = time.monotonic() + 20
        while lock.is_locked:               # the Revoked event arrives
            await lock.client.ping()
            assert time.monotonic() < deadline
        with pytest.raises(A.LeaseRevoked):
            await lock.release()
        async with lock.acquire(timeout=5):
            assert lock.is_locked
    run(main())


def test_async_cancelled_wait_leaves_the_object_usable(path):
    async def main():
        first, second = AsyncFileLock(path), AsyncFileLock(path)
        await first.acquire()
        waiter = asyncio.ensure_future(second.acquire())
        while not await _waiters(first, second):    # queued at the daemon
            pass
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert not second.is_locked and second.lock_counter == 0
        await first.release()
        async with second.acquire(timeout=5):
            assert second.is_locked
    run(main())


async def _waiters(lock, other):
    st = await lock.client.status(other.resource)
    return st["resources"][other.resource]["waiters"]
