"""Operating it safely: config errors, overrides, signals, logs, access
control and limits."""
import json
import os
import signal
import subprocess
import time

import pytest

import harness
from harness import WAIT, Wire, error_of, pb

needs_root = pytest.mark.skipif(os.getuid() != 0,
                                reason="switching uid needs root")


def check_config(tmp_path, text, *args, env=None):
    f = tmp_path / "arbiter.conf"
    f.write_text(text)
    e = dict(os.environ)
    e.update(env or {})
    return harness.run_arbiterd(["-c", str(f), "--check-config"] +
                                list(args), env=e)


@pytest.mark.parametrize("text,message", [
    ("[limits]\nmax_connections = 0\n",
     ":2: limits.max_connections: 0 is out of range (1 to 1000000)"),
    ("[limits]\nmax_connections = lots\n",
     ":2: limits.max_connections: 'lots' is not a whole number"),
    ("[limit]\nmax_connections = 5\n", ":2: [limit]: unknown section"),
    ("[limits]\nmax_conns = 5\n", ":2: limits.max_conns: unknown key"),
    ("[limits]\n  max_connections = 5\n", ":2: line starts with white space"),
    ("[limits]\nmax_connections\n", ":2: syntax error"),
    ("[socket]\nmode = 999\n", ":2: socket.mode: '999' is not an octal"),
    ("[storage]\nhold = sometimes\n",
     ":2: storage.hold: 'sometimes' is not one of: always, on-demand"),
    ("[access]\nallow_uids = no-such-user-xyz\n",
     ":2: access.allow_uids: no user named 'no-such-user-xyz'"),
    ("[log]\nlevel = loud\n", ":2: log.level: 'loud' is not one of"),
    ("; comment\n[limits]\nmax_frame_bytes = 10G\n",
     ":3: limits.max_frame_bytes: 10737418240 is out of range"),
    ("[leases]\n" + "x" * 300 + " = 1\n", ":2: line is longer than"),
    ("max_connections = 5\n", ":1: max_connections: key outside any"),
])
def test_config_errors_name_file_line_and_key(tmp_path, text, message):
    r = check_config(tmp_path, text)
    assert r.returncode == 2
    assert str(tmp_path / "arbiter.conf") + message in r.stderr, r.stderr


def test_help_config_explains_every_key_of_the_reference_config():
    conf = os.path.join(os.path.dirname(__file__), "..", "..", "arbiter.conf")
    r = harness.run_arbiterd(["--help-config"])
    assert r.returncode == 0, r.stderr
    section = None
    for line in open(conf):
        if line.startswith("["):
            section = line.strip()[1:-1]
        elif line[:1].isalpha() and "=" in line:
            key = line.split("=")[0].strip()
            assert "\n%s.%s = " % (section, key) in "\n" + r.stdout, key
    assert "limits.max_connections = 4096\n    number, 1 to 1000000" \
        in r.stdout


def test_a_bad_value_says_what_its_key_is_for(tmp_path):
    r = check_config(tmp_path, "[limits]\nmax_connections = 0\n")
    assert r.returncode == 2
    assert "(1 to 1000000) [client connections at once" in r.stderr, r.stderr


def test_the_reference_config_loads_as_is():
    conf = os.path.join(os.path.dirname(__file__), "..", "..", "arbiter.conf")
    r = harness.run_arbiterd(["-c", conf, "--check-config"])
    assert r.returncode == 0, r.stderr
    assert "max_connections = 4096" in r.stdout


def test_command_line_beats_environment_beats_file(tmp_path):
    text = "[limits]\nmax_connections = 10\nmax_resources = 20\n" \
           "max_frame_bytes = 4096\n"
    r = check_config(tmp_path, text, "-o", "limits.max_connections=30",
                     env={"ARBITER_LIMITS_MAX_CONNECTIONS": "40",
                          "ARBITER_LIMITS_MAX_RESOURCES": "50"})
    assert r.returncode == 0, r.stderr
    assert "max_connections = 30\n" in r.stdout   # -o wins
    assert "max_resources = 50\n" in r.stdout     # env beats file
    assert "max_frame_bytes = 4096\n" in r.stdout  # file beats default
    r = check_config(tmp_path, text, env={"ARBITER_LIMITS_MAX_RESOURCES":
                                          "x"})
    assert "environment ARBITER_LIMITS_MAX_RESOURCES: limits.max_resources" \
        in r.stderr
    r = check_config(tmp_path, text, "-o", "limits.nope=1")
    assert "-o limits.nope=1: unknown key" in r.stderr


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path):
    r = check_config(tmp_path, "[storage]\npath = store\n")
    assert "path = %s/store\n" % tmp_path in r.stdout
    assert "lock_file = %s/store/.arbiter.lock\n" % tmp_path in r.stdout


# ------------------------------------------------------------ signals

def test_sigterm_tells_holders_and_waiters_and_cleans_up(tmp_path):
    d = harness.Daemon(tmp_path)
    a, b = Wire(d.socket), Wire(d.socket)
    la = a.lock("db")
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    d.proc.send_signal(signal.SIGTERM)
    rev = a.wait_kind("revoked").revoked
    assert rev.lease_id == la.lease_id and rev.reason == pb.SHUTDOWN
    assert error_of(b.wait(ib)).code == pb.SHUTTING_DOWN
    assert a.read() is None and b.read() is None  # closed
    assert d.proc.wait(WAIT) == 0
    assert not os.path.exists(d.socket)
    assert (tmp_path / "data" / ".arbiter.lock").read_text() == ""
    d.log.drain()
    assert any("shutting down" in l and "holders=1 waiters=1" in l
               for l in d.log.lines)
    harness.check_clean_exit(d)


def test_sighup_applies_a_good_config_and_refuses_a_bad_one(tmp_path):
    conf = tmp_path / "arbiter.conf"
    conf.write_text("[log]\nlevel = info\n[limits]\nmax_connections = 5\n")
    d = harness.Daemon(tmp_path, config=str(conf))
    try:
        w = Wire(d.socket)
        lease = w.lock("db")
        conf.write_text("[log]\nlevel = debug\n[limits]\n"
                        "max_connections = 1\n")
        d.proc.send_signal(signal.SIGHUP)
        d.log.wait_for("config reloaded")
        # The new limit applies; the lease is untouched.
        r = d.ctl("ping")
        assert r.returncode == 69 and "max_connections" in r.stderr
        w.release(lease.lease_id)
        conf.write_text("[limits]\nmax_connections = nope\n")
        d.proc.send_signal(signal.SIGHUP)
        line = d.log.wait_for("reload refused")
        assert "not a whole number" in line
        conf.write_text("[socket]\nmode = 0600\n")
        seen = len(d.log.lines)
        d.proc.send_signal(signal.SIGHUP)
        line = d.log.wait_for("reload refused", start=seen)
        assert "socket.mode" in line and "restart" in line
        assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
    finally:
        harness.check_clean_exit(d)


def test_json_logs(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "log.format=json"])
    try:
        w = Wire(d.socket)
        w.lock("db")
        w.close()
        d.log.wait_for('"lease revoked"')
    finally:
        harness.check_clean_exit(d)
    for line in d.log.lines:
        rec = json.loads(line)
        assert {"ts", "level", "msg"} <= set(rec)
    assert any(json.loads(l).get("reason") == "disconnect"
               for l in d.log.lines)


# ------------------------------------------------------------ access

@needs_root
def test_a_uid_outside_allow_uids_is_forbidden_and_counted(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "socket.mode=0666",
                                       "-o", "access.allow_uids=root"],
                       sockdir=harness.open_dir())
    try:
        r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup",
                            "--clear-groups", harness.ARBITERCTL, "-S",
                            d.socket, "ping"], capture_output=True,
                           text=True, timeout=WAIT)
        assert r.returncode == 69
        assert "uid 65534" in r.stderr and "access.allow_uids" in r.stderr
        s = json.loads(d.ctl("stats", "--json").stdout)
        assert s["failed_acquisitions"] == 1
        assert d.ctl("ping").returncode == 0  # root is allowed
    finally:
        harness.check_clean_exit(d)


@needs_root
def test_the_socket_mode_and_group_apply(tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "socket.mode=0640",
                                       "-o", "socket.group=nogroup"])
    try:
        st = os.stat(d.socket)
        assert st.st_mode & 0o777 == 0o640
        import grp
        assert grp.getgrgid(st.st_gid).gr_name == "nogroup"
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ limits

def test_each_limit_answers_with_an_error_that_names_it(tmp_path):
    d = harness.Daemon(tmp_path, args=[
        "-o", "limits.max_resources=2",
        "-o", "limits.max_waiters_per_resource=1",
        "-o", "limits.max_connections=4"])
    try:
        a = Wire(d.socket)
        a.lock("r1")
        a.lock("r2")
        e = error_of(a.wait(a.acquire("r3")))
        assert e.code == pb.LIMIT and "limits.max_resources (2)" in e.message
        b = Wire(d.socket)
        i = b.acquire("r1")
        b.wait_kind("queued", i)
        c = Wire(d.socket)
        e = error_of(c.wait(c.acquire("r1")))
        assert e.code == pb.LIMIT
        assert "limits.max_waiters_per_resource (1)" in e.message
        fourth = Wire(d.socket)  # kept open: the 4th connection
        with pytest.raises(AssertionError) as ex:
            Wire(d.socket)
        assert "max_connections" in str(ex.value)
        assert a.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
        fourth.close()
    finally:
        harness.check_clean_exit(d)


def test_max_leases_per_connection(tmp_path):
    d = harness.Daemon(tmp_path, args=[
        "-o", "limits.max_leases_per_connection=2"])
    try:
        a = Wire(d.socket)
        a.lock("r1")
        a.lock("r2")
        e = error_of(a.wait(a.acquire("r3")))
        assert e.code == pb.LIMIT
        assert "limits.max_leases_per_connection (2)" in e.message
    finally:
        harness.check_clean_exit(d)


def test_a_client_that_never_reads_is_dropped_and_others_keep_going(
        tmp_path):
    d = harness.Daemon(tmp_path, args=["-o",
                                       "limits.output_buffer_bytes=65536"])
    try:
        good = Wire(d.socket)
        greedy = Wire(d.socket)
        greedy.lock("db")
        # Ask for big replies, never read them.
        for i in range(40):
            good.lock("res-%03d-%s" % (i, "x" * 200))
        req = pb.Request(id=99, status=pb.StatusRequest()).SerializeToString()
        import struct
        frame = struct.pack(">I", len(req)) + req
        greedy.s.setblocking(False)
        sent = 0
        try:
            for _ in range(20000):
                greedy.s.send(frame)
                sent += 1
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            pass  # full, or already dropped by the daemon
        d.log.wait_for("output buffer over limits.output_buffer_bytes")
        # Its lease died with it; the good client did not notice.
        t0 = time.monotonic()
        assert good.lock("db").token >= 2
        assert time.monotonic() - t0 < 1 * harness.SLOW
        # README: a client that never reads its replies is disconnected.
        assert sent >= 1
        greedy.s.setblocking(True)
        greedy.s.settimeout(WAIT)
        harness.read_until_closed(greedy.s)  # times out if never closed
    finally:
        harness.check_clean_exit(d)
