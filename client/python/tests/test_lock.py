"""ArbiterLock: filelock.FileLock's API over a lease."""
import gc
import os
import queue
import threading

import pytest

import arbiter_client as ac

from conftest import WAIT


def holders(client, resource):
    r = client.status(resource)["resources"].get(resource)
    return r["holders"] if r else []


def test_reentrant_counter(clients, res):
    c, spy = clients(), clients()
    lock = c.lock(res)
    assert not lock.is_locked and lock.lock_counter == 0
    with lock:
        assert lock.is_locked and lock.lock_counter == 1
        token = lock.lease.token
        with lock:
            assert lock.lock_counter == 2
            lock.acquire()
            assert lock.lock_counter == 3
            lock.release()
            (h,) = holders(spy, res)         # still one lease
            assert h["token"] == token
        assert lock.is_locked and lock.lock_counter == 1
        assert len(holders(spy, res)) == 1
    assert not lock.is_locked and lock.lease is None
    assert holders(spy, res) == []


def test_acquire_returns_context_proxy(clients, res):
    lock = clients().lock(res)
    with lock.acquire(timeout=5) as got:
        assert got is lock and lock.is_locked
    assert not lock.is_locked


def test_blocking_false_and_timeouts(clients, res):
    a, b = clients(), clients()
    lock_a = a.lock(res)
    lock_b = b.lock(res, timeout=0.2)        # the object's default
    with lock_a:
        with pytest.raises(ac.WouldBlock):
            lock_b.acquire(blocking=False)
        with pytest.raises(ac.WouldBlock):
            lock_b.acquire(timeout=0)
        with pytest.raises(ac.Timeout) as ei:
            lock_b.acquire()                 # uses timeout=0.2
        assert isinstance(ei.value, TimeoutError)
        assert not lock_b.is_locked and lock_b.lock_counter == 0
        nb = b.lock(res, blocking=False)
        with pytest.raises(ac.WouldBlock):
            nb.acquire()
    lock_b.acquire(timeout=-1, poll_interval=0.05)   # filelock signature
    assert lock_b.is_locked
    lock_b.release()


def test_release_force_and_unlocked(clients, res):
    c, spy = clients(), clients()
    lock = c.lock(res)
    lock.release()                           # unlocked: nothing happens
    lock.acquire()
    lock.acquire()
    lock.release(force=True)
    assert lock.lock_counter == 0 and holders(spy, res) == []


def test_threads_sharing_one_lock_object_exclude_each_other(clients, res):
    lock = clients().lock(res)              # thread_local=True (default)
    state = {"n": 0, "inside": 0, "max": 0}

    def work():
        for _ in range(40):
            with lock:
                with lock:                   # re-entrant per thread
                    state["inside"] += 1
                    state["max"] = max(state["max"], state["inside"])
                    n = state["n"]
                    state["n"] = n + 1
                    state["inside"] -= 1
    ts = [threading.Thread(target=work) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT * 3)
    assert state == {"n": 240, "inside": 0, "max": 1}


def test_thread_local_false_shares_the_count(clients, res):
    lock = clients().lock(res, thread_local=False)
    lock.acquire()
    done = queue.Queue()

    def other():
        lock.acquire()                       # counts up: same object
        done.put(lock.lock_counter)
        lock.release()
    t = threading.Thread(target=other)
    t.start()
    assert done.get(timeout=WAIT) == 2
    t.join()
    assert lock.lock_counter == 1
    lock.release()
    assert not lock.is_locked


def test_default_client_and_reconnect(daemon, res, monkeypatch):
    monkeypatch.setenv("ARBITER_SOCKET", daemon.socket)
    lock = ac.ArbiterLock(res, timeout=5)
    with lock:
        first = lock.client
        assert first is ac.default_client()
        assert first.socket_path == daemon.socket
    first.close()                            # e.g. the daemon restarted
    with lock:
        assert lock.client is not first and lock.is_locked
    assert lock.lock_file == res


def test_dropped_lock_is_released(clients, res):
    c, other = clients(), clients()
    lock = c.lock(res)
    lock.acquire()
    del lock
    gc.collect()
    with other.lease(res, timeout=WAIT):     # granted once the worker
        pass                                 # released the dropped lock


def test_on_revoked_and_revoked_release(clients, res):
    got = queue.Queue()
    c, admin = clients(), clients()
    lock = c.lock(res, on_revoked=got.put)
    lock.acquire()
    admin.revoke(lease_id=lock.lease.lease_id)
    assert got.get(timeout=WAIT).reason == "ADMIN"
    with pytest.raises(ac.LeaseRevoked):
        lock.release()
    assert not lock.is_locked


def test_swap_for_filelock_in_one_line(clients, res, tmp_path):
    """Code written for filelock.FileLock runs unchanged."""
    c = clients()

    def app(make_lock):
        lock = make_lock()
        path = tmp_path / "counter.txt"
        for _ in range(5):
            try:
                with lock.acquire(timeout=10):
                    n = int(path.read_text()) if path.exists() else 0
                    path.write_text(str(n + 1))
            except TimeoutError:             # filelock.Timeout's base
                raise AssertionError("timed out")
        return int(path.read_text())

    assert app(lambda: c.lock(res, timeout=10)) == 5
    assert app(lambda: ac.ArbiterLock(res, client=c)) == 10


def test_pid_of_holder_visible(clients, res):
    c, spy = clients(), clients()
    with c.lock(res):
        assert holders(spy, res)[0]["pid"] == os.getpid()
