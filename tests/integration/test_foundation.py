"""The foundation: leases over the real daemon with real client processes."""
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

import harness
from harness import WAIT, Wire, WireError, error_of, pb


# ------------------------------------------------------------ queues

def test_exclusive_waiters_are_granted_in_fifo_order(daemon):
    a, b, c = (Wire(daemon.socket, n) for n in ("a", "b", "c"))
    la = a.lock("db")
    ib = b.acquire("db")
    qb = b.wait_kind("queued", ib).queued
    assert qb.position == 1 and qb.holder_pid == os.getpid()
    assert qb.holder_name == "a"
    ic = c.acquire("db")
    assert c.wait_kind("queued", ic).queued.position == 2
    a.release(la.lease_id)
    lb = b.granted(ib)
    assert lb.token > la.token
    b.release(lb.lease_id)
    lc = c.granted(ic)
    assert lc.token > lb.token


def test_a_quiet_acquire_waits_without_queued_frames(daemon):
    """quiet: the client wants the answer only, so the daemon sends no
    Queued; position_updates still wins over quiet."""
    a, b, c = (Wire(daemon.socket, n) for n in ("a", "b", "c"))
    la = a.lock("db")
    ib = b.acquire("db", quiet=True)
    ic = c.acquire("db", quiet=True, position_updates=True)
    assert c.wait_kind("queued", ic).queued.position == 2
    b.call(ping=pb.Ping())  # answered in order: the acquire is queued
    assert status_waiters(a, "db") == 2
    a.release(la.lease_id)
    lb = b.granted(ib)
    assert lb.token > la.token
    assert c.wait_kind("queued", ic).queued.position == 1
    assert not [m for m in b.pending if m.WhichOneof("kind") == "queued"]
    b.close()
    c.granted(ic)


def test_a_quiet_release_has_no_reply_unless_it_fails(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    ir = a.send(release=pb.Release(lease_id=la.lease_id, quiet=True))
    assert b.granted(ib).token > la.token  # released, in order
    pong = a.call(ping=pb.Ping())
    assert pong.WhichOneof("kind") == "pong"
    assert not [m for m in a.pending if m.id == ir]  # no Released
    # Releasing it again fails, and that failure is still reported.
    ir2 = a.send(release=pb.Release(lease_id=la.lease_id, quiet=True))
    assert error_of(a.wait(ir2)).code == pb.UNKNOWN_LEASE


def status_waiters(w, resource):
    st = w.call(status=pb.StatusRequest()).status
    return sum(len(r.waiters) for r in st.resources
               if r.resource == resource)


def test_shared_holders_overlap_and_exclusive_waits(daemon):
    a, b, x, c = (Wire(daemon.socket, n) for n in "abxc")
    la = a.lock("idx", shared=True)
    lb = b.lock("idx", shared=True)  # granted alongside a
    ix = x.acquire("idx")
    assert x.wait_kind("queued", ix).queued.holders == 2
    # A shared request behind a queued exclusive waits: no writer starvation.
    ic = c.acquire("idx", shared=True)
    assert c.wait_kind("queued", ic).queued.position == 2
    a.release(la.lease_id)
    b.release(lb.lease_id)
    lx = x.granted(ix)
    x.release(lx.lease_id)
    assert c.granted(ic).mode == pb.SHARED


def test_already_held_on_the_same_connection(daemon):
    a = Wire(daemon.socket)
    a.lock("r")
    e = error_of(a.wait(a.acquire("r")))
    assert e.code == pb.ALREADY_HELD and "'r'" in e.message


def test_try_lock_on_a_busy_resource_names_the_holder(daemon):
    a, b = Wire(daemon.socket, "indexer"), Wire(daemon.socket)
    a.lock("db")
    e = error_of(b.wait(b.acquire("db", timeout_ms=0)))
    assert e.code == pb.WOULD_BLOCK
    assert "pid %d (indexer)" % os.getpid() in e.message


def test_timeout_fails_with_timeout_and_leaves_no_waiter(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    la = a.lock("db")
    e = error_of(b.wait(b.acquire("db", timeout_ms=50)))
    assert e.code == pb.TIMEOUT and "timed out" in e.message
    st = a.call(status=pb.StatusRequest()).status
    assert [len(r.waiters) for r in st.resources] == [0]
    a.release(la.lease_id)
    assert b.lock("db", timeout_ms=0).token > la.token


def test_cancel_a_pending_acquire_by_request_id(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    a.lock("db")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    r = b.call(release=pb.Release(request_id=ib))
    assert r.WhichOneof("kind") == "released"
    assert error_of(b.wait(ib)).code == pb.CANCELLED


def test_release_of_another_connections_lease_is_refused(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    la = a.lock("db")
    with pytest.raises(WireError) as ei:
        b.release(la.lease_id)
    assert ei.value.code == pb.UNKNOWN_LEASE
    with pytest.raises(WireError):
        a.release(la.lease_id + 1000)
    a.release(la.lease_id)
    with pytest.raises(WireError):  # double release
        a.release(la.lease_id)


def test_tokens_strictly_increase_across_resources(daemon):
    a = Wire(daemon.socket)
    seen = []
    for i in range(20):
        lease = a.lock("r%d" % (i % 3))
        seen.append(lease.token)
        a.release(lease.lease_id)
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_pipelined_requests_are_answered_in_order(daemon):
    a = Wire(daemon.socket)
    out = b""
    for i in range(200):
        req = pb.Request(id=1000 + i, ping=pb.Ping(payload=b"%d" % i))
        data = req.SerializeToString()
        out += struct.pack(">I", len(data)) + data
    a.send_raw(out)
    for i in range(200):
        m = a.read()
        assert m.id == 1000 + i and m.pong.payload == b"%d" % i


def test_disconnect_ends_leases_and_grants_the_next_waiter(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    a.lock("db")
    a.lock("other")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    a.close()
    assert b.granted(ib).token > 0
    st = b.call(status=pb.StatusRequest()).status
    assert [r.resource for r in st.resources] == ["db"]


# ------------------------------------------------------------ dead holders

HOLDER = r"""
import os, socket, struct, sys
sys.path.insert(0, sys.argv[2])
import arbiter_pb2 as pb
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def frame(m):
    d = m.SerializeToString(); return struct.pack(">I", len(d)) + d
s.sendall(frame(pb.Request(id=1, hello=pb.Hello(protocol_version=1))))
s.sendall(frame(pb.Request(id=2, acquire=pb.Acquire(resource=b"db"))))
# Pipeline far more than the daemon reads at once, and never read a reply.
blob = b"".join(frame(pb.Request(id=3 + i, ping=pb.Ping(payload=b"x" * 900)))
                for i in range(int(sys.argv[3])))
s.setblocking(False)
try:
    s.sendall(blob)
except BlockingIOError:
    pass
print("holding", flush=True)
sys.stdin.read()
"""


def test_killed_holder_that_pipelined_loses_its_lease_at_once(daemon):
    """DESIGN 8: undrained input must never hide a dead client."""
    w = Wire(daemon.socket)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, daemon.socket,
                          os.path.dirname(pb.__file__), "400"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert p.stdout.readline() == b"holding\n"
        i = w.acquire("db")
        w.wait_kind("queued", i)
        t0 = time.monotonic()
        p.kill()
        p.wait()
        assert w.granted(i).token >= 2
        assert time.monotonic() - t0 < 2 * harness.SLOW
    finally:
        p.kill()
        p.wait()


def test_kill9_of_an_arbiterctl_holder_hands_over(daemon, procs):
    first = daemon.ctl_bg("run", "db", "--", "sh", "-c",
                          "echo held $$; exec sleep 60")
    procs.append(first)
    cmd = int(first.out.wait_for("held").split()[1])
    second = daemon.ctl_bg("run", "-v", "db", "--", "sh", "-c",
                           'echo "got $ARBITER_TOKEN"')
    procs.append(second)
    second.err.wait_for("waiting for 'db': position 1")
    t0 = time.monotonic()
    os.killpg(first.pid, signal.SIGKILL)  # arbiterctl
    os.killpg(cmd, signal.SIGKILL)  # and its command, in a group of its own
    line = second.out.wait_for("got ")
    took = time.monotonic() - t0
    assert int(line.split()[1]) >= 2
    assert second.wait(WAIT) == 0
    assert took < 2 * harness.SLOW, took


def test_killing_arbiterctl_alone_keeps_the_lease_while_the_command_runs(
        daemon, procs):
    first = daemon.ctl_bg("run", "db", "--", "sh", "-c",
                          "echo held $$; exec sleep 60")
    procs.append(first)
    cmd = int(first.out.wait_for("held").split()[1])
    os.kill(first.pid, signal.SIGKILL)  # arbiterctl only, not its command
    first.wait()
    r = daemon.ctl("run", "-n", "db", "--", "true")
    assert r.returncode == 1 and "busy" in r.stderr
    # The command still runs; ending it ends the lease.
    os.killpg(cmd, signal.SIGKILL)
    w = Wire(daemon.socket)
    assert w.lock("db").token >= 2


# ------------------------------------------------------------ arbiterctl run

def test_run_gives_the_command_its_lease_in_the_environment(daemon):
    w = Wire(daemon.socket)
    before = w.lock("db")
    w.release(before.lease_id)
    r = daemon.ctl("run", "db", "--", "sh", "-c",
                   'echo "$ARBITER_RESOURCE $ARBITER_LEASE_ID $ARBITER_TOKEN"')
    assert r.returncode == 0
    res, lease, token = r.stdout.split()
    # The command's lease is the next grant of db: a new lease id, and a
    # token above every earlier one, below every later one.
    assert res == "db" and int(lease) > before.lease_id
    assert int(token) > before.token
    assert w.lock("db").token > int(token)


def test_run_exits_with_the_commands_status(daemon):
    assert daemon.ctl("run", "db", "--", "sh", "-c", "exit 7").returncode == 7
    assert daemon.ctl("run", "db", "--", "sh", "-c",
                      "kill -TERM $$").returncode == 128 + 15
    assert daemon.ctl("run", "db", "--", "/nonexistent").returncode == 127


def test_run_try_lock_and_wait_exit_codes(daemon, procs):
    w = Wire(daemon.socket, "holder")
    w.lock("db")
    r = daemon.ctl("run", "-n", "db", "--", "true")
    assert r.returncode == 1 and "held exclusive by pid" in r.stderr
    assert daemon.ctl("run", "-n", "-E", "9", "db", "--", "true").returncode == 9
    t0 = time.monotonic()
    r = daemon.ctl("run", "-w", "0.2", "db", "--", "true")
    assert r.returncode == 1 and "timed out after" in r.stderr
    assert time.monotonic() - t0 >= 0.2
    # Shared holders overlap.
    assert daemon.ctl("run", "-s", "-n", "free", "--", "true").returncode == 0


def test_run_shared_commands_overlap(daemon, procs):
    a = daemon.ctl_bg("run", "-s", "idx", "--", "sh", "-c", "echo in; exec sleep 60")
    procs.append(a)
    a.out.wait_for("in")
    r = daemon.ctl("run", "-s", "-n", "idx", "--", "echo", "also")
    assert r.returncode == 0 and r.stdout == "also\n"
    assert daemon.ctl("run", "-x", "-n", "idx", "--", "true").returncode == 1


def test_ctl_reports_a_missing_daemon_clearly(tmp_path):
    r = subprocess.run([harness.ARBITERCTL, "-S", str(tmp_path / "no.sock"),
                        "ping"], capture_output=True, text=True)
    assert r.returncode == 69
    assert "no arbiter socket at" in r.stderr and "running" in r.stderr


def test_ping(daemon):
    r = daemon.ctl("ping")
    assert r.returncode == 0 and r.stdout == "pong active\n"


# ------------------------------------------------------------ storage lock

def test_second_daemon_on_the_same_storage_waits_and_names_the_holder(
        daemon, tmp_path):
    b = harness.Daemon(tmp_path, name="b", storage=daemon.storage)
    try:
        b.log.wait_for("standby: another arbiter holds the storage")
        assert "pid=%d " % daemon.pid in b.log.wait_for("standby")
        assert b.ctl("ping").stdout == "pong standby\n"
        who = b.ctl("who").stdout
        assert "pid=%d " % daemon.pid in who and "standby" in who
    finally:
        harness.check_clean_exit(b)


def test_a_leftover_lock_file_never_blocks_a_start(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".arbiter.lock").write_text("pid=1 host=gone socket=x since=y\n")
    d = harness.Daemon(tmp_path, storage=str(data))
    try:
        assert d.ctl("ping").returncode == 0
        assert "pid=%d " % d.pid in (data / ".arbiter.lock").read_text()
    finally:
        harness.check_clean_exit(d)


def test_restart_after_kill9_replaces_the_dead_socket(tmp_path):
    d = harness.Daemon(tmp_path)
    d.kill9()
    assert os.path.exists(d.socket)  # left behind by the crash
    d2 = harness.Daemon(tmp_path)
    try:
        assert d2.ctl("ping").returncode == 0
        d2.log.wait_for("removed stale socket")
    finally:
        harness.check_clean_exit(d2)


def test_a_live_socket_is_never_taken_over(daemon, tmp_path):
    r = harness.run_arbiterd(["-S", daemon.socket, "-s",
                              str(tmp_path / "other")])
    assert r.returncode == 1, r.stderr
    assert "already answering" in r.stderr and daemon.socket in r.stderr
    assert daemon.ctl("ping").returncode == 0


# ------------------------------------------------------------ bad input

def raw(daemon):
    return harness.connect_raw(daemon.socket)


read_all = harness.read_until_closed


def decode_error(data):
    (n,) = struct.unpack(">I", data[:4])
    m = pb.ServerMessage()
    m.ParseFromString(data[4:4 + n])
    return error_of(m)


@pytest.mark.parametrize("payload,code,words", [
    (b"\x00\x00\x00\x05hello", pb.BAD_FRAME, "not a valid Request"),
    (b"\x00\x00\x00\x00", pb.BAD_FRAME, "length 0"),
    (b"\x00\xff\xff\xff", pb.LIMIT, "max_frame_bytes"),
])
def test_bad_frames_get_an_error_and_only_that_connection_closes(
        daemon, payload, code, words):
    holder = Wire(daemon.socket)
    lease = holder.lock("db")
    s = raw(daemon)
    s.sendall(payload)
    e = decode_error(read_all(s))
    assert e.code == code and words in e.message
    # Everyone else goes on undisturbed.
    holder.release(lease.lease_id)
    assert Wire(daemon.socket).lock("db", timeout_ms=0).token > lease.token


def test_request_before_hello_is_refused(daemon):
    w = Wire(daemon.socket, hello=False)
    e = error_of(w.call(ping=pb.Ping()))
    assert e.code == pb.NOT_WELCOME
    assert w.read() is None


def test_wrong_protocol_version_is_refused(daemon):
    w = Wire(daemon.socket, hello=False)
    e = error_of(w.call(hello=pb.Hello(protocol_version=99)))
    assert e.code == pb.VERSION and "version 1" in e.message


@pytest.mark.parametrize("name", [b"", b"x" * 256, b"a\x00b", b"\xff\xfe",
                                  b"tab\there", b"\xc0\xaf"])
def test_invalid_resource_names_are_refused(daemon, name):
    w = Wire(daemon.socket)
    e = error_of(w.wait(w.acquire(name)))
    assert e.code == pb.INVALID_NAME
    assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"


def test_unknown_mode_is_refused(daemon):
    w = Wire(daemon.socket)
    w.next_id += 1
    # mode = 7 on the wire (field 2, varint), which no client library emits.
    acq = pb.Acquire(resource=b"db").SerializeToString() + b"\x10\x07"
    req = struct.pack(">B", 0x08) + bytes([w.next_id]) + b"\x5a" + \
        bytes([len(acq)]) + acq
    w.send_raw(struct.pack(">I", len(req)) + req)
    m = w.wait(w.next_id)
    assert m.WhichOneof("kind") == "error"
    # A well-formed frame with a bad value is a bad request, answered on a
    # connection that stays open.
    assert m.error.code == pb.BAD_REQUEST, m
    assert "unknown mode 7" in m.error.message
    assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"


def test_a_silent_client_is_closed_at_the_handshake_deadline(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "limits.handshake_timeout_ms=100"])
    try:
        s = raw(d)
        e = decode_error(read_all(s))
        assert e.code == pb.LIMIT and "handshake_timeout_ms" in e.message
    finally:
        harness.check_clean_exit(d)


def test_ctl_gives_up_on_a_hung_arbiter(tmp_path):
    """A probe must fail, not hang, when the daemon accepts but never answers."""
    path = str(tmp_path / "hung.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(8)
    try:
        t0 = time.monotonic()
        r = subprocess.run([harness.ARBITERCTL, "-S", path, "-t", "0.3",
                            "ping"], capture_output=True, text=True,
                           timeout=WAIT)
        assert r.returncode == 69
        assert "no answer from the arbiter" in r.stderr
        assert 0.25 < time.monotonic() - t0 < WAIT
    finally:
        srv.close()
