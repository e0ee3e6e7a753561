"""arbiterctl's own command line: help, version and usage errors, the
socket taken from -c CONFIG, --trust-uid by user name, and `who` and
`status` on a daemon with holders, waiters, a lock-delay and a standby."""
import os
import pwd
import subprocess

import harness
from harness import WAIT, Wire, pb

EX_USAGE = 64


def ctl(*args, env=None):
    e = dict(os.environ)
    e.pop("ARBITER_SOCKET", None)
    e.update(env or {})
    return subprocess.run([harness.ARBITERCTL] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=WAIT, env=e)


def test_help_and_version():
    r = ctl("--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: arbiterctl [-S SOCKET | -c CONFIG]")
    for word in ("run [", "ping", "stats [--json]", "who", "revoke --lease",
                 "stats-reset", "Exit codes:"):
        assert word in r.stdout, word
    assert ctl("help").stdout == r.stdout
    r = ctl("--version")
    assert r.returncode == 0 and r.stdout.startswith("arbiterctl 0."), r


def test_usage_errors_exit_64_with_the_usage():
    for args, needle in [(["--bogus"], "usage: arbiterctl"),
                         ([], "usage: arbiterctl"),
                         (["frobnicate"],
                          "arbiterctl: unknown command 'frobnicate'"),
                         (["-S", "/nonexistent.sock", "revoke"],
                          "usage: arbiterctl revoke --lease ID | --pid PID"),
                         (["-t", "soon", "ping"],
                          "-t: 'soon' is not a number of seconds"),
                         (["--trust-uid", "no-such-user-xyz", "ping"],
                          "--trust-uid: 'no-such-user-xyz' is neither a "
                          "uid nor a user")]:
        r = ctl(*args)
        assert r.returncode == EX_USAGE, (args, r)
        assert needle in r.stderr, (args, r.stderr)


def test_the_socket_comes_from_the_configs_socket_path(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        # Relative to the config file's folder.
        (tmp_path / "rel.conf").write_text("[socket]\npath = a.sock\n")
        r = ctl("-c", str(tmp_path / "rel.conf"), "ping")
        assert r.returncode == 0 and r.stdout == "pong active\n", r
        (tmp_path / "abs.conf").write_text(
            "[log]\nlevel = info\n[socket]\npath = %s\n" % d.socket)
        r = ctl("-c", str(tmp_path / "abs.conf"), "ping")
        assert r.returncode == 0, r
        # A config without socket.path leaves the environment to decide.
        (tmp_path / "none.conf").write_text("[log]\nlevel = info\n")
        r = ctl("-c", str(tmp_path / "none.conf"), "ping",
                env={"ARBITER_SOCKET": d.socket})
        assert r.returncode == 0, r
        r = ctl("-c", str(tmp_path / "missing.conf"), "ping")
        assert r.returncode == EX_USAGE
        assert "cannot read config %s" % (tmp_path / "missing.conf") \
            in r.stderr, r.stderr
    finally:
        harness.check_clean_exit(d)


def test_trust_uid_takes_a_user_name(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
        r = ctl("--trust-uid", me, "--trust-uid", "*", "-S", d.socket,
                "ping")
        assert r.returncode == 0, r
    finally:
        harness.check_clean_exit(d)


def test_who_lists_holders_and_waiters(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        a = Wire(d.socket, name="alpha")
        a.lock("db")
        b = Wire(d.socket, name="beta")
        b.acquire("db")
        b.wait_kind("queued")
        r = d.ctl("who", check=True)
        assert ("db: pid %d (alpha), exclusive, token " % os.getpid()) \
            in r.stdout, r.stdout
        assert "db: 1 waiting\n" in r.stdout, r.stdout
    finally:
        harness.check_clean_exit(d)


def test_status_shows_a_lock_delay_and_a_standby_names_the_holder(tmp_path):
    d = harness.Daemon(tmp_path)
    s = harness.Daemon(tmp_path, name="b", storage=d.storage)
    try:
        a = Wire(d.socket)
        m = a.call(acquire=pb.Acquire(resource=b"db", lock_delay_ms=60000))
        assert m.WhichOneof("kind") == "granted", m
        a.close()  # gone without releasing: the delay applies
        while True:
            r = d.ctl("status", check=True)
            if "lock-delay for" in r.stdout:
                break
        assert "db" in r.stdout and "s more" in r.stdout, r.stdout
        r = s.ctl("status", check=True)
        assert "storage held by: pid=%d " % d.pid in r.stdout, r.stdout
    finally:
        harness.check_clean_exit(s)
        harness.check_clean_exit(d)
