"""arbiterctl run rides out a restart of the daemon while it waits: arbiterd
is killed with SIGKILL and, once dead, started again on the same socket and
storage; a waiting `run` connects again, queues anew and runs its command
within its own -w. --fail-fast and -n keep the old answer: exit 69 at once.
A lease already held is never taken again: its command is stopped (75)."""
import os
import signal
import time

import pytest

import harness
from harness import SLOW, WAIT, Wire


@pytest.fixture
def restartable(tmp_path):
    """A daemon, and a function that starts another one on its socket and
    storage once it is dead; all stopped at the end."""
    made = [harness.Daemon(tmp_path)]

    def again():
        assert made[0].proc.poll() is not None, "the first daemon still runs"
        d = harness.Daemon(tmp_path)
        made.append(d)
        return d
    yield made[0], again
    for d in made:
        harness.check_clean_exit(d)


def queued(p, resource):
    p.err.wait_for("waiting for '%s': position 1" % resource)


def test_waiting_run_is_granted_by_the_restarted_daemon(restartable, procs,
                                                        tmp_path):
    d, again = restartable
    holder = Wire(d.socket, "holder")
    holder.lock("db")
    out = tmp_path / "ran"
    p = d.ctl_bg("run", "-v", "-w", "10", "db", "--", "sh", "-c",
                 'echo "$ARBITER_TOKEN" > %s' % out)
    procs.append(p)
    queued(p, "db")
    d.kill9()
    killed = time.monotonic()
    p.err.wait_for("waiting for it to come back")
    again()
    assert p.wait(WAIT) == 0, p.err.drain()
    print("kill -> command done %.3f s (restart included)" %
          (time.monotonic() - killed))
    assert int(out.read_text()) > 0


def test_fail_fast_and_try_lock_exit_69_at_once(restartable, procs):
    d, again = restartable
    holder = Wire(d.socket, "holder")
    holder.lock("db")
    p = d.ctl_bg("run", "-v", "--fail-fast", "db", "--", "true")
    procs.append(p)
    queued(p, "db")
    d.kill9()
    assert p.wait(WAIT) == 69
    t0 = time.monotonic()
    r = d.ctl("run", "-n", "db", "--", "true")
    assert r.returncode == 69, r.stderr
    assert time.monotonic() - t0 < 0.5 * SLOW
    again()


def test_wait_bound_holds_while_the_daemon_is_away(restartable):
    d, _ = restartable
    d.kill9()
    t0 = time.monotonic()
    r = d.ctl("run", "-w", "1", "db", "--", "true")
    took = time.monotonic() - t0
    assert r.returncode == 69, r.stderr
    assert 1 <= took < 1 + 0.25 * SLOW, took
    assert "was not back within -w" in r.stderr


def test_a_held_lease_is_not_taken_again(restartable, procs, tmp_path):
    d, again = restartable
    p = d.ctl_bg("run", "-v", "--grace", "1", "db", "--", "sh", "-c",
                 "echo ready; exec sleep 600")
    procs.append(p)
    p.out.wait_for("ready")
    d.kill9()
    assert p.wait(WAIT) == 75
    d2 = again()
    free = Wire(d2.socket, "check")
    free.lock("db")                 # nobody holds it on the new daemon
