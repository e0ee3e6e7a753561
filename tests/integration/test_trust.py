"""Who answers on the socket, and waits the client bounds itself.

A fake arbiterd run by another uid grants every Acquire, so two `arbiterctl
run` of one exclusive resource would both run: arbiterctl must refuse it
before saying Hello (exit 77, naming the uid), unless told to trust that
uid. The real daemon run by the same uid works as before. The fake's uid is
made with fork() and setuid() in a child of the test, so those cases need
root.
"""
import os
import select
import signal
import socket
import struct
import subprocess
import time

import pytest

import harness
from harness import ARBITERCTL, WAIT, Wire, pb

NOBODY = 65534


def _serve(srv, report):
    """Grant everything to everyone, telling the test of each Hello."""
    conns = {}
    while True:
        ready, _, _ = select.select([srv] + list(conns), [], [])
        for s in ready:
            if s is srv:
                c, _ = srv.accept()
                conns[c] = b""
                continue
            data = s.recv(65536)
            if not data:
                del conns[s]
                s.close()
                continue
            buf = conns[s] + data
            while len(buf) >= 4:
                (n,) = struct.unpack(">I", buf[:4])
                if len(buf) < 4 + n:
                    break
                req = pb.Request()
                req.ParseFromString(buf[4:4 + n])
                buf = buf[4 + n:]
                kind = req.WhichOneof("kind")
                if kind == "hello":
                    os.write(report, b"h")
                    out = pb.ServerMessage(id=req.id, welcome=pb.Welcome(
                        protocol_version=1, server_version="fake"))
                elif kind == "acquire":
                    out = pb.ServerMessage(id=req.id, granted=pb.Granted(
                        lease_id=req.id, token=1,
                        resource=req.acquire.resource.decode()))
                elif kind == "release":
                    out = pb.ServerMessage(id=req.id, released=pb.Released())
                else:
                    out = pb.ServerMessage(id=req.id, pong=pb.Pong())
                data = out.SerializeToString()
                s.sendall(struct.pack(">I", len(data)) + data)
            conns[s] = buf


@pytest.fixture
def fake():
    """A socket served by uid 65534 that grants every lease."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a server run by another uid is made with "
                    "setuid() in a forked child")
    d = harness.open_dir()
    path = os.path.join(d, "fake.sock")
    ready_r, ready_w = os.pipe()
    report_r, report_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(report_r)
            srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            srv.bind(path)
            os.chmod(path, 0o777)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            srv.listen(16)  # SO_PEERCRED names who called listen()
            os.write(ready_w, b"r")
            _serve(srv, report_w)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(report_w)
    try:
        assert os.read(ready_r, 1) == b"r", "the fake server did not start"

        def hellos():
            """How many clients said Hello to it so far."""
            n = 0
            while select.select([report_r], [], [], 0)[0]:
                n += len(os.read(report_r, 4096))
            return n

        yield path, hellos
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(report_r)


def ctl(*args, env=None):
    e = dict(os.environ)
    e.pop("ARBITER_TRUST_UID", None)
    e.update(env or {})
    return subprocess.Popen([ARBITERCTL] + list(args), env=e,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(p):
    try:
        out, err = p.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out, err


def test_two_runs_against_another_uids_server_are_both_refused(fake):
    path, hellos = fake
    cmd = ["run", "-n", "db", "--", "sh", "-c", "echo ran"]
    # Named with -S, and through $ARBITER_SOCKET: the same check.
    a = ctl("-S", path, *cmd)
    b = ctl(*cmd, env={"ARBITER_SOCKET": path})
    for rc, out, err in (finish(a), finish(b)):
        assert rc == 77, (rc, out, err)
        assert "ran" not in out
        assert "uid %d" % NOBODY in err and path in err, err
        assert "ARBITER_TRUST_UID=%d" % NOBODY in err, err
    assert hellos() == 0, "a client said Hello to an untrusted server"


def test_other_commands_are_refused_too(fake):
    path, hellos = fake
    for args in (["ping"], ["status"], ["stats"], ["who"]):
        rc, out, err = finish(ctl("-S", path, *args))
        assert rc == 77, (args, rc, err)
        assert "uid %d" % NOBODY in err
    assert hellos() == 0


def test_a_trusted_uid_is_served(fake):
    """The documented ways to open the check: by uid, by name, and `*`."""
    path, hellos = fake
    cmd = ["-S", path, "run", "-n", "db", "--", "true"]
    for args, env in ((["--trust-uid", str(NOBODY)], None),
                      ([], {"ARBITER_TRUST_UID": "12, %d" % NOBODY}),
                      ([], {"ARBITER_TRUST_UID": "*"})):
        rc, out, err = finish(ctl(*(args + cmd), env=env))
        assert rc == 0, (args, env, err)
    assert hellos() == 3


def test_the_same_uids_daemon_is_trusted(daemon):
    for args in (["ping"], ["run", "-n", "db", "--", "true"], ["status"]):
        rc, out, err = finish(ctl("-S", daemon.socket, *args))
        assert rc == 0, (args, err)


def test_a_run_wait_is_bounded_when_the_daemon_is_stopped(daemon, procs):
    """-w 1 ends within 1 s plus a small margin even though the daemon,
    stopped, never sends its TIMEOUT."""
    holder = Wire(daemon.socket, "holder")
    holder.lock("db")
    t0 = time.monotonic()
    p = daemon.ctl_bg("run", "-v", "-w", "1", "db", "--", "true")
    procs.append(p)
    p.err.wait_for("position 1")  # queued behind the holder
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        try:
            rc = p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert rc == 1, "arbiterctl still waiting after %.1f s: %s" % (
        took, p.err.drain())
    assert took < 1 + 0.6 * harness.SLOW, took
    assert any("timed out" in l for l in p.err.drain()), p.err.drain()
    holder.close()


def test_a_killed_daemon_is_reported_as_lost_and_maybe_dead(daemon, procs):
    p = daemon.ctl_bg("run", "-v", "db", "--", "sleep", "30")
    procs.append(p)
    p.err.wait_for("got 'db'")
    daemon.kill9()
    line = p.err.wait_for("lost")
    assert "may have died" in line and daemon.socket in line, line
    assert "closed it" not in line
