"""arbiterctl run: usage errors that name what is missing, a refusal from
the arbiter, and a ttl lease whose arbiter stops answering."""
import signal
import subprocess

import harness
from harness import ARBITERCTL, WAIT

EX_USAGE = 64
EXIT_REVOKED = 75


def test_run_usage_errors_say_what_is_wrong(daemon):
    for args, needle in [
            (["run"], "run: missing RESOURCE"),
            (["run", "db"], "run: missing the command to run after 'db'"),
            (["run", "--ttl", "0.05", "db", "--", "true"],
             "--ttl: at least 0.1 seconds"),
            (["run", "-E", "300", "db", "--", "true"],
             "-E: '300' is not an exit code (0-255)"),
            (["run", "--bogus", "db", "--", "true"], "usage:")]:
        r = daemon.ctl(*args)
        assert r.returncode == EX_USAGE, (args, r)
        assert needle in r.stderr, (args, r.stderr)


def test_run_reports_a_lock_the_arbiter_refuses(daemon):
    r = daemon.ctl("run", "x" * 300, "--", "true")
    assert r.returncode == 70, r
    assert "arbiterctl: cannot lock '%s': " % ("x" * 300) in r.stderr, \
        r.stderr


def test_run_ends_the_command_when_no_renewal_is_answered_within_the_ttl(
        daemon, procs):
    p = subprocess.Popen([ARBITERCTL, "-S", daemon.socket, "-t", "0.1", "run",
                          "--ttl", "0.3", "--grace", "5", "db", "--", "sh",
                          "-c", "echo started; exec sleep 600"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True)
    procs.append(p)
    out = harness.LineReader(p.stdout)
    out.wait_for("started")
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        assert p.wait(WAIT) == EXIT_REVOKED
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    err = p.stderr.read().decode()
    assert "lease on 'db' lost (no renewal was answered within its ttl of " \
        "300 ms" in err, err
