"""The files in the storage folder against a hostile neighbour: who may
open the lock file, FIFOs, links and folders where files should be, a
deleted state file, the lock-delay after an unclean end, and a second
daemon beside a stopped one."""
import ctypes
import fcntl
import os
import resource
import signal
import socket
import stat
import struct
import subprocess
import time

import pytest

import harness
from harness import grant_many, SLOW, WAIT, Wire, error_of, pb

needs_root = pytest.mark.skipif(os.getuid() != 0,
                                reason="switching uid needs root")

# How long a daemon may take to start, refuse, or stop in these tests.
BOUND = 5 * SLOW

F_OFD_GETLK, F_OFD_SETLK = 36, 37


def flock(kind):
    """struct flock on x86_64 Linux: short type, short whence, off_t start,
    off_t len, pid_t pid (+ padding)."""
    return struct.pack("hhqqi4x", kind, 0, 0, 0, 0)


def can_lock(path):
    """Can this process take the write lock on path now?"""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, flock(fcntl.F_WRLCK))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def refused_at_start(tmp_path, *needles, args=()):
    """Start a daemon that must exit non-zero within BOUND, logging every
    needle; kill it if it hangs."""
    d = harness.Daemon(tmp_path, wait_ready=False, args=list(args))
    try:
        rc = d.proc.wait(BOUND)
    except subprocess.TimeoutExpired:
        d.kill9()
        pytest.fail("the daemon hung at start with:\n" +
                    "\n".join(d.log.drain()))
    msg = "\n".join(d.log.drain())
    assert rc != 0, msg
    for n in needles:
        assert n in msg, msg
    return msg


def stop_within(d, bound=BOUND):
    """SIGTERM; the daemon must exit 0 within bound."""
    d.proc.send_signal(signal.SIGTERM)
    try:
        rc = d.proc.wait(bound)
    except subprocess.TimeoutExpired:
        d.kill9()
        pytest.fail("SIGTERM did not stop the daemon within %ss:\n%s" %
                    (bound, "\n".join(d.log.drain()[-20:])))
    assert rc == 0, "\n".join(d.log.drain()[-20:])


def exchange(a, b):
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE), so the
    daemon never sees the name empty in between."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(),
                      rename_exchange) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def as_nobody(fn):
    """Run fn() in a forked child as uid/gid nobody (65534); its return
    value (a small int) comes back as the exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os._exit(fn())
        except BaseException:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# ------------------------------------------------------------ lock file mode

def test_a_new_lock_file_and_state_file_are_private(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        Wire(d.socket).lock("db")
        assert mode_of(os.path.join(d.storage, ".arbiter.lock")) == 0o600
        assert mode_of(os.path.join(d.storage, ".arbiter.state")) == 0o600
    finally:
        harness.check_clean_exit(d)


def test_an_open_lock_file_is_tightened_at_start(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    lock = data / ".arbiter.lock"
    lock.write_bytes(b"")
    os.chmod(lock, 0o644)
    d = harness.Daemon(tmp_path)
    try:
        assert mode_of(lock) == 0o600
        line = d.log.wait_for("tightened storage lock file")
        assert str(lock) in line and "0644 -> 0600" in line
        assert Wire(d.socket).lock("db").token > 0
    finally:
        harness.check_clean_exit(d)


def test_a_storage_folder_everyone_may_write_is_warned_about(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    os.chmod(data, 0o1777)
    lock = data / ".arbiter.lock"
    lock.write_bytes(b"")
    os.chmod(lock, 0o644)
    d = harness.Daemon(tmp_path)
    try:
        line = d.log.wait_for("writable by every user")
        assert "tightened" in line and "chmod o-w %s" % data in line
    finally:
        harness.check_clean_exit(d)


def test_storage_group_gives_the_lock_file_to_that_group(tmp_path):
    gid = os.getgid()  # a group this user is surely in
    data = tmp_path / "data"
    data.mkdir()
    lock = data / ".arbiter.lock"
    lock.write_bytes(b"")
    os.chmod(lock, 0o666)
    d = harness.Daemon(tmp_path, args=["-o", "storage.group=%d" % gid])
    try:
        Wire(d.socket).lock("db")
        st = os.lstat(lock)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid
        state = os.lstat(data / ".arbiter.state")
        assert stat.S_IMODE(state.st_mode) == 0o640 and state.st_gid == gid
    finally:
        harness.check_clean_exit(d)


def test_an_unknown_storage_group_is_refused(tmp_path):
    refused_at_start(tmp_path, "storage.group", "no-such-group-xyz",
                     args=["-o", "storage.group=no-such-group-xyz"])


@needs_root
def test_another_user_cannot_open_the_lock_file_to_read_lock_it(tmp_path):
    top = harness.open_dir()
    data = os.path.join(top, "data")
    os.mkdir(data, 0o755)
    lock = os.path.join(data, ".arbiter.lock")
    with open(lock, "wb"):
        pass
    os.chmod(lock, 0o644)

    def read_lock():
        try:
            fd = os.open(lock, os.O_RDONLY)
        except PermissionError:
            return 13
        fcntl.fcntl(fd, F_OFD_SETLK, flock(fcntl.F_RDLCK))
        return 0

    # The hostile case before the fix: anyone could open and read-lock it.
    assert as_nobody(read_lock) == 0
    d = harness.Daemon(top, storage=data)
    try:
        assert d.ctl("ping").stdout == "pong active\n"
        assert as_nobody(read_lock) == 13
    finally:
        harness.check_clean_exit(d)


@needs_root
@pytest.mark.parametrize("fix", ["reader-ends", "file-removed"])
def test_a_read_lock_taken_before_the_fix_is_named_and_outlived(tmp_path,
                                                                fix):
    """A user who opened the old 0644 file before the daemon tightened it
    keeps a read lock: the daemon waits as a standby, says what holds it,
    and takes over the moment that process lets go (the kernel wakes it),
    or the moment the file is removed (no arbiter would ever free it)."""
    top = harness.open_dir()
    data = os.path.join(top, "data")
    os.mkdir(data, 0o755)
    lock = os.path.join(data, ".arbiter.lock")
    with open(lock, "wb"):
        pass
    os.chmod(lock, 0o644)
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            os.close(hold_w)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            fd = os.open(lock, os.O_RDONLY)
            fcntl.fcntl(fd, F_OFD_SETLK, flock(fcntl.F_RDLCK))
            os.write(ready_w, b"x")
            os.read(hold_r, 1)  # hold until the test closes its end
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    d = None
    try:
        assert os.read(ready_r, 1) == b"x"
        d = harness.Daemon(top, storage=data)
        line = d.log.wait_for("standby")
        assert "read-locked by a process that is not an arbiter" in line
        assert mode_of(lock) == 0o600
        if fix == "file-removed":
            os.unlink(lock)
            d.log.wait_for("not an arbiter read-locked the old one")
        else:
            os.close(hold_w)
            hold_w = None
            os.waitpid(pid, 0)
            pid = None
        d.log.wait_for("took over the storage")
        assert Wire(d.socket).lock("db").token > 0
        assert d.ctl("ping").stdout == "pong active\n"
    finally:
        if hold_w is not None:
            os.close(hold_w)
        if pid is not None:
            os.waitpid(pid, 0)
        os.close(ready_r)
        if d is not None:
            harness.check_clean_exit(d)


# ------------------------------------------------------------ not a file

@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
def test_a_lock_path_that_is_not_a_file_is_refused_at_start(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    lock = data / ".arbiter.lock"
    words = {"folder": "a folder", "fifo": "a FIFO",
             "symlink": "symbolic link"}[kind]
    if kind == "folder":
        lock.mkdir()
    elif kind == "fifo":
        os.mkfifo(lock)
    else:
        (tmp_path / "elsewhere").write_bytes(b"")
        os.symlink(tmp_path / "elsewhere", lock)
    refused_at_start(tmp_path, str(lock), words, "remove it")


@pytest.mark.parametrize("kind", ["folder", "fifo", "symlink"])
def test_a_state_path_that_is_not_a_file_is_refused_at_start(tmp_path, kind):
    data = tmp_path / "data"
    data.mkdir()
    state = data / ".arbiter.state"
    if kind == "folder":
        state.mkdir()
    elif kind == "fifo":
        os.mkfifo(state)
    else:
        os.symlink(tmp_path / "elsewhere", state)
    refused_at_start(tmp_path, str(state), "remove it", "--reset-state",
                     "symbolic link" if kind == "symlink"
                     else "not a regular file")


def test_a_fifo_at_the_state_path_is_replaced_with_reset_state(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    state = data / ".arbiter.state"
    os.mkfifo(state)
    d = harness.Daemon(tmp_path, args=["--reset-state"])
    try:
        assert Wire(d.socket).lock("db").token > time.time() * 1e6 - 60e6
        assert stat.S_ISREG(os.lstat(state).st_mode)
    finally:
        harness.check_clean_exit(d)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_temp_file_name_taken_stops_neither_grants_nor_shutdown(tmp_path,
                                                                  kind):
    d = harness.Daemon(tmp_path)
    lock = os.path.join(d.storage, ".arbiter.lock")
    tmp = os.path.join(d.storage, ".arbiter.state.tmp")
    try:
        w = Wire(d.socket)
        first = w.lock("db")
        w.release(first.lease_id)
        if kind == "fifo":
            os.mkfifo(tmp)
        else:
            os.mkdir(tmp)
        # 25,000 grants cross two token blocks, each reserved through the
        # temp file's name.
        assert grant_many(w, 25000) == (25000, first.token + 25000)
        if kind == "fifo":
            # Atomically: the background write may have its own temp
            # file there right now.
            os.mkfifo(tmp + ".f")
            os.rename(tmp + ".f", tmp)
        stop_within(d)
        assert not [n for n in os.listdir(d.storage)
                    if n.startswith(".arbiter.state.tmp.")]
        assert can_lock(lock)  # the storage lock was given back
        d2 = harness.Daemon(tmp_path)
        try:
            assert Wire(d2.socket).lock("db").token > first.token + 25000
        finally:
            harness.check_clean_exit(d2)
    finally:
        harness.check_clean_exit(d)


def test_a_fifo_put_at_the_state_path_while_running_is_replaced(tmp_path):
    d = harness.Daemon(tmp_path)
    state = os.path.join(d.storage, ".arbiter.state")
    lock = os.path.join(d.storage, ".arbiter.lock")
    try:
        w = Wire(d.socket)
        first = w.lock("db")
        w.release(first.lease_id)
        os.unlink(state)
        os.mkfifo(state)
        assert grant_many(w, 25000) == (25000, first.token + 25000)
        os.unlink(state)
        os.mkfifo(state)
        stop_within(d)
        assert can_lock(lock)
        assert stat.S_ISREG(os.lstat(state).st_mode)
    finally:
        harness.check_clean_exit(d)


def test_sigterm_finishes_with_a_fifo_at_the_temp_file(tmp_path):
    d = harness.Daemon(tmp_path)
    lock = os.path.join(d.storage, ".arbiter.lock")
    try:
        Wire(d.socket).lock("db")
        os.mkfifo(os.path.join(d.storage, ".arbiter.state.tmp"))
        stop_within(d)
        assert can_lock(lock)
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ lock path broken while active

@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_a_lock_path_broken_while_active_is_retried_until_fixed(tmp_path,
                                                                 kind):
    d = harness.Daemon(tmp_path)
    lock = os.path.join(d.storage, ".arbiter.lock")
    try:
        w = Wire(d.socket)
        before = w.lock("db")
        if kind == "symlink":
            os.symlink(os.path.join(str(tmp_path), "elsewhere"), lock + ".l")
            os.rename(lock + ".l", lock)
        else:
            os.mkdir(lock + ".d")
            exchange(lock, lock + ".d")
        line = d.log.wait_for("cannot take the storage lock; retrying")
        assert lock in line and "remove it" in line
        assert w.wait_kind("revoked").revoked.reason == pb.STORAGE_LOST
        other = Wire(d.socket)
        e = error_of(other.wait(other.acquire("x", timeout_ms=0)))
        assert e.code == pb.WOULD_BLOCK and "cannot be used" in e.message
        waiting = other.acquire("db")
        # Fix the path: the daemon is woken and takes the lock again.
        if kind == "symlink":
            os.unlink(lock)
        else:
            os.rmdir(lock)
        d.log.wait_for("took over the storage")
        assert other.granted(waiting).token > before.token
        assert d.ctl("ping").stdout == "pong active\n"
    finally:
        harness.check_clean_exit(d)


def test_a_removed_lock_file_keeps_the_active_active_and_the_standby_waiting(
        tmp_path):
    """The active locks the new file before it lets the old one go, so the
    standby blocked on the old one never races it for the new one."""
    a = harness.Daemon(tmp_path, name="a")
    b = harness.Daemon(tmp_path, name="b", storage=a.storage)
    lock = os.path.join(a.storage, ".arbiter.lock")
    try:
        w = Wire(a.socket)
        w.lock("db")
        for _ in range(5):
            start_a, start_b = len(a.log.lines), len(b.log.lines)
            os.unlink(lock)
            a.log.wait_for("still holding the lock", start=start_a)
            b.log.wait_for("replaced while waiting; waiting on the new one",
                           start=start_b)
            assert a.ctl("ping").stdout == "pong active\n"
            assert b.ctl("ping").stdout == "pong standby\n"
        assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
        assert not [m for m in w.pending if m.WhichOneof("kind") == "revoked"]
    finally:
        harness.check_clean_exit(b)
        harness.check_clean_exit(a)


# ------------------------------------------------------------ tokens

@pytest.mark.parametrize("end", ["clean", "kill9"])
def test_a_deleted_state_file_never_sends_tokens_backwards(tmp_path, end):
    d = harness.Daemon(tmp_path)
    w = Wire(d.socket)
    last = 0
    for _ in range(3):
        lease = w.lock("db")
        last = lease.token
        w.release(lease.lease_id)
    if end == "clean":
        harness.check_clean_exit(d)
    else:
        d.kill9()
    os.unlink(os.path.join(d.storage, ".arbiter.state"))
    d2 = harness.Daemon(tmp_path)
    try:
        assert Wire(d2.socket).lock("db").token > max(last,
                                                      time.time() * 1e6 - 60e6)
        d2.log.wait_for("state file missing on a storage used before")
    finally:
        harness.check_clean_exit(d2)


# ------------------------------------------------------------ lock-delay after an unclean end

DELAY_MS = 1500


def first_grant_after(tmp_path, delay_ms=DELAY_MS):
    """Start a daemon with lock_delay_ms and time its first grant from the
    daemon's start; a try-lock meanwhile must fail and say why."""
    t0 = time.monotonic()
    d = harness.Daemon(tmp_path, args=["-o", "leases.lock_delay_ms=%d" %
                                       delay_ms])
    try:
        w = Wire(d.socket)
        took = None
        m = w.wait(w.acquire("db", timeout_ms=0))
        if m.WhichOneof("kind") == "granted":
            took = time.monotonic() - t0
        else:
            assert "lock-delay" in error_of(m).message
            w.granted(w.acquire("db"))
            took = time.monotonic() - t0
        return took, d
    except BaseException:
        harness.check_clean_exit(d)
        raise


def test_after_a_kill9_the_first_grant_waits_the_lock_delay(tmp_path):
    d = harness.Daemon(tmp_path)
    Wire(d.socket).lock("db")
    d.kill9()
    took, d2 = first_grant_after(tmp_path)
    try:
        d2.log.wait_for("did not end cleanly")
        assert DELAY_MS / 1000 <= took < DELAY_MS / 1000 + WAIT
    finally:
        harness.check_clean_exit(d2)


def test_a_standby_taking_over_from_a_dead_active_waits_the_lock_delay(
        tmp_path):
    args = ["-o", "leases.lock_delay_ms=%d" % DELAY_MS]
    a = harness.Daemon(tmp_path, name="a")
    b = harness.Daemon(tmp_path, name="b", storage=a.storage, args=args)
    try:
        Wire(a.socket).lock("db")
        w = Wire(b.socket)
        waiting = w.acquire("db")
        w.wait_kind("queued", waiting)
        a.kill9()
        t0 = time.monotonic()
        b.log.wait_for("took over the storage")
        w.granted(waiting)
        assert time.monotonic() - t0 >= DELAY_MS / 1000 - 0.05
    finally:
        harness.check_clean_exit(b)


@pytest.mark.parametrize("stats", ["yes", "no"])
def test_a_shutdown_with_leases_held_counts_as_unclean(tmp_path, stats):
    d = harness.Daemon(tmp_path, args=["-o", "stats.enabled=" + stats])
    w = Wire(d.socket)
    w.lock("db")
    harness.check_clean_exit(d)
    took, d2 = first_grant_after(tmp_path)
    try:
        assert took >= DELAY_MS / 1000
    finally:
        harness.check_clean_exit(d2)


def test_after_a_clean_shutdown_the_first_grant_is_not_delayed(tmp_path):
    d = harness.Daemon(tmp_path)
    w = Wire(d.socket)
    w.release(w.lock("db").lease_id)
    harness.check_clean_exit(d)
    took, d2 = first_grant_after(tmp_path, delay_ms=10000)
    try:
        assert took < 5 * SLOW
        assert not [l for l in d2.log.drain() if "did not end cleanly" in l]
    finally:
        harness.check_clean_exit(d2)


# ------------------------------------------------------------ the config file

def test_a_fifo_as_the_config_file_is_refused_at_start(tmp_path):
    conf = tmp_path / "arbiter.conf"
    os.mkfifo(conf)
    refused_at_start(tmp_path, str(conf), "not a regular file",
                     args=["-c", str(conf)])


def test_a_reload_from_a_config_file_turned_fifo_is_refused(tmp_path):
    conf = tmp_path / "arbiter.conf"
    conf.write_text("[log]\nlevel = debug\n")
    d = harness.Daemon(tmp_path, config=str(conf))
    try:
        os.unlink(conf)
        os.mkfifo(conf)
        d.proc.send_signal(signal.SIGHUP)
        line = d.log.wait_for("reload refused")
        assert "not a regular file" in line
        assert d.ctl("ping", timeout=BOUND).stdout == "pong active\n"
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ a second daemon beside a stopped one

def test_a_second_daemon_beside_a_stopped_one_with_a_full_queue_says_so(
        tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip("needs 4096 descriptors to fill a listen queue; the "
                    "hard limit is %d" % hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    a = harness.Daemon(tmp_path, name="a")
    socks = []
    try:
        a.proc.send_signal(signal.SIGSTOP)
        while len(socks) < 4000:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            try:
                s.connect(a.socket)
            except BlockingIOError:
                break
        else:
            pytest.fail("the listen queue never filled")
        b = harness.Daemon(tmp_path, name="b", wait_ready=False,
                           storage=os.path.join(str(tmp_path), "data2"),
                           args=["-S", a.socket])
        try:
            rc = b.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            b.kill9()
            pytest.fail("the second daemon hung probing the socket:\n" +
                        "\n".join(b.log.drain()))
        msg = "\n".join(b.log.drain())
        assert rc != 0 and "accepts no connection" in msg, msg
        assert a.socket in msg and "SIGSTOP" in msg
        assert os.path.exists(a.socket)  # not taken from the stopped one
    finally:
        for s in socks:
            s.close()
        a.proc.send_signal(signal.SIGCONT)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        harness.check_clean_exit(a)


def test_a_socket_that_cannot_be_probed_is_never_replaced(tmp_path):
    """As root the probe connects (and finds it alive); as another user a
    mode-0 socket refuses the probe: neither may be taken for dead."""
    path = os.path.join(str(tmp_path), "a.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(8)
        os.chmod(path, 0)
        refused_at_start(tmp_path, path, "socket.path")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        listener.close()
