"""Lock conversion over the socket: Convert, Converted and their Errors."""
import json
import os
import subprocess
import sys

import pytest

import harness
from harness import Wire, error_of, pb


def convert(w, lease_id, shared=False, timeout_ms=None):
    c = pb.Convert(lease_id=lease_id,
                   mode=pb.SHARED if shared else pb.EXCLUSIVE)
    if timeout_ms is not None:
        c.timeout_ms = timeout_ms
    return w.send(convert=c)


def converted(w, id):
    m = w.wait(id)
    assert m.WhichOneof("kind") == "converted", m
    return m.converted


def holders(w, resource):
    st = w.call(status=pb.StatusRequest(resource=resource.encode())).status
    for r in st.resources:
        if r.resource == resource:
            return list(r.holders)
    return []


def wait_converting(w, resource, lease_id):
    """Poll status until lease_id shows as converting (a round trip each)."""
    for _ in range(2000):
        for h in holders(w, resource):
            if h.lease_id == lease_id and h.converting:
                return h
    raise AssertionError("lease %d never showed as converting" % lease_id)


def stats_of(w, resource):
    s = w.call(stats=pb.StatsRequest(resource=resource.encode())).stats
    for r in s.resources:
        if r.resource == resource:
            return r, s.total
    raise AssertionError("no stats for %s" % resource)


def test_lone_reader_upgrades_at_once_with_a_higher_token(daemon):
    a = Wire(daemon.socket, "a")
    la = a.lock("db", shared=True)
    c = converted(a, convert(a, la.lease_id))
    assert c.lease_id == la.lease_id and c.mode == pb.EXCLUSIVE
    assert c.token > la.token and c.resource == "db"
    # Downgrade keeps the token and never waits.
    d = converted(a, convert(a, la.lease_id, shared=True))
    assert d.mode == pb.SHARED and d.token == c.token
    # Not a Granted of a new lease: nothing else arrived.
    assert not a.pending
    a.release(la.lease_id)


def test_upgrade_waits_for_the_other_reader(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    lb = b.lock("db", shared=True)
    ic = convert(a, la.lease_id)
    h = wait_converting(b, "db", la.lease_id)
    assert h.mode == pb.SHARED and h.HasField("converting_us")
    text = daemon.text(["status db"])
    assert "lease=%d mode=shared" % la.lease_id in text
    assert "converting_ms=" in text
    b.release(lb.lease_id)
    c = converted(a, ic)
    assert c.mode == pb.EXCLUSIVE and c.token > lb.token
    assert [m for m in a.pending if m.WhichOneof("kind") == "granted"] == []
    hs = holders(a, "db")
    assert [(x.lease_id, x.mode, x.converting) for x in hs] == \
        [(la.lease_id, pb.EXCLUSIVE, False)]
    # The other reader cannot get in until it is given back.
    ib = b.acquire("db", shared=True, timeout_ms=0)
    assert error_of(b.wait(ib)).code == pb.WOULD_BLOCK


def test_upgrader_goes_ahead_of_a_queued_writer(daemon):
    r1, r2, w = (Wire(daemon.socket, n) for n in ("r1", "r2", "w"))
    l1 = r1.lock("db", shared=True)
    l2 = r2.lock("db", shared=True)
    iw = w.acquire("db")
    qw = w.wait_kind("queued", iw).queued
    ic = convert(r1, l1.lease_id)
    wait_converting(r2, "db", l1.lease_id)
    r2.release(l2.lease_id)
    c = converted(r1, ic)
    assert c.mode == pb.EXCLUSIVE
    # The writer still waits: status lists it behind the upgraded lease.
    st = r2.call(status=pb.StatusRequest(resource=b"db")).status
    assert [x.lease_id for x in st.resources[0].waiters] == [qw.lease_id]
    assert not [m for m in w.pending if m.WhichOneof("kind") == "granted"]
    r1.release(l1.lease_id)
    g = w.granted(iw)
    assert g.token > c.token


def test_second_upgrader_is_refused_with_deadlock_and_the_first_proceeds(
        daemon):
    a, b = Wire(daemon.socket, "first"), Wire(daemon.socket, "second")
    la = a.lock("db", shared=True)
    lb = b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    e = error_of(b.wait(convert(b, lb.lease_id, timeout_ms=5000)))
    assert e.code == pb.DEADLOCK
    assert "'db'" in e.message and "lease %d" % la.lease_id in e.message
    assert "pid %d" % os.getpid() in e.message and "first" in e.message
    # A try-once upgrade is refused the same way.
    e = error_of(b.wait(convert(b, lb.lease_id, timeout_ms=0)))
    assert e.code == pb.DEADLOCK
    # The refused lease is still held shared.
    assert {(x.lease_id, x.mode) for x in holders(b, "db")} == \
        {(la.lease_id, pb.SHARED), (lb.lease_id, pb.SHARED)}
    b.release(lb.lease_id)
    assert converted(a, ia).mode == pb.EXCLUSIVE
    r, total = stats_of(a, "db")
    assert r.upgrade_deadlock == 2 and total.upgrade_deadlock == 2
    assert r.upgraded_after_wait == 1


def test_upgrade_timeout_leaves_the_shared_lease_held(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    lb = b.lock("db", shared=True)
    e = error_of(a.wait(convert(a, la.lease_id, timeout_ms=50)))
    assert e.code == pb.TIMEOUT
    assert "still held shared" in e.message and "'db'" in e.message
    assert {(x.lease_id, x.mode, x.converting)
            for x in holders(a, "db")} == \
        {(la.lease_id, pb.SHARED, False), (lb.lease_id, pb.SHARED, False)}
    # A try-once upgrade would block, and says so.
    e = error_of(a.wait(convert(a, la.lease_id, timeout_ms=0)))
    assert e.code == pb.WOULD_BLOCK and "still held shared" in e.message
    assert "1 other holder(s) share it" in e.message
    # Another reader still gets in: nothing waits any more.
    c = Wire(daemon.socket, "c")
    c.lock("db", shared=True, timeout_ms=0)
    r, total = stats_of(a, "db")
    assert r.upgrade_timeout == 1 and total.upgrade_timeout == 1
    assert r.failed_timeout == 0
    a.release(la.lease_id)


def test_converting_to_the_held_mode_withdraws_a_waiting_upgrade(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    # A second upgrade of the same lease is a bad request.
    e = error_of(a.wait(convert(a, la.lease_id)))
    assert e.code == pb.BAD_REQUEST and "already waits" in e.message
    iw = convert(a, la.lease_id, shared=True)
    e = error_of(a.wait(ia))
    assert e.code == pb.CANCELLED and "still held shared" in e.message
    assert converted(a, iw).mode == pb.SHARED


def test_downgrade_grants_queued_readers_in_the_same_turn(daemon):
    a = Wire(daemon.socket, "a")
    la = a.lock("db")
    readers = [Wire(daemon.socket, "r%d" % i) for i in range(3)]
    ids = [r.acquire("db", shared=True) for r in readers]
    for r, i in zip(readers, ids):
        r.wait_kind("queued", i)
    iw = a.send(convert=pb.Convert(lease_id=la.lease_id, mode=pb.SHARED))
    # Pipelined behind the Convert: answered in the same turn, after it.
    ist = a.send(status=pb.StatusRequest(resource=b"db"))
    d = converted(a, iw)
    assert d.mode == pb.SHARED and d.token == la.token
    st = a.wait(ist).status
    assert len(st.resources[0].holders) == 4
    assert len(st.resources[0].waiters) == 0
    for r, i in zip(readers, ids):
        assert r.granted(i).mode == pb.SHARED
    r, total = stats_of(a, "db")
    assert r.downgraded == 1 and total.downgraded == 1
    # Three readers and the first lease: the conversion is no acquisition.
    assert r.acquired_immediate == 1 and r.acquired_after_wait == 3


def test_convert_errors_for_unknown_and_pending_leases(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    e = error_of(b.wait(convert(b, la.lease_id, shared=True)))
    assert e.code == pb.UNKNOWN_LEASE  # another connection's
    e = error_of(b.wait(convert(b, 987654)))
    assert e.code == pb.UNKNOWN_LEASE and "987654" in e.message
    st = b.call(status=pb.StatusRequest(resource=b"db")).status
    pending = st.resources[0].waiters[0].lease_id
    e = error_of(b.wait(convert(b, pending, shared=True)))
    assert e.code == pb.BAD_REQUEST and "not granted yet" in e.message


def test_release_while_converting_answers_the_convert_first(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    ir = a.send(release=pb.Release(lease_id=la.lease_id))
    e = error_of(a.wait(ia))
    assert e.code == pb.CANCELLED
    r = a.wait(ir)
    assert r.WhichOneof("kind") == "released"
    assert r.released.lease_id == la.lease_id


CONVERTER = r"""
import socket, struct, sys
sys.path.insert(0, sys.argv[2])
import arbiter_pb2 as pb
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
def frame(m):
    d = m.SerializeToString(); return struct.pack(">I", len(d)) + d
def read():
    b = b""
    while len(b) < 4: b += s.recv(4 - len(b))
    n, = struct.unpack(">I", b); b = b""
    while len(b) < n: b += s.recv(n - len(b))
    m = pb.ServerMessage(); m.ParseFromString(b); return m
s.sendall(frame(pb.Request(id=1, hello=pb.Hello(protocol_version=1))))
read()
s.sendall(frame(pb.Request(id=2, acquire=pb.Acquire(resource=b"db",
                                                    mode=pb.SHARED))))
g = read().granted
s.sendall(frame(pb.Request(id=3, convert=pb.Convert(lease_id=g.lease_id,
                                                    mode=pb.EXCLUSIVE))))
print(g.lease_id, flush=True)
sys.stdin.read()
"""


def test_holder_killed_while_converting(daemon):
    a, w = Wire(daemon.socket, "a"), Wire(daemon.socket, "w")
    la = a.lock("db", shared=True)
    p = subprocess.Popen([sys.executable, "-c", CONVERTER, daemon.socket,
                          os.path.dirname(pb.__file__)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        lease = int(p.stdout.readline())
        wait_converting(a, "db", lease)
        iw = w.acquire("db")
        w.wait_kind("queued", iw)
        p.kill()
        p.wait()
        # Its lease and its upgrade are gone; the other reader is alone and
        # upgrades at once, ahead of the queued writer.
        for _ in range(2000):
            hs = holders(a, "db")
            if len(hs) == 1:
                break
        assert [(h.lease_id, h.converting) for h in hs] == \
            [(la.lease_id, False)]
        c = converted(a, convert(a, la.lease_id, timeout_ms=0))
        assert c.mode == pb.EXCLUSIVE
        a.release(la.lease_id)
        assert w.granted(iw).token > c.token
        r, _ = stats_of(a, "db")
        assert r.revoked_disconnect == 1 and r.upgraded_immediate == 1
    finally:
        p.kill()
        p.wait()


def test_stats_and_status_render_conversions_everywhere(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    lb = b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    b.release(lb.lease_id)
    converted(a, ia)
    converted(a, convert(a, la.lease_id, shared=True))
    converted(a, convert(a, la.lease_id))
    s = json.loads(daemon.ctl("stats", "--json", check=True).stdout)
    db = s["resources"]["db"]
    assert db["upgraded_after_wait"] == 1
    assert db["upgraded_immediate"] == 1 and db["downgraded"] == 1
    assert s["upgraded_immediate"] == 1 and s["downgraded"] == 1
    text = daemon.text(["stats db"])
    assert "upgraded_after_wait:1" in text and "downgraded:1" in text
    assert db["acquired_immediate"] == 2  # the two leases, not conversions
    # How long upgrades waited: one after b left, one at once (0).
    up = db["upgrade_wait_seconds"]
    assert up["count"] == 2 and up["max"] > 0, up
    assert "upgrade_wait_seconds:count=2 " in text, text


@pytest.mark.parametrize("how", ["revoke", "expire"])
def test_lease_ending_while_converting_cancels_the_upgrade_first(daemon,
                                                                 how):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True, ttl_ms=60000 if how == "revoke" else 300)
    lb = b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    if how == "revoke":
        m = b.call(revoke=pb.Revoke(lease_id=la.lease_id))
        assert m.WhichOneof("kind") == "revoke_done", m
    # The Convert's answer comes first, then the lease's Revoked.
    assert not a.pending
    m = a.read()
    assert m.id == ia, m
    e = error_of(m)
    assert e.code == pb.CANCELLED and "ended with the lease" in e.message
    r = a.read()
    assert r.WhichOneof("kind") == "revoked", r
    assert r.revoked.lease_id == la.lease_id
    assert r.revoked.reason == (pb.ADMIN if how == "revoke"
                                else pb.EXPIRED)
    assert [(h.lease_id, h.converting) for h in holders(b, "db")] == \
        [(lb.lease_id, False)]
    # The queue is not held back by an upgrade that is gone.
    c = Wire(daemon.socket, "c")
    c.lock("db", shared=True, timeout_ms=0)


def test_ctl_status_shows_a_converting_holder(daemon):
    a, b = Wire(daemon.socket, "a"), Wire(daemon.socket, "b")
    la = a.lock("db", shared=True)
    lb = b.lock("db", shared=True)
    ia = convert(a, la.lease_id)
    wait_converting(b, "db", la.lease_id)
    st = json.loads(daemon.ctl("status", "--json", check=True).stdout)
    hs = {h["lease_id"]: h for h in st["resources"]["db"]["holders"]}
    assert hs[la.lease_id]["converting"] is True
    assert hs[la.lease_id]["converting_us"] > 0
    assert hs[lb.lease_id]["converting"] is False
    assert hs[lb.lease_id]["converting_us"] == 0
    rows = [ln for ln in daemon.ctl("status", check=True).stdout.splitlines()
            if ln.startswith("db ")]
    assert len(rows) == 2
    up = [ln for ln in rows if "(upgrading for " in ln]
    assert len(up) == 1 and up[0].endswith(")"), rows
    assert str(la.token) in up[0].split("(upgrading")[0].split()[-1:]
    b.release(lb.lease_id)
    converted(a, ia)
    rows = daemon.ctl("status", "db", check=True).stdout
    assert "upgrading" not in rows
