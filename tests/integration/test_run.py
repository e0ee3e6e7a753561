"""arbiterctl run: the command's whole tree under the lease, lease loss,
the terminal, signals, the command line and the client's own wait bound."""
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

import harness
from harness import ARBITERCTL, SLOW, WAIT, Wire

# A worker for CMD's tree: writes its pid, says ready, then records the
# first SIGINT or SIGTERM it gets and exits 4.
WORKER = r"""
import os, signal, sys
sigs = {signal.SIGINT, signal.SIGTERM}
signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
with open(sys.argv[1], "w") as f:
    f.write(str(os.getpid()))
print("ready", flush=True)
s = signal.sigwait(sigs)
with open(sys.argv[1] + ".sig", "w") as f:
    f.write(signal.Signals(s).name)
sys.exit(4)
"""


def alive(pid):
    """True while pid runs (a zombie counts as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            st = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return st[st.rindex(")") + 2] != "Z"


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def lease_is_free(daemon):
    return daemon.ctl("run", "-n", "db", "--", "true").returncode == 0


# ------------------------------------------------------------ lease loss


@pytest.mark.parametrize("how", ["revoke", "daemon_killed", "ttl_expired"])
def test_lease_loss_ends_the_worker_under_sh(daemon, procs, tmp_path, how):
    pidfile = str(tmp_path / "worker.pid")
    # sh waits on a worker it started: only a signal to the whole process
    # group reaches the worker.
    p = daemon.ctl_bg("run", "--grace", str(10 * SLOW), "--ttl", "0.5",
                      "db", "--", "sh", "-c",
                      'sleep 600 & echo $! > "$1"; echo held; wait',
                      "sh", pidfile)
    procs.append(p)
    p.out.wait_for("held")
    with open(pidfile) as f:
        worker = int(f.read())
    try:
        assert alive(worker)
        if how == "revoke":
            r = daemon.ctl("revoke", "--pid", str(p.pid))
            assert r.returncode == 0, r.stderr
        elif how == "daemon_killed":
            daemon.kill9()
        else:
            # arbiterctl cannot renew while stopped: the ttl runs out,
            # which the next holder's grant shows.
            os.kill(p.pid, signal.SIGSTOP)
            w = Wire(daemon.socket, "next")
            w.lock("db")
            os.kill(p.pid, signal.SIGCONT)
        assert p.wait(WAIT) == 75
        p.err.wait_for("lost (")
        # arbiterctl exits once the group is empty: the worker is gone.
        assert not alive(worker), "the worker outlived the lease"
    finally:
        kill_quietly(worker)


def test_a_command_that_ends_on_sigterm_ends_run_before_the_grace(
        daemon, procs):
    grace = 30 * SLOW
    p = daemon.ctl_bg("run", "--grace", str(grace), "db", "--", "sh", "-c",
                      "echo held; exec sleep 600")
    procs.append(p)
    p.out.wait_for("held")
    t0 = time.monotonic()
    assert daemon.ctl("revoke", "--pid", str(p.pid)).returncode == 0
    assert p.wait(grace / 2) == 75
    # Prompt: woken by the command's end, not by the grace running out.
    assert time.monotonic() - t0 < 2 * SLOW
    assert lease_is_free(daemon)


def test_a_command_ignoring_sigterm_gets_sigkill_at_the_grace(daemon, procs):
    grace = 1.0
    p = daemon.ctl_bg("run", "--grace", str(grace), "db", "--", "sh", "-c",
                      "trap '' TERM; echo held $$; exec sleep 600")
    procs.append(p)
    cmd = int(p.out.wait_for("held").split()[1])
    try:
        t0 = time.monotonic()
        assert daemon.ctl("revoke", "--pid", str(p.pid)).returncode == 0
        assert p.wait(WAIT) == 75
        took = time.monotonic() - t0
        assert grace <= took < grace + 2 * SLOW, took
        p.err.wait_for("sending SIGKILL")
        assert not alive(cmd), "the command survived SIGKILL"
    finally:
        kill_quietly(cmd)


# ------------------------------------------------------------ signals


def test_sigterm_to_arbiterctl_reaches_the_whole_tree(daemon, procs,
                                                     tmp_path):
    pidfile = str(tmp_path / "worker.pid")
    p = daemon.ctl_bg("run", "db", "--", "sh", "-c",
                      '"$1" -c "$2" "$3"; exit $?', "sh", sys.executable,
                      WORKER, pidfile)
    procs.append(p)
    p.out.wait_for("ready")
    with open(pidfile) as f:
        worker = int(f.read())
    try:
        os.kill(p.pid, signal.SIGTERM)  # arbiterctl only, no terminal
        # arbiterctl passes it on to sh and the worker, and exits with
        # the command's status: sh's, killed by it.
        assert p.wait(WAIT) == 128 + signal.SIGTERM
        with open(pidfile + ".sig") as f:
            assert f.read() == "SIGTERM"
        assert lease_is_free(daemon)
    finally:
        kill_quietly(worker)


def read_pty(fd, until=None, timeout=WAIT):
    """Read a pty master until `until` shows up, or to its end."""
    out = b""
    deadline = time.monotonic() + timeout
    while until is None or until not in out:
        left = deadline - time.monotonic()
        assert left > 0, "no %r from the terminal; got %r" % (until, out)
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the last slave end closed
            chunk = b""
        if not chunk:
            assert until is None, "terminal closed; got %r" % out
            break
        out += chunk
    return out


def test_ctrl_c_on_the_terminal_reaches_the_whole_tree(daemon, tmp_path):
    pidfile = str(tmp_path / "worker.pid")
    # sh runs the worker in the foreground and carries on after it.
    script = ('trap "echo sh-got-int" INT; "$1" -c "$2" "$3"; '
              'echo "worker-exit-$?"; exit 5')
    argv = [ARBITERCTL, "-S", daemon.socket, "run", "db", "--", "sh", "-c",
            script, "sh", sys.executable, WORKER, pidfile]
    pid, master = pty.fork()
    if pid == 0:  # in a new session, the pty its controlling terminal
        try:
            os.execve(ARBITERCTL, argv, daemon.env())
        finally:
            os._exit(127)
    worker = None
    try:
        read_pty(master, b"ready")
        with open(pidfile) as f:
            worker = int(f.read())
        os.write(master, b"\x03")  # the terminal's interrupt character
        out = read_pty(master)
        _, status = os.waitpid(pid, 0)
        pid = None
        with open(pidfile + ".sig") as f:
            assert f.read() == "SIGINT"
        assert b"sh-got-int" in out and b"worker-exit-4" in out, out
        # arbiterctl itself was not interrupted: it waited for the
        # command and took its status.
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 5, status
    finally:
        if pid is not None:
            kill_quietly(pid)
            os.waitpid(pid, 0)
        if worker is not None:
            kill_quietly(worker)
        os.close(master)


# ------------------------------------------------------------ command line


def test_options_before_double_dash_are_options(daemon):
    r = daemon.ctl("run", "-x", "db", "-v", "--", "true")
    assert r.returncode == 0, r.stderr
    assert "got 'db'" in r.stderr  # -v was taken as the option
    r = daemon.ctl("run", "db", "-E", "9", "--", "sh", "-c", "exit 3")
    assert r.returncode == 3, r.stderr
    r = daemon.ctl("run", "db", "--", "-v")
    # After '--', '-v' is the command (127, or 126 when a folder in PATH
    # cannot be searched).
    assert r.returncode in (126, 127) and "cannot run -v" in r.stderr
    r = daemon.ctl("run", "db", "-v", "stray", "--", "true")
    assert r.returncode == 64
    assert "unexpected 'stray' between 'db' and '--'" in r.stderr
    # The flock(1) form: CMD right after RESOURCE keeps its own '--'.
    r = daemon.ctl("run", "db", "echo", "a", "--", "b")
    assert r.returncode == 0 and r.stdout == "a -- b\n", r.stderr


# ------------------------------------------------------------ -w bound


def test_wait_bound_holds_when_the_daemon_stops_while_queued(daemon, procs):
    holder = Wire(daemon.socket, "holder")
    holder.lock("db")
    t0 = time.monotonic()
    p = daemon.ctl_bg("run", "-v", "-w", "2", "db", "--", "true")
    procs.append(p)
    p.err.wait_for("waiting for 'db': position 1, held by pid")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        rc = p.wait(WAIT)
        took = time.monotonic() - t0
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert rc == 1
    assert 2 <= took < 2 + 0.25 * SLOW, took
    p.err.wait_for("timed out after")
    p.err.wait_for("the request was withdrawn")
    # The withdrawn request holds nothing once the daemon runs again.
    holder.close()
    assert lease_is_free(daemon)


def test_wait_bound_holds_when_the_daemon_never_answers_hello(daemon):
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = daemon.ctl("run", "-w", "2", "db", "--", "true")
        took = time.monotonic() - t0
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert took < 2 + 0.25 * SLOW, took
    assert r.returncode == 69 and "no answer from the arbiter" in r.stderr


def test_a_short_wait_bound_does_not_make_a_busy_arbiter_a_lost_lease(
        daemon, procs, tmp_path):
    # -w 0.2 bounds every answer to 250 ms; a renewal that the stalled
    # daemon answers late is retried while the 3 s ttl still holds.
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    p = daemon.ctl_bg("run", "-w", "0.2", "--ttl", "3", "db", "--", "sh",
                      "-c", 'echo held; read x < "$1"; echo done', "sh",
                      fifo)
    procs.append(p)
    p.out.wait_for("held")
    os.kill(daemon.pid, signal.SIGSTOP)
    try:
        time.sleep(1.6)  # the stall under test spans the 1 s renewal
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    try:  # not blocking: with the command gone there is no reader
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        pytest.fail("the command was stopped: %s" % "\n".join(
            p.err.drain()))
    os.write(fd, b"go\n")
    os.close(fd)
    p.out.wait_for("done")
    assert p.wait(WAIT) == 0, "\n".join(p.err.drain())
