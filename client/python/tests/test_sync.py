"""The blocking Client against a real arbiterd: every operation, timeouts,
errors, threads, cancellation, ttl renewal, revocation, fork."""
import json
import os
import queue
import signal
import socket
import threading
import time

import pytest

import arbiter_client as ac
from arbiter_client import _proto as P

from conftest import WAIT, until


def holders(client, resource):
    st = client.status(resource)
    r = st["resources"].get(resource)
    return r["holders"] if r else []


def waiters(client, resource):
    st = client.status(resource)
    r = st["resources"].get(resource)
    return r["waiters"] if r else []


# ------------------------------------------------------------ connecting

def test_connect_welcome_and_name(clients, res):
    c = clients(name="my-indexer")
    assert c.role == "active"
    assert c.server_version
    assert c.connection_id > 0
    assert c.max_frame_bytes >= 64
    with c.lease(res):
        (h,) = holders(c, res)
        assert h["client_name"] == "my-indexer"
        assert h["pid"] == os.getpid()
        assert h["connection_id"] == c.connection_id


def test_default_name_is_program_name(clients, res, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/srv/app/worker.py", "--x"])
    c = clients()
    assert c.name == "worker.py"
    with c.lease(res):
        assert holders(c, res)[0]["client_name"] == "worker.py"


def test_long_or_odd_client_name_is_cleaned(clients, res):
    c = clients(name="ä" * 40 + "\n")          # 81 bytes, a control char
    with c.lease(res):
        name = holders(c, res)[0]["client_name"]
    assert name == "ä" * 32                     # 64 bytes, cut on a char


def test_socket_from_environment(daemon, res, monkeypatch):
    monkeypatch.setenv("ARBITER_SOCKET", daemon.socket)
    with ac.Client() as c:
        assert c.socket_path == daemon.socket
        with c.lease(res) as lease:
            assert lease.held


def test_not_running_names_the_path(tmp_path):
    path = str(tmp_path / "nothing.sock")
    with pytest.raises(ac.NotRunning) as ei:
        ac.Client(path)
    assert path in str(ei.value) and "arbiterd running" in str(ei.value)
    assert ei.value.socket_path == path


def test_stale_socket_file_is_not_running(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()                                   # file left, nobody listens
    with pytest.raises(ac.NotRunning, match="nothing listens"):
        ac.Client(path)


def test_not_an_arbiter_is_protocol_error(tmp_path):
    path = str(tmp_path / "fake.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)

    def serve():
        conn, _ = srv.accept()
        conn.recv(100)
        conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n")
        conn.recv(100)
        conn.close()
    t = threading.Thread(target=serve)
    t.start()
    with pytest.raises(ac.ProtocolError, match="really an arbiter"):
        ac.Client(path)
    t.join(WAIT)
    srv.close()


def test_silent_peer_times_out_handshake(tmp_path):
    path = str(tmp_path / "silent.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    with pytest.raises(ac.ProtocolError, match="no answer to Hello"):
        ac.Client(path, connect_timeout=0.3)
    srv.close()


def test_version_mismatch(daemon, monkeypatch):
    monkeypatch.setattr(P, "PROTOCOL_VERSION", 99)
    with pytest.raises(ac.ProtocolError) as ei:
        ac.Client(daemon.socket)
    assert ei.value.code == "VERSION"
    assert "version 99 is not supported" in str(ei.value)


# ------------------------------------------------------------ leases

def test_lease_fields_and_exclusion(clients, res):
    a, b = clients(), clients()
    with a.lease(res) as lease:
        assert isinstance(lease, ac.Lease)
        assert lease.resource == res
        assert lease.mode == ac.EXCLUSIVE
        assert lease.token > 0 and lease.lease_id > 0
        assert lease.ttl is None and lease.held
        with pytest.raises(ac.WouldBlock) as ei:
            b.acquire(res, timeout=0)
        e = ei.value
        assert isinstance(e, ac.Timeout) and isinstance(e, TimeoutError)
        assert isinstance(e, ac.ArbiterError)
        assert e.code == "WOULD_BLOCK" and e.resource == res
        assert "is busy" in e.daemon_message
        assert "pid %d" % os.getpid() in str(e)
        assert a.socket_path in str(e)
        first = lease.token
    assert lease.released and not lease.held
    with b.lease(res, timeout=0) as again:
        assert again.token > first


def test_bytes_and_unicode_names(clients):
    c = clients()
    with c.lease(b"bytes-name") as lease:
        assert lease.resource == "bytes-name"
    name = "Ünïcode-名前-" + "x" * 200
    with c.lease(name) as lease:
        assert lease.resource == name
    longest = "é" * 127 + "x"                   # 255 bytes
    with c.lease(longest):
        pass


@pytest.mark.parametrize("bad", ["", "x" * 256, "a\nb", "tab\there",
                                 "del\x7f", "c1\x85", b"\xff\xfe", "\ud800"])
def test_invalid_names(clients, bad):
    c = clients()
    with pytest.raises(ac.InvalidName) as ei:
        c.acquire(bad)
    assert isinstance(ei.value, ValueError)


def test_daemon_agrees_on_invalid_names(clients):
    # Bypass the client's check: the daemon's INVALID_NAME maps to the
    # same exception.
    c = clients()
    e = P.daemon_error(P.pb.Error(code=P.pb.INVALID_NAME, message="bad"),
                       c.socket_path, resource="x")
    assert isinstance(e, ac.InvalidName)
    p = ac._sync._Pending(acquire=True)
    p.raw = b"a\x01b"
    req = P.acquire_request(next(c._ids), b"a\x01b", False, 0, 0)
    c._enter_call()
    c._submit(req, p)
    m = c._wait(p)
    assert m.error.code == P.pb.INVALID_NAME


def test_shared_leases(clients, res):
    a, b, w = clients(), clients(), clients()
    la = a.acquire(res, shared=True)
    lb = b.acquire(res, shared=True, timeout=0)
    assert la.mode == lb.mode == ac.SHARED
    assert len(holders(w, res)) == 2
    with pytest.raises(ac.WouldBlock):
        w.acquire(res, timeout=0)
    la.release()
    lb.release()
    with w.lease(res, timeout=0) as lw:
        assert lw.mode == ac.EXCLUSIVE


def test_timeout_waits_then_fails(clients, res):
    a, b = clients(), clients()
    with a.lease(res):
        t = time.monotonic()
        with pytest.raises(ac.Timeout) as ei:
            b.acquire(res, timeout=0.3)
        took = time.monotonic() - t
    assert 0.29 <= took < 5
    e = ei.value
    assert not isinstance(e, ac.WouldBlock)
    assert e.code == "TIMEOUT"
    assert "timed out after" in str(e) and "0.3 s" in str(e)
    assert "arbiterctl -S %s status" % a.socket_path in str(e)
    assert waiters(a, res) == []


def test_negative_timeout_waits_forever(clients, res):
    a, b = clients(), clients()
    lease = a.acquire(res)
    got = queue.Queue()
    t = threading.Thread(target=lambda: got.put(b.acquire(res, timeout=-1)))
    t.start()
    until(lambda: waiters(a, res), "b's request to be queued")
    lease.release()
    lb = got.get(timeout=WAIT)
    assert lb.held and lb.waited > 0
    lb.release()
    t.join()


def test_waiter_gets_it_on_release_and_sees_queue(clients, res):
    a, b = clients(name="holder"), clients()
    lease = a.acquire(res)
    infos = queue.Queue()
    got = queue.Queue()

    def wait_for_it():
        got.put(b.acquire(res, timeout=WAIT, on_queued=infos.put))
    t = threading.Thread(target=wait_for_it)
    t.start()
    info = infos.get(timeout=WAIT)
    assert info.resource == res and info.position == 1
    assert info.holder_pid == os.getpid() and info.holder_name == "holder"
    lease.release()
    lb = got.get(timeout=WAIT)
    t.join()
    assert lb.held and lb.token > lease.token
    lb.release()


def test_release_twice_and_client_release(clients, res):
    c = clients()
    lease = c.acquire(res)
    c.release(lease)
    lease.release()                          # no-op
    assert holders(c, res) == []


def test_nested_lease_same_thread_is_already_held(clients, res):
    c = clients()
    with c.lease(res):
        t = time.monotonic()
        with pytest.raises(ac.AlreadyHeld, match="this thread already"):
            c.acquire(res)                   # would wait for itself
        assert time.monotonic() - t < 1


def test_exception_in_block_still_releases(clients, res):
    c = clients()
    with pytest.raises(ZeroDivisionError):
        with c.lease(res):
            1 / 0
    assert holders(c, res) == []


def test_many_leases_one_connection(clients):
    c = clients()
    leases = [c.acquire("multi-%d" % i) for i in range(20)]
    assert len({lease.lease_id for lease in leases}) == 20
    for lease in leases:
        lease.release()


# ------------------------------------------------------------ threads

def test_threads_sharing_a_client_exclude_each_other(clients, res):
    c = clients()
    state = {"n": 0, "inside": 0, "max_inside": 0}

    def work():
        for _ in range(50):
            with c.lease(res, timeout=WAIT):
                state["inside"] += 1
                state["max_inside"] = max(state["max_inside"],
                                          state["inside"])
                n = state["n"]
                time.sleep(0)                # invite a thread switch
                state["n"] = n + 1
                state["inside"] -= 1
    ts = [threading.Thread(target=work) for _ in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT * 3)
    assert state["n"] == 400 and state["max_inside"] == 1


def test_other_thread_holding_is_would_block_and_timeout(clients, res):
    c = clients()
    held = threading.Event()
    done = threading.Event()

    def hold():
        with c.lease(res):
            held.set()
            done.wait(WAIT)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(WAIT)
    with pytest.raises(ac.WouldBlock, match="another thread of this process"):
        c.acquire(res, timeout=0)
    t0 = time.monotonic()
    with pytest.raises(ac.Timeout, match="another thread"):
        c.acquire(res, timeout=0.2)
    assert time.monotonic() - t0 >= 0.19
    done.set()
    t.join()
    with c.lease(res, timeout=0):
        pass


def test_parallel_requests_from_threads(clients, res):
    """Replies reach the right thread when many threads call at once."""
    c = clients()
    errors = []

    def work(i):
        try:
            for _ in range(30):
                assert c.ping(b"p%d" % i)["payload"] == b"p%d" % i
                with c.lease("%s-%d" % (res, i)) as lease:
                    assert lease.resource == "%s-%d" % (res, i)
                c.stats()
        except Exception as exc:            # pragma: no cover
            errors.append(exc)
    ts = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(WAIT * 3)
    assert errors == []


# ------------------------------------------------------------ cancelling

def test_interrupted_acquire_leaves_nothing_queued(clients, res):
    holder, c, spy = clients(), clients(), clients()
    lease = holder.acquire(res)
    queued = threading.Event()

    fired = threading.Event()

    def on_sigint(signum, frame):            # raise once only
        if not fired.is_set():
            fired.set()
            raise KeyboardInterrupt

    def interrupt(_info):                    # runs on the worker thread
        queued.set()
        # A signal landing just before recv() enters the kernel is only
        # seen when recv returns; like a user, press Ctrl-C again.
        while not fired.is_set():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            fired.wait(0.05)
    # Background jobs start with SIGINT ignored: install a handler.
    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        with pytest.raises(KeyboardInterrupt):
            c.acquire(res, on_queued=interrupt)
    finally:
        signal.signal(signal.SIGINT, old)
    assert queued.is_set()
    # The withdrawal (Release{request_id}) is on the wire before we ask.
    c.ping()
    assert waiters(spy, res) == []
    lease.release()
    with spy.lease(res, timeout=0):          # nobody else got it
        pass
    with c.lease(res, timeout=0):            # and c can ask again
        pass


def test_withdrawal_racing_a_grant_releases_it(clients, res):
    """The final answer may already be a grant when the waiter gives up:
    the client releases it by lease id."""
    c, spy = clients(), clients()
    for _ in range(50):
        p = ac._sync._Pending(acquire=True)
        p.raw = res.encode()
        p.gate = c._gate_enter(p.raw, res, None, None)
        req = P.acquire_request(next(c._ids), p.raw, False, None, 0)
        c._enter_call()
        c._submit(req, p)
        c._wait_abort()
        c._withdraw(req.id, p)               # before any answer was read
        c.ping()                             # reads the answers
    assert holders(spy, res) == [] and waiters(spy, res) == []
    assert c._gates == {} and c._leases == {}
    with spy.lease(res, timeout=0):
        pass


# ------------------------------------------------------------ ttl

def test_ttl_lease_is_renewed_automatically(clients, res):
    c, spy = clients(), clients()
    revoked = []
    with c.lease(res, ttl=0.3, on_revoked=revoked.append) as lease:
        assert lease.ttl == 0.3
        assert holders(spy, res)[0]["ttl_ms"] == 300
        done = threading.Event()
        done.wait(1.2)                       # four ttls: renewal must run
        assert lease.held and revoked == []
        assert holders(spy, res)[0]["lease_id"] == lease.lease_id
    assert revoked == []


def test_ttl_expiry_without_renewal_is_revoked(clients, res):
    got = queue.Queue()
    c = clients(on_revoked=got.put)
    with pytest.raises(ac.LeaseRevoked) as ei:
        with c.lease(res, ttl=0.2, auto_renew=False) as lease:
            rev = got.get(timeout=WAIT)      # arrives while we are idle
            assert rev.reason == "EXPIRED" and rev.lease is lease
            assert rev.resource == res
            assert lease.revoked is rev and not lease.held
            with pytest.raises(ac.LeaseRevoked):
                lease.check()
    e = ei.value
    assert e.reason == "EXPIRED" and e.lease is lease
    assert "was not protected" in str(e)


def test_explicit_renew(clients, res):
    c = clients()
    with c.lease(res, ttl=0.5, auto_renew=False) as lease:
        assert lease.renew(2) == 2.0
        assert c.renew(lease) == 2.0
        assert holders(c, res)[0]["ttl_ms"] == 2000
    with c.lease(res) as plain:
        with pytest.raises(ac.ArbiterError, match="cannot be renewed"):
            plain.renew()


def test_ttl_over_daemon_limit(clients, res):
    c = clients()
    with pytest.raises(ac.ArbiterError, match="max_ttl_ms") as ei:
        c.acquire(res, ttl=10 ** 7)
    assert ei.value.code == "BAD_REQUEST"


# ------------------------------------------------------------ admin, stats

def test_admin_revoke_by_lease_and_pid(clients, res):
    got = queue.Queue()
    a = clients(on_revoked=got.put)
    admin = clients()
    lease = a.acquire(res)
    assert admin.revoke(lease_id=lease.lease_id) == 1
    rev = got.get(timeout=WAIT)
    assert rev.reason == "ADMIN" and rev.lease is lease
    with pytest.raises(ac.LeaseRevoked, match="ADMIN"):
        lease.release()
    lease.release()                          # second time: quiet
    l2 = a.acquire(res)
    assert admin.revoke(pid=os.getpid()) >= 1
    assert got.get(timeout=WAIT).lease is l2
    with pytest.raises(ac.ArbiterError) as ei:
        admin.revoke(lease_id=10 ** 9)
    assert ei.value.code == "UNKNOWN_LEASE"
    with pytest.raises(TypeError):
        admin.revoke()


def test_revoked_inside_block_with_exception_adds_note(clients, res):
    a, admin = clients(), clients()
    with pytest.raises(KeyError) as ei:
        with a.lease(res) as lease:
            admin.revoke(lease_id=lease.lease_id)
            a.ping()                         # the Revoked event is read
            raise KeyError("app error")
    assert any("was revoked" in n for n in ei.value.__notes__)


def test_ping(clients):
    c = clients()
    r = c.ping(b"hello")
    assert r["payload"] == b"hello" and r["role"] == "active"
    assert 0 < r["seconds"] < WAIT


def test_stats_dict_matches_arbiterctl(daemon, clients, res):
    a, b = clients(), clients()
    with a.lease(res):
        with pytest.raises(ac.WouldBlock):
            b.acquire(res, timeout=0)
    s = a.stats()
    for k in ("total_acquisitions", "failed_acquisitions",
              "average_wait_time", "max_wait_time"):
        assert k in s
    r = s["resources"][res]
    assert r["total_acquisitions"] == 1 and r["failed_acquisitions"] == 1
    assert r["failed_would_block"] == 1 and r["releases"] == 1
    assert isinstance(r["average_wait_time"], float)
    ctl = json.loads(daemon.ctl("stats", "--json").stdout)
    assert set(ctl) == set(s)
    assert set(ctl["resources"][res]) == set(r)
    assert set(ctl["wait_seconds"]) == set(s["wait_seconds"])
    assert ctl["resources"][res]["total_acquisitions"] == 1
    one = a.stats(res)
    assert list(one["resources"]) == [res]
    assert a.stats("never-used-name")["resources"] == {}


def test_status_dict_matches_arbiterctl(daemon, clients, res):
    a, b = clients(name="holder"), clients(name="waiter")
    lease = a.acquire(res)
    got = queue.Queue()
    t = threading.Thread(target=lambda: got.put(b.acquire(res)))
    t.start()
    until(lambda: waiters(a, res), "b's request to be queued")
    st = a.status(res)
    ctl = json.loads(daemon.ctl("status", "--json", res).stdout)
    assert set(ctl) == set(st)
    r, rc = st["resources"][res], ctl["resources"][res]
    assert set(rc["holders"][0]) <= set(r["holders"][0])
    assert set(rc["waiters"][0]) <= set(r["waiters"][0])
    assert r["holders"][0]["client_name"] == "holder"
    assert r["holders"][0]["token"] == lease.token
    assert r["waiters"][0] == dict(r["waiters"][0], position=1,
                                   client_name="waiter", mode="exclusive")
    assert st["pid"] == daemon.pid and st["role"] == "active"
    assert st["storage"] == daemon.storage
    lease.release()
    got.get(timeout=WAIT).release()
    t.join()


def test_stats_reset(fresh_daemon):
    d = fresh_daemon()
    with ac.Client(d.socket) as c:
        with c.lease("r"):
            pass
        assert c.stats()["total_acquisitions"] == 1
        c.stats_reset()
        s = c.stats()
        assert s["total_acquisitions"] == 0
        assert s["resources"].get("r", {}).get("total_acquisitions", 0) == 0


# ------------------------------------------------------------ endings

def test_close_ends_every_lease(clients, res):
    a, spy = clients(), clients()
    a.acquire(res + "-1")
    a.acquire(res + "-2")
    a.close()
    a.close()                                # idempotent
    assert a.closed
    with spy.lease(res + "-1", timeout=0), spy.lease(res + "-2", timeout=0):
        pass
    with pytest.raises(ac.ConnectionLost, match="closed"):
        a.ping()


def test_daemon_shutdown_revokes_with_reason(fresh_daemon):
    d = fresh_daemon()
    got = queue.Queue()
    c = ac.Client(d.socket, on_revoked=got.put)
    other = ac.Client(d.socket)
    pending = queue.Queue()

    def wait_for_it():
        # It waits for the daemon to come back, within its timeout.
        try:
            other.acquire("db", timeout=2)
        except BaseException as exc:
            pending.put(exc)
    with pytest.raises(ac.LeaseRevoked) as ei:
        with c.lease("db") as lease:
            t = threading.Thread(target=wait_for_it)
            t.start()
            until(lambda: waiters(c, "db"), "the other request to queue")
            os.kill(d.pid, signal.SIGTERM)
            rev = got.get(timeout=WAIT)
            assert rev.reason == "SHUTDOWN" and rev.lease is lease
            assert "shutting down" in rev.message
    assert ei.value.reason == "SHUTDOWN"
    exc = pending.get(timeout=WAIT)
    assert isinstance(exc, ac.Timeout), repr(exc)
    assert "the daemon was not back in time" in str(exc)
    t.join()
    assert d.stop() == 0
    with pytest.raises(ac.NotRunning, match="shut down"):
        c.ping()
    c.close()
    other.close()


def test_daemon_killed_is_connection_lost(fresh_daemon):
    d = fresh_daemon()
    got = queue.Queue()
    c = ac.Client(d.socket, on_revoked=got.put)
    lease = c.acquire("x")
    d.stop(signal.SIGKILL)
    rev = got.get(timeout=WAIT)              # seen while idle
    assert rev.reason == "DISCONNECT" and rev.lease is lease
    assert d.socket in rev.message
    with pytest.raises(ac.LeaseRevoked, match="DISCONNECT"):
        lease.release()
    with pytest.raises(ac.NotRunning, match="lost"):
        c.acquire("y", timeout=0)
    c.close()


def test_fork_child_does_not_keep_parent_leases(clients, res):
    c, spy = clients(), clients()
    lease = c.acquire(res)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    pid = os.fork()
    if pid == 0:                             # child
        code = 1
        try:
            try:
                c.ping()
            except ac.ConnectionLost as exc:
                code = 0 if "does not survive fork" in str(exc) else 2
            os.write(w2, b"%d" % code)
            os.read(r, 1)                    # stay alive until told
        finally:
            os._exit(0)
    os.close(w2)
    assert os.read(r2, 10) == b"0"
    assert lease.held
    c.close()                                # the child is still alive...
    with spy.lease(res, timeout=0):          # ...yet the lease ended
        pass
    os.write(w, b"x")
    os.waitpid(pid, 0)
    for fd in (r, w, r2):
        os.close(fd)


def test_callback_errors_do_not_break_the_client(clients, res, caplog):
    calls = queue.Queue()

    def bad(rev):
        calls.put(rev)
        raise RuntimeError("callback bug")
    a, admin = clients(on_revoked=bad), clients()
    lease = a.acquire(res)
    admin.revoke(lease_id=lease.lease_id)
    calls.get(timeout=WAIT)
    assert a.ping()["role"] == "active"
