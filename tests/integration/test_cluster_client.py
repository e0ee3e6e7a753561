"""What the clients do with a cluster lease, against a fake cluster-mode
daemon (tests/lib/fake_cluster.py): its deadline (Granted.valid_until_ns,
moved by Extended), the hosts ahead in Queued, the UNAVAILABLE error, and
the cluster parts of status and stats.

The deadline tests compare the time arbiterctl ended, on CLOCK_BOOTTIME
(the clock of the deadline), with the deadline the fake set: never
before it, and within a generous bound after it.
"""
import json
import os
import signal
import subprocess
import time

import pytest

import harness
from harness import ARBITERCTL, WAIT, LineReader
from fake_cluster import FakeCluster

PB_DIR = os.path.join(harness.BUILD, "gen", "python")
# How late after the deadline CMD may end: the timer, SIGTERM, the reap.
LATE = 3 * harness.SLOW
# CMD: says when SIGTERM reaches it, then ends.
TRAPPED = ["sh", "-c", "trap 'echo TERM; exit 3' TERM; sleep 60 & wait"]


def boottime():
    return time.clock_gettime(time.CLOCK_BOOTTIME)


@pytest.fixture
def fake(tmp_path):
    started = []

    def start(*args):
        f = FakeCluster(str(tmp_path), PB_DIR, *args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()


@pytest.fixture
def procs():
    ps = []
    yield ps
    for p in ps:
        harness.kill_tree(p)


def ctl_bg(path, procs, *args):
    e = dict(os.environ)
    e.pop("ARBITER_SOCKET", None)
    p = subprocess.Popen([ARBITERCTL, "-S", path] + list(args),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=e,
                         start_new_session=True)
    p.err = LineReader(p.stderr, p)
    p.out = LineReader(p.stdout, p)
    procs.append(p)
    return p


def ctl(path, *args):
    e = dict(os.environ)
    e.pop("ARBITER_SOCKET", None)
    return subprocess.run([ARBITERCTL, "-S", path] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=WAIT, env=e)


def deadline_of(line):
    """The deadline (CLOCK_BOOTTIME seconds) in a fake's "granted" or
    "extended" line."""
    return int(line.split()[2]) / 1e9


def ended_at_deadline(p, until):
    """Wait for arbiterctl run to end; check it ended as a lost lease, by
    SIGTERM to CMD, not before the deadline until."""
    rc = p.wait(timeout=max(0.0, until - boottime()) + WAIT)
    end = boottime()
    err = "\n".join(p.err.drain())
    assert rc == 75, (rc, err)
    assert end >= until, "ended %.3f s before the deadline" % (until - end)
    assert end < until + LATE, "ended %.3f s after the deadline" % (
        end - until)
    assert "deadline passed" in err, err
    p.out.wait_for("TERM")      # CMD got SIGTERM
    return end


def test_run_signals_cmd_at_the_deadline_of_a_silent_daemon(fake, procs):
    f = fake("--valid-ms", 1000)
    p = ctl_bg(f.path, procs, "run", "-n", "db", "--", *TRAPPED)
    until = deadline_of(f.expect("granted"))
    f.expect("silent")
    ended_at_deadline(p, until)
    # The fake kept its side open throughout: nothing but the clock ended
    # the lease.
    assert f.proc.poll() is None


def test_run_signals_cmd_at_the_deadline_of_a_frozen_daemon(fake, procs):
    f = fake("--valid-ms", 1000)
    p = ctl_bg(f.path, procs, "run", "-n", "db", "--", *TRAPPED)
    until = deadline_of(f.expect("granted"))
    os.kill(f.pid, signal.SIGSTOP)
    try:
        ended_at_deadline(p, until)
    finally:
        os.kill(f.pid, signal.SIGCONT)


def test_each_extended_moves_the_deadline(fake, procs):
    """Extended every 100 ms keeps CMD running well past the first
    deadline; once they stop, CMD is signalled at the last one."""
    f = fake("--valid-ms", 500, "--extend-ms", 100, "--extends", 15)
    p = ctl_bg(f.path, procs, "run", "-v", "-n", "db", "--", *TRAPPED)
    first = deadline_of(f.expect("granted"))
    f.expect("silent", unless="close")      # CMD ran on throughout
    last = deadline_of([l for l in f.lines if l.startswith("extended")][-1])
    assert last > first + 1.0
    end = ended_at_deadline(p, last)
    assert end > first + 1.0
    assert any("cluster lease valid for" in l for l in p.err.drain())


def test_the_waiting_message_shows_hosts_ahead(fake, procs):
    f = fake("--hosts-ahead", 2, "--valid-ms", 60000)
    p = ctl_bg(f.path, procs, "run", "-v", "db", "--", "true")
    p.err.wait_for("position 1, 2 hosts ahead")
    assert p.wait(timeout=WAIT) == 0, p.err.drain()


def test_unavailable_exits_69_with_the_daemons_words(fake):
    f = fake("--fail", "UNAVAILABLE")
    r = ctl(f.path, "run", "-n", "db", "--", "true")
    assert r.returncode == 69, r
    assert "etcd at http://127.0.0.1:1 cannot be reached" in r.stderr, r


def test_status_shows_the_session_and_the_hosts_in_order(fake):
    f = fake()
    r = ctl(f.path, "status")
    assert r.returncode == 0, r
    out = r.stdout
    assert ("cluster: active as host node-a via http://127.0.0.1:2379, "
            "etcd lease 694d7a1c3f6b1e05, valid for 2.500 s") in out, out
    assert "db                   cluster: owned here; 4 hosts" in out, out
    rows = [l.split() for l in out.splitlines() if l.startswith("  node-")]
    assert [r[:3] for r in rows] == [
        ["node-a", "holds", "shared"], ["node-b", "holds", "shared"],
        ["node-c", "waits#1", "exclusive"], ["node-d", "waits#2", "shared"]
    ], out
    # pid, holders, waiters, create_revision
    assert rows[2][3:] == ["303", "0", "3", "57"], out

    j = json.loads(ctl(f.path, "status", "--json").stdout)
    db = j["resources"]["db"]
    assert db["cluster_state"] == "owned"
    assert [h["host_id"] for h in db["hosts"]] == [
        "node-a", "node-b", "node-c", "node-d"]
    assert db["hosts"][2] == {"host_id": "node-c", "pid": 303,
                              "mode": "exclusive", "holding": False,
                              "create_revision": 57, "holders": 0,
                              "waiters": 3}
    assert j["cluster"]["state"] == "active"
    assert j["cluster"]["lease_id"] == 0x694d7a1c3f6b1e05
    assert j["cluster"]["valid_for_ms"] == 2500


def test_stats_show_the_session_and_the_cluster_figures(fake):
    f = fake()
    r = ctl(f.path, "stats")
    assert r.returncode == 0, r
    out = r.stdout
    assert "cluster: active as host node-a" in out, out
    assert "session losses 1" in out, out
    assert "keepalive_rtt" in out and "count 9" in out, out
    assert "cluster lost 3" in out, out          # revoked: ...
    assert "cluster yields 2" in out, out
    assert "cluster_wait" in out and "count 4" in out, out

    j = json.loads(ctl(f.path, "stats", "--json").stdout)
    assert j["cluster"]["state"] == "active"
    assert j["cluster"]["keepalive_rtt_seconds"]["count"] == 9
    # The session is not spread over the top level like the total is.
    assert "state" not in j and "host_id" not in j
    assert j["revoked_cluster_lost"] == 3
    assert j["resources"]["db"]["cluster_yields"] == 2
    assert j["resources"]["db"]["cluster_wait_seconds"]["count"] == 4


def test_a_cluster_lost_revocation_ends_cmd(fake, procs):
    """The daemon's own Revoked (reason CLUSTER_LOST), long before the
    deadline: CMD gets SIGTERM at once, exit 75, in the daemon's words."""
    f = fake("--valid-ms", 60000, "--revoke-ms", 50)
    p = ctl_bg(f.path, procs, "run", "-n", "db", "--", *TRAPPED)
    f.expect("revoked")
    assert p.wait(timeout=WAIT) == 75
    p.out.wait_for("TERM")
    assert any("was not renewed before its deadline" in l
               for l in p.err.drain()), p.err.drain()
