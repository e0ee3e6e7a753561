"""Leases that protect real data: ttl, lock-delay, admin revoke, durable
fencing tokens, standby takeover, on-demand storage lock."""
import os
import signal
import subprocess
import time

import pytest

import harness
from harness import grant_many, WAIT, Wire, WireError, error_of, pb


def other_user_ctl(daemon, *args):
    """arbiterctl as uid 'nobody' (needs root to switch)."""
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                           "--clear-groups", harness.ARBITERCTL, "-S",
                           daemon.socket] + list(args),
                          capture_output=True, text=True, timeout=WAIT)


needs_root = pytest.mark.skipif(os.getuid() != 0,
                                reason="switching uid needs root")


# ------------------------------------------------------------ ttl

def test_an_unrenewed_ttl_lease_expires_and_the_next_waiter_gets_it(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    la = a.lock("db", ttl_ms=200)
    assert la.ttl_ms == 200
    t0 = time.monotonic()
    ib = b.acquire("db")
    lb = b.granted(ib)
    assert time.monotonic() - t0 >= 0.15
    rev = a.wait_kind("revoked").revoked
    assert rev.lease_id == la.lease_id and rev.reason == pb.EXPIRED
    assert lb.token > la.token


def test_renew_keeps_a_ttl_lease_alive(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    la = a.lock("db", ttl_ms=300)
    ib = b.acquire("db", timeout_ms=900)
    t_end = time.monotonic() + 1.2
    while time.monotonic() < t_end:  # a client renewing every 100 ms
        r = a.call(renew=pb.Renew(lease_id=la.lease_id))
        assert r.WhichOneof("kind") == "renewed" and r.renewed.ttl_ms == 300
        time.sleep(0.1)
    assert error_of(b.wait(ib)).code == pb.TIMEOUT
    assert not [m for m in a.pending if m.WhichOneof("kind") == "revoked"]


def test_renew_errors(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    plain = a.lock("plain")
    e = error_of(a.call(renew=pb.Renew(lease_id=plain.lease_id)))
    assert e.code == pb.BAD_REQUEST and "no ttl_ms" in e.message
    ttl = a.lock("t", ttl_ms=100)
    e = error_of(b.call(renew=pb.Renew(lease_id=ttl.lease_id)))
    assert e.code == pb.UNKNOWN_LEASE
    a.wait_kind("revoked")  # let it expire
    e = error_of(a.call(renew=pb.Renew(lease_id=ttl.lease_id)))
    assert e.code == pb.UNKNOWN_LEASE and "expired" in e.message


def test_run_with_ttl_renews_while_the_command_runs(daemon):
    r = daemon.ctl("run", "--ttl", "0.3", "db", "--", "sh", "-c",
                   "sleep 1; echo done")
    assert r.returncode == 0 and r.stdout == "done\n"
    st = daemon.ctl("stats", "--json", "db")
    assert '"revoked_expired": 0' in st.stdout


def test_run_signals_its_command_when_the_lease_is_revoked(daemon, procs):
    p = daemon.ctl_bg("run", "--ttl", "5", "--grace", "5", "db", "--", "sh",
                      "-c", "trap 'echo got-term; exit 3' TERM; echo held; "
                      "while :; do sleep 0.05; done")
    procs.append(p)
    p.out.wait_for("held")
    r = daemon.ctl("revoke", "--pid", str(p.pid))
    assert r.returncode == 0 and "revoked 1 lease" in r.stdout
    p.out.wait_for("got-term")
    assert p.wait(WAIT) == 75
    p.err.wait_for("lost (revoked by an administrator)")


# ------------------------------------------------------------ lock-delay

def test_lock_delay_holds_back_a_grant_after_a_holder_dies(tmp_path):
    # The delay is the behaviour under test: both bounds are fractions of
    # it, and it grows with the slow factor so a slow build keeps the gap.
    delay = 0.3 * harness.SLOW
    d = harness.Daemon(tmp_path, args=[
        "-o", "leases.lock_delay_ms=%d" % (delay * 1000)])
    try:
        a, b = Wire(d.socket), Wire(d.socket)
        a.lock("db")
        ib = b.acquire("db")
        b.wait_kind("queued", ib)
        t0 = time.monotonic()
        a.close()
        b.granted(ib)
        assert time.monotonic() - t0 >= delay * 0.93
        # A clean release is never delayed.
        c = Wire(d.socket)
        lc = c.lock("clean")
        ie = b.acquire("clean")
        b.wait_kind("queued", ie)
        t0 = time.monotonic()
        c.release(lc.lease_id)
        b.granted(ie)
        assert time.monotonic() - t0 < delay * 0.83
    finally:
        harness.check_clean_exit(d)


def test_lock_delay_per_request_is_capped_by_config(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "leases.max_lock_delay_ms=100"])
    try:
        a, b = Wire(d.socket), Wire(d.socket)
        a.lock("db", lock_delay_ms=60000)
        a.close()
        t0 = time.monotonic()
        b.lock("db")
        assert time.monotonic() - t0 < 2 * harness.SLOW
        st = b.call(status=pb.StatusRequest()).status
        assert st.resources[0].delayed_us == 0
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ admin revoke

def test_admin_revoke_by_lease_tells_the_holder_and_grants_the_next(daemon):
    a, b = Wire(daemon.socket), Wire(daemon.socket)
    la = a.lock("db")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    r = daemon.ctl("revoke", "--lease", str(la.lease_id))
    assert r.returncode == 0 and r.stdout == "revoked 1 lease\n"
    rev = a.wait_kind("revoked").revoked
    assert rev.reason == pb.ADMIN and rev.resource == "db"
    assert b.granted(ib).token > la.token
    r = daemon.ctl("revoke", "--lease", "99999")
    assert r.returncode == 70 and "no held lease 99999" in r.stderr


@needs_root
def test_admin_revoke_is_forbidden_to_others(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "socket.mode=0666",
                                       "-o", "access.admin_uids=0"],
                       sockdir=harness.open_dir())
    try:
        a = Wire(d.socket)
        la = a.lock("db")
        r = other_user_ctl(d, "revoke", "--lease", str(la.lease_id))
        assert r.returncode == 70 and "admin" in r.stderr
        assert "not in access.admin_uids" in r.stderr
        assert d.ctl("revoke", "--lease", str(la.lease_id)).returncode == 0
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ tokens

def state_writes(d):
    st = d.text(["stats"])
    return int(st.split("state_writes:")[1].split()[0]), st


def assert_tokens_grow_after_kill9(tmp_path, d, last):
    """SIGKILL d, start a new daemon on the same storage: its first token
    must be above last."""
    d.kill9()
    d2 = harness.Daemon(tmp_path)
    try:
        assert Wire(d2.socket).lock("db").token > last
    finally:
        harness.check_clean_exit(d2)


def test_tokens_keep_growing_across_a_kill9_of_the_daemon(tmp_path):
    d = harness.Daemon(tmp_path)
    last = 0
    for _ in range(5):
        w = Wire(d.socket)
        last = w.lock("db").token
        w.close()  # ends the lease
    assert_tokens_grow_after_kill9(tmp_path, d, last)


def test_tokens_keep_growing_across_a_clean_restart(tmp_path):
    d = harness.Daemon(tmp_path)
    t1 = Wire(d.socket).lock("db").token
    harness.check_clean_exit(d)
    d2 = harness.Daemon(tmp_path)
    try:
        assert Wire(d2.socket).lock("db").token == t1 + 1
    finally:
        harness.check_clean_exit(d2)


@pytest.mark.parametrize("content,words", [
    (b"\x85garbage", "unusable"),
    (b"", "empty"),
    (b"\x82\xa6format\x01", "truncated"),
    (b"\x82\xa6format\x07\xa8token_hw\x05", "newer arbiter"),
])
def test_an_unusable_state_file_stops_the_start_with_a_way_out(
        tmp_path, content, words):
    data = tmp_path / "data"
    data.mkdir()
    (data / ".arbiter.state").write_bytes(content)
    d = harness.Daemon(tmp_path, wait_ready=False)
    harness.expect_refusal(d, words, "--reset-state",
                           os.path.join(str(data), ".arbiter.state"))
    # The file is never silently replaced.
    assert (data / ".arbiter.state").read_bytes() == content
    # README: --reset-state starts with tokens above the current time in
    # microseconds (taken before the start, so any later clock is above).
    before_us = time.time() * 1e6
    d2 = harness.Daemon(tmp_path, args=["--reset-state"])
    try:
        token = Wire(d2.socket).lock("db").token
        assert token > before_us, (token, before_us)
    finally:
        harness.check_clean_exit(d2)


def test_a_state_file_that_is_a_symlink_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "elsewhere").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", data / ".arbiter.state")
    d = harness.Daemon(tmp_path, wait_ready=False)
    harness.expect_refusal(d, "symbolic link",
                           os.path.join(str(data), ".arbiter.state"))


def test_fsyncs_per_ten_thousand_grants_are_few(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        assert grant_many(Wire(d.socket), 10000)[0] == 10000
        writes, st = state_writes(d)
        assert writes <= 3, st
    finally:
        harness.check_clean_exit(d)


def test_tokens_reserved_in_the_background_survive_a_kill9(tmp_path):
    # 25,000 grants cross two blocks, each reserved by the helper thread
    # while the loop kept granting.
    d = harness.Daemon(tmp_path)
    n, last = grant_many(Wire(d.socket), 25000)
    assert n == 25000
    writes, st = state_writes(d)
    assert writes >= 3, st
    assert_tokens_grow_after_kill9(tmp_path, d, last)


def test_grants_go_on_while_the_state_write_fails(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        w = Wire(d.socket)
        first = w.lock("db")
        w.release(first.lease_id)
        # A folder where the state file goes: the next state write fails
        # (its rename cannot replace a folder).
        state = os.path.join(d.storage, ".arbiter.state")
        os.unlink(state)
        os.mkdir(state)
        # Half a block in, the next block's write starts and fails; the
        # loop must go on granting the rest of this block (10,000 tokens).
        assert grant_many(w, 9999) == (9999, first.token + 9999)
        last = first.token + 9999
        d.log.wait_for("cannot reserve fencing tokens")
        # Past the block, grants wait for the write.
        held = w.acquire("db")
        assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
        assert not [m for m in w.pending if m.id == held and
                    m.WhichOneof("kind") == "granted"]
        os.rmdir(state)
        # The retry, a second later, writes a real file and grants.
        assert w.granted(held).token == last + 1
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ standby

def test_standby_takes_over_and_grants_its_queue_in_order(tmp_path):
    a = harness.Daemon(tmp_path, name="a")
    b = harness.Daemon(tmp_path, name="b", storage=a.storage)
    try:
        last = Wire(a.socket).lock("db").token
        ws = [Wire(b.socket, "w%d" % i) for i in range(3)]
        ids = []
        for i, w in enumerate(ws):  # one at a time: FIFO is arrival order
            ids.append(w.acquire("db"))
            assert w.wait_kind("queued", ids[-1]).queued.position == i + 1
        e = error_of(ws[0].wait(ws[0].acquire("other", timeout_ms=0)))
        assert e.code == pb.WOULD_BLOCK and "standby" in e.message
        t0 = time.monotonic()
        a.kill9()
        first = ws[0].granted(ids[0])
        took = time.monotonic() - t0
        assert first.token > last
        b.log.wait_for("took over the storage")
        ws[0].release(first.lease_id)
        second = ws[1].granted(ids[1])
        assert second.token > first.token
        assert b.ctl("ping").stdout == "pong active\n"
        assert took < 2 * harness.SLOW
    finally:
        harness.check_clean_exit(b)


# ------------------------------------------------------------ on-demand

def test_on_demand_arbiters_take_turns_on_one_storage(tmp_path):
    args = ["-o", "storage.hold=on-demand", "-o", "storage.linger_ms=50"]
    a = harness.Daemon(tmp_path, name="a", args=args)
    b = harness.Daemon(tmp_path, name="b", args=args, storage=a.storage)
    try:
        assert a.ctl("ping").stdout == "pong idle\n"
        wa, wb = Wire(a.socket), Wire(b.socket)
        la = wa.lock("db")
        ib = wb.acquire("db")
        q = wb.wait_kind("queued", ib)
        wa.release(la.lease_id)
        # a lingers 50 ms, then lets go; b's wait thread is woken by the
        # kernel and grants.
        lb = wb.granted(ib)
        assert lb.token > la.token
        a.log.wait_for("storage released (on-demand, idle)")
        wb.release(lb.lease_id)
        b.log.wait_for("storage released (on-demand, idle)")
        assert wa.lock("db").token > lb.token
        # The Queued event named the wait: first in line for db, under the
        # lease id that the grant then carried.
        assert q.queued.position == 1 and q.queued.resource == "db"
        assert q.queued.lease_id == lb.lease_id
    finally:
        harness.check_clean_exit(a)
        harness.check_clean_exit(b)


# ------------------------------------------------------------ lock file removed

def test_a_removed_lock_file_never_gives_two_active_arbiters(tmp_path):
    """An old 'delete stale lock files' job must not cause a split brain."""
    a = harness.Daemon(tmp_path, name="a")
    lock = os.path.join(a.storage, ".arbiter.lock")
    try:
        w = Wire(a.socket)
        lease = w.lock("db")
        os.unlink(lock)
        # a notices at once and locks a new file at the path.
        a.log.wait_for("storage lock file replaced; still holding the lock")
        b = harness.Daemon(tmp_path, name="b", storage=a.storage)
        try:
            assert b.ctl("ping").stdout == "pong standby\n"
            assert a.ctl("ping").stdout == "pong active\n"
            assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
            # The lease held across the replacement is still the holder's:
            # it releases, and the next grant's token is above it.
            w.release(lease.lease_id)
            assert w.lock("db").token > lease.token
        finally:
            harness.check_clean_exit(b)
    finally:
        harness.check_clean_exit(a)


def test_losing_the_lock_file_to_another_arbiter_steps_down(tmp_path):
    """If another arbiter locks a new file first, revoke and stand by."""
    a = harness.Daemon(tmp_path, name="a")
    lock = os.path.join(a.storage, ".arbiter.lock")
    try:
        w = Wire(a.socket)
        w.lock("db")
        # Replace the file by a new one that someone else already holds:
        # take the new file's lock from this test process before a can.
        import fcntl
        tmp = lock + ".new"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK if hasattr(fcntl, "F_OFD_SETLK")
                    else 37, struct_flock())
        os.rename(tmp, lock)
        rev = w.wait_kind("revoked").revoked
        assert rev.reason == pb.STORAGE_LOST
        a.log.wait_for("storage lock lost; stepping down to standby")
        assert a.ctl("ping").stdout == "pong standby\n"
        # When the other holder lets go, a takes over again.
        os.close(fd)
        a.log.wait_for("took over the storage")
        assert a.ctl("ping").stdout == "pong active\n"
    finally:
        harness.check_clean_exit(a)


def struct_flock():
    import struct
    # struct flock on x86_64 Linux: short type, short whence, off_t start,
    # off_t len, pid_t pid (+ padding). F_WRLCK = 1, SEEK_SET = 0.
    return struct.pack("hhqqi4x", 1, 0, 0, 0, 0)
