"""The protocol session shared by Client and AsyncClient, without sockets:
frames built with the protocol's messages go in, actions and requests come
out."""
import time

import pytest

import arbiter_client as ac
from arbiter_client import _proto as P
from arbiter_client import _session as S
from arbiter_client._proto import pb

PATH = "/nowhere/arbiter.sock"


class FakeLease(P.BaseLease):
    __slots__ = ()


class FakeClient:
    socket_path = PATH


def session(may_reconnect=True):
    c = FakeClient()
    return S.Session(PATH, lambda raw, g: FakeLease(c, raw, g), "thread",
                     "Client", "ArbiterLock", lambda: may_reconnect)


def frame(**kw):
    """One ServerMessage as the daemon frames it."""
    data = pb.ServerMessage(**kw).SerializeToString()
    return len(data).to_bytes(P.FRAME_HEADER, "big") + data


def refusal(req_id, code):
    return frame(id=req_id, error=pb.Error(code=code, message="no"))


def acquire(s, raw=b"db", on_queued=None, auto_renew=True, owner=1):
    """Register an acquire as a transport does: (request, pending)."""
    gate = s.gate_take(raw, S.Gate(owner))
    p = S.Pending()
    req = s.acquire_request(p, raw, raw.decode(), False, None, None, 0,
                            on_queued, None, auto_renew, None, gate)
    s.register(req.id, p, "conn1")
    return req, p


def granted(req_id, lease_id=7, ttl_ms=0, resource="db"):
    return frame(id=req_id, granted=pb.Granted(
        resource=resource, lease_id=lease_id, token=3, ttl_ms=ttl_ms))


def test_a_reply_goes_to_the_request_of_its_id():
    s = session()
    p1, p2 = S.Pending(), S.Pending()
    s.register(5, p1, "c")
    s.register(6, p2, "c")
    acts = s.feed(frame(id=6, pong=pb.Pong(role="active")))
    assert acts == [(S.ANSWER, p2)] and p2.msg.pong.role == "active"
    assert p1.msg is None and list(s.pending) == [5]
    assert s.feed(frame(id=6, pong=pb.Pong())) == []     # answered already
    assert s.answer(p2.msg, "pong", "ping").role == "active"


def test_frames_cut_anywhere_come_out_whole():
    s = session()
    p = S.Pending()
    s.register(9, p, "c")
    data = frame(id=9, pong=pb.Pong(payload=b"x" * 100))
    assert s.feed(data[:3]) == [] and s.feed(data[3:50]) == []
    assert s.feed(data[50:]) == [(S.ANSWER, p)]


def test_answers_map_errors_and_unexpected_kinds():
    s = session()
    err = pb.ServerMessage(id=2, error=pb.Error(code=pb.INVALID_NAME,
                                                message="bad"))
    with pytest.raises(ac.InvalidName):
        s.answer(err, "pong", "ping", resource="x")
    with pytest.raises(ac.ProtocolError):
        s.answer(pb.ServerMessage(id=2, released=pb.Released()), "pong",
                 "ping")


def test_a_grant_makes_a_lease_and_a_ttl_one_asks_for_renewals():
    s = session()
    req, p = acquire(s)
    acts = s.feed(granted(req.id, ttl_ms=3000))
    lease = p.lease
    assert acts == [(S.ANSWER, p), (S.RENEW, lease)]
    assert s.leases == {7: lease} and lease.held and lease.ttl == 3.0
    assert lease._conn == "conn1" and lease._gate is p.gate
    lease_p = s.acquire_answer(p, p.msg, "db", None)
    assert lease_p == (lease, None, False)


def test_no_renewals_without_auto_renew_or_ttl():
    s = session()
    req, p = acquire(s, auto_renew=False)
    assert s.feed(granted(req.id, ttl_ms=3000)) == [(S.ANSWER, p)]
    req, p = acquire(s, raw=b"other")
    assert s.feed(granted(req.id, lease_id=8)) == [(S.ANSWER, p)]


def test_queue_events_reach_the_waiters_callback():
    s = session()
    seen = []
    req, p = acquire(s, on_queued=seen.append)
    acts = s.feed(frame(id=req.id, queued=pb.Queued(
        resource="db", position=2, holder_name="h", holders=1, lease_id=4)))
    (kind, cb, info), = acts
    assert kind == S.QUEUED and cb == seen.append
    assert info == ac.QueueInfo("db", 2, None, "h", 1, 4)
    acts = s.feed(frame(id=req.id, queued=pb.Queued(
        resource="db", position=1, holder_pid=77, lease_id=4)))
    assert acts[0][2].holder_pid == 77
    assert req.id in s.pending          # still waiting for the grant
    s.withdraw(req.id, p)
    assert s.feed(frame(id=req.id, queued=pb.Queued(resource="db",
                                                     lease_id=4))) == []


def test_a_grant_after_a_withdrawal_is_released_quietly():
    s = session()
    req, p = acquire(s)
    w = s.withdraw(req.id, p)
    assert w.request.release.request_id == req.id and w.conn == "conn1"
    assert not w.gate_free and w.lease is None and p.abandoned
    acts = s.feed(granted(req.id, lease_id=11))
    assert [a[0] for a in acts] == [S.RELEASE, S.GATE_EXIT]
    assert acts[0][1].release.lease_id == 11 and acts[0][2] == "conn1"
    assert acts[1] == (S.GATE_EXIT, b"db", p.gate)
    assert s.leases == {} and p.lease is None


def test_a_refusal_after_a_withdrawal_opens_the_gate_only():
    s = session()
    req, p = acquire(s)
    s.withdraw(req.id, p)
    acts = s.feed(refusal(req.id, pb.WOULD_BLOCK))
    assert acts == [(S.GATE_EXIT, b"db", p.gate)]


def test_withdrawing_after_the_grant_releases_the_lease_by_id():
    s = session()
    req, p = acquire(s)
    s.feed(granted(req.id, lease_id=12))
    w = s.withdraw(req.id, p)
    assert w.request.release.lease_id == 12 and w.lease is p.lease
    assert w.gate_free and p.lease.released and s.leases == {}


def test_an_expired_acquire_is_withdrawn_unless_answered():
    s = session()
    req, p = acquire(s)
    r = s.expire(req.id, p)
    assert r.release.request_id == req.id and p.abandoned
    assert p.gate.owner is None        # asking again is not AlreadyHeld
    req, p = acquire(s, raw=b"b")
    s.feed(granted(req.id))
    assert s.expire(req.id, p) is None and not p.abandoned


def test_revocations_end_the_lease_and_say_why():
    s = session()
    req, p = acquire(s)
    s.feed(granted(req.id, lease_id=7))
    acts = s.feed(frame(revoked=pb.Revoked(lease_id=7, reason=pb.EXPIRED,
                                           message="ttl")))
    (kind, lease, rev), = acts
    assert kind == S.REVOKED and lease is p.lease and not lease.held
    assert rev.reason == "EXPIRED" and rev.message == "ttl"
    assert s.leases == {} and not s.shutdown_seen
    assert s.feed(frame(revoked=pb.Revoked(lease_id=7))) == []


def test_a_shutdown_revocation_marks_the_session():
    s = session()
    s.feed(frame(revoked=pb.Revoked(lease_id=1, reason=pb.SHUTDOWN)))
    assert s.shutdown_seen


def test_losing_the_connection_ends_leases_and_waiters():
    s = session()
    req, p = acquire(s)
    s.feed(granted(req.id, lease_id=7))
    req2, p2 = acquire(s, raw=b"b")
    req3, p3 = acquire(s, raw=b"c")
    s.withdraw(req3.id, p3)
    exc = P.lost(PATH)
    pending, gates, ended = s.lose(exc, closing=False)
    assert set(pending) == {p2, p3} and gates == [(b"c", p3.gate)]
    (lease, rev), = ended
    assert lease is p.lease and rev.reason == "DISCONNECT"
    assert lease.revoked is rev and s.pending == {} and s.leases == {}


def test_closing_ends_leases_without_revocations():
    s = session()
    req, p = acquire(s)
    s.feed(granted(req.id))
    _, _, ended = s.lose(P.lost(PATH), closing=True)
    assert ended == [(p.lease, None)] and p.lease.revoked is None


def test_daemon_errors_of_an_acquire():
    s = session()
    req, p = acquire(s)
    s.feed(refusal(req.id, pb.SHUTTING_DOWN))
    lease, exc, stopping = s.acquire_answer(p, p.msg, "db", None)
    assert lease is None and isinstance(exc, ac.ConnectionLost) and stopping
    assert s.shutdown_seen
    req, p = acquire(s, raw=b"b")
    s.feed(refusal(req.id, pb.WOULD_BLOCK))
    lease, exc, stopping = s.acquire_answer(p, p.msg, "b", 0)
    assert isinstance(exc, ac.WouldBlock) and not stopping


def test_gates():
    s = session()
    assert s.gate_wait(b"r", 1, "r", None, None) is None
    g = s.gate_take(b"r", S.Gate(1))
    with pytest.raises(ac.AlreadyHeld, match="ArbiterLock"):
        s.gate_wait(b"r", 1, "r", None, None)
    with pytest.raises(ac.WouldBlock):
        s.gate_wait(b"r", 2, "r", 0, time.monotonic())
    assert s.gate_wait(b"r", 2, "r", None, None) == (g, None)
    gate, left = s.gate_wait(b"r", 2, "r", 5, time.monotonic() + 5)
    assert gate is g and 0 < left <= 5
    with pytest.raises(ac.Timeout):
        s.gate_wait(b"r", 2, "r", 1, time.monotonic() - 1)
    assert not s.gate_exit(b"r", S.Gate(1))      # not the gate there
    assert s.gate_exit(b"r", g) and s.gates == {}


def run(plan, answer):
    """Drive a plan as a transport does, answering each step with
    answer(step), which returns a value or an exception."""
    steps = []
    done, out = S.step(plan)
    while not done:
        steps.append(out)
        r = answer(out)
        if isinstance(r, BaseException):
            done, out = S.step(plan, exc=r)
        else:
            done, out = S.step(plan, r)
    return out, steps


def test_status_in_pages_is_merged():
    s = session()
    pages = [pb.Status(role="active", next_cursor=b"k"),
             pb.Status(role="active")]
    pages[0].resources.add(resource="a")
    pages[1].resources.add(resource="b")
    d, steps = run(s.status(), lambda step: step[0] == "_call_on" and
                   pages.pop(0))
    assert [st[0] for st in steps] == ["_connected", "_call_on"] * 2
    assert steps[3][1].status.cursor == b"k"
    assert sorted(d["resources"]) == ["a", "b"]


def test_release_is_quiet_when_the_lease_already_ended():
    s = session()
    req, p = acquire(s)
    s.feed(granted(req.id))
    lease = p.lease
    out, steps = run(s.release(lease), lambda step: P.lost(PATH))
    assert out is None and steps[0][1].release.lease_id == lease.lease_id
    assert [st[0] for st in steps] == ["_call_on"]    # on its connection
    assert steps[0][5] == "conn1"
    # Lost with the release on its way: the daemon may have applied it, so
    # the lease is not reported revoked (a loss seen before is, by lose()).
    assert lease.revoked is None
    unknown = ac.ArbiterError("gone", code="UNKNOWN_LEASE")
    with pytest.raises(ac.ArbiterError):        # not revoked: a real error
        run(s.release(lease), lambda step: unknown)
    lease.revoked = P.Revocation(lease, "EXPIRED", "")
    assert run(s.release(lease), lambda step: unknown)[0] is None


def test_an_acquire_asks_again_after_a_loss_within_its_timeout():
    s = session()
    answers = {"_connected": [None, None], "_gate_enter": ["G"],
               "_acquire_on": [P.lost(PATH), "LEASE"]}
    out, steps = run(
        s.acquire("db", False, 30, None, None, None, True, None),
        lambda step: answers[step[0]].pop(0))
    assert out == "LEASE"
    assert [st[0] for st in steps] == ["_connected", "_gate_enter",
                                       "_acquire_on", "_connected",
                                       "_acquire_on"]
    assert steps[0][2] is False and steps[3][2] is False   # not once


def test_a_try_lock_does_not_ask_again_and_opens_its_gate():
    s = session()
    answers = {"_connected": [None], "_gate_enter": ["G"],
               "_acquire_on": [P.lost(PATH)], "_gate_exit": [None]}
    with pytest.raises(ac.ConnectionLost):
        run(s.acquire("db", False, 0, None, None, None, True, None),
            lambda step: answers[step[0]].pop(0))
    assert answers["_gate_exit"] == []


def test_reconnect_back_off_decisions():
    s = session()
    lost = P.lost(PATH)
    refused = ac.Forbidden("no", socket_path=PATH)
    with pytest.raises(ac.Forbidden):
        s.retry_delay(refused, lost, False, P.Backoff(), None, "db", None)
    with pytest.raises(ac.ArbiterError):
        s.retry_delay(ac.NotRunning("x"), lost, True, P.Backoff(), None,
                      "db", None)
    d = s.retry_delay(ac.NotRunning("x"), lost, False, P.Backoff(), None,
                      "db", None)
    assert 0 < d <= P.RECONNECT_FIRST
    with pytest.raises(ac.Timeout):
        s.retry_delay(ac.NotRunning("x"), lost, False, P.Backoff(),
                      time.monotonic() - 1, "db", 1)
    assert s.connect_seconds(10, None, False, lost) == 10
    assert s.connect_seconds(10, time.monotonic() + 2, False, lost) <= 2
    assert s.connect_seconds(10, time.monotonic() + 2, False, None) == 10


def test_a_read_only_request_goes_out_once_more_after_a_break():
    s = session()
    answers = [P.lost(PATH), pb.Pong(role="active")]
    out, steps = run(s.ping(b""), lambda step: step[0] == "_call_on" and
                     answers.pop(0))
    assert out["role"] == "active"
    assert [st[0] for st in steps] == ["_connected", "_call_on"] * 2
    # Not when the client may not connect again, nor twice.
    with pytest.raises(ac.ConnectionLost):
        run(session(may_reconnect=False).ping(b""),
            lambda step: step[0] == "_call_on" and P.lost(PATH))
    with pytest.raises(ac.ConnectionLost):
        run(s.ping(b""), lambda step: step[0] == "_call_on" and P.lost(PATH))


def test_a_request_that_changes_something_is_not_sent_again():
    s = session()
    with pytest.raises(ac.ConnectionLost):
        run(s.revoke(pid=5), lambda step: step[0] == "_call_on" and
            P.lost(PATH))
    with pytest.raises(TypeError):
        run(s.revoke(), lambda step: None)


def test_convert_plan_upgrades_downgrades_and_withdraws():
    s = session()
    lease = FakeLease(FakeClient(), b"db", pb.Granted(
        resource="db", lease_id=7, token=3, mode=pb.SHARED))
    lease._conn = "conn1"

    def converted(token, mode):
        return pb.ServerMessage(id=9, converted=pb.Converted(
            lease_id=7, token=token, mode=mode))

    # Done: the new token and mode are the lease's; the request carries
    # what is left of the timeout and goes out on the lease's connection.
    tok, steps = run(s.convert(lease, False, 5),
                     lambda st: converted(11, pb.EXCLUSIVE))
    ((name, req, conn, give_up),) = steps
    assert name == "_wait_on" and conn == "conn1"
    assert req.convert.mode == pb.EXCLUSIVE and req.convert.lease_id == 7
    assert 4900 <= req.convert.timeout_ms <= 5000
    assert give_up > time.monotonic() + 5        # the acquire's grace
    assert tok == 11 and lease.token == 11 and lease.mode == ac.EXCLUSIVE

    # A downgrade never waits on others: one request under the I/O bound.
    tok, steps = run(s.convert(lease, True),
                     lambda st: converted(11, pb.SHARED).converted)
    assert steps[0][0] == "_call_on" and steps[0][1].convert.mode == pb.SHARED
    assert not steps[0][1].convert.HasField("timeout_ms")
    assert tok == 11 and lease.mode == ac.SHARED

    # No answer by the deadline: withdrawn by converting back to shared,
    # Timeout (WouldBlock for a try), the lease stays shared.
    for timeout, exc in ((0.5, ac.Timeout), (0, ac.WouldBlock)):
        answers = iter([None, None])
        with pytest.raises(exc, match="withdrawn and the lease is held "
                           "shared") as ei:
            run(s.convert(lease, False, timeout), lambda st: next(answers))
        assert type(ei.value) is exc
    seen = []

    def no_answer(st):
        seen.append(st)
        return None
    with pytest.raises(ac.WouldBlock):
        run(s.convert(lease, False, 0), no_answer)
    assert [st[0] for st in seen] == ["_wait_on", "_send_ignored"]
    w = seen[1][1].convert
    assert (w.lease_id, w.mode, w.timeout_ms) == (7, pb.SHARED, 0)
    assert seen[1][2] == "conn1"
    assert lease.mode == ac.SHARED and lease.token == 11

    # Interrupted while waiting: withdrawn too, and the interrupt goes on.
    seen.clear()

    def interrupted(st):
        seen.append(st)
        return KeyboardInterrupt() if st[0] == "_wait_on" else None
    with pytest.raises(KeyboardInterrupt):
        run(s.convert(lease, False, None), interrupted)
    assert [st[0] for st in seen] == ["_wait_on", "_send_ignored"]
    assert seen[0][3] is None                     # no timeout: no end

    # The daemon's refusals, each its exception; the lease stays shared.
    for code, exc in ((pb.DEADLOCK, ac.Deadlock), (pb.TIMEOUT, ac.Timeout),
                      (pb.WOULD_BLOCK, ac.WouldBlock),
                      (pb.UNKNOWN_LEASE, ac.LeaseRevoked)):
        m = pb.ServerMessage(id=9, error=pb.Error(code=code, message="no"))
        with pytest.raises(exc) as ei:
            run(s.convert(lease, False, 1), lambda st: m)
        assert type(ei.value) is exc and ei.value.resource == "db"
        assert lease.mode == ac.SHARED and lease.token == 11
    m = pb.ServerMessage(id=9, error=pb.Error(
        code=pb.CANCELLED, message="the waiting upgrade of lease 7 on 'db' "
        "ended with the lease (admin)"))
    with pytest.raises(ac.LeaseRevoked) as ei:
        run(s.convert(lease, False, 1), lambda st: m)
    assert ei.value.reason == "ADMIN"

    # A revoked or released lease is refused before anything goes out.
    lease.revoked = P.Revocation(lease, "ADMIN", "revoked")
    with pytest.raises(ac.LeaseRevoked):
        run(s.convert(lease, False, 1), lambda st: pytest.fail("sent"))
    lease.revoked, lease.released = None, True
    with pytest.raises(ac.ArbiterError, match="it was released"):
        run(s.convert(lease, True), lambda st: pytest.fail("sent"))
