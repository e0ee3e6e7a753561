"""Fixtures for the Python client's tests: a real arbiterd per module (or per
test, where the test stops it), started in a private temporary folder with
its own socket and storage.

The daemon comes from $ARBITER_BUILD (an absolute build folder, as `make`
passes it), else the repository's build/ folder. Readiness is read from the
daemon's own log line (msg="arbiter ready") on stderr, never guessed with a
sleep. Everything a test starts is stopped (SIGTERM, then SIGKILL) at the
end.

arbiter_client is imported from wherever Python finds it (the venv the
Makefile recipe installs it into). When it is not installed, the tests use
the source folder, generating arbiter_pb2.py there with protoc first (that
path is git-ignored).
"""
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import ctypes

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.dirname(HERE)
REPO = os.path.dirname(os.path.dirname(PYDIR))
BUILD = os.path.abspath(os.environ.get("ARBITER_BUILD") or
                        os.path.join(REPO, "build"))
ARBITERD = os.path.join(BUILD, "arbiterd")
ARBITERCTL = os.path.join(BUILD, "arbiterctl")
PROTO = os.path.join(REPO, "proto", "arbiter.proto")
WAIT = 20.0  # bound for anything a test waits on (never a sleep)

try:
    import arbiter_client  # noqa: F401
except ImportError:
    gen = os.path.join(PYDIR, "arbiter_client", "arbiter_pb2.py")
    if not os.path.exists(gen) or os.path.getmtime(gen) < os.path.getmtime(
            PROTO):
        subprocess.check_call(["protoc", "--proto_path=" +
                               os.path.dirname(PROTO), "--python_out=" +
                               os.path.join(PYDIR, "arbiter_client"), PROTO])
    sys.path.insert(0, PYDIR)
    import arbiter_client  # noqa: F401,E402


def pytest_report_header(config):
    return ["arbiter_client from %s" %
            os.path.dirname(arbiter_client.__file__),
            "arbiterd from %s" % ARBITERD]


def until(fn, what="the condition", timeout=WAIT):
    """Call fn until it returns something true (each call is a round trip
    to the daemon, so this waits on the daemon, never on a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting for %s" % what)


def client_env():
    """Environment for child Python processes: they import the same
    arbiter_client as the tests."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(arbiter_client.__file__))
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                        if p])
    env.pop("ARBITER_SOCKET", None)
    return env


def in_child_as(uid, fn, *args):
    """fn(*args) in a forked child that switched to uid (and gid uid, no
    supplementary groups); returns what it returned, a str. Nothing is
    executed from the clone as that uid, so this works from a clone in any
    folder, even a 0700 home. An exception in the child fails the test."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            out = fn(*args)
            code = 0
        except BaseException as exc:
            out = "child as uid %d failed: %r" % (uid, exc)
        try:
            os.write(w, out.encode())
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    return out


def _die_with_parent():
    """In the child before exec: get SIGKILL when the test process dies,
    so a killed test run never leaves a daemon behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PDEATHSIG
    except Exception:
        pass


class Daemon:
    """One arbiterd with its own socket and storage in a fresh short
    folder (Unix socket paths are limited to 107 bytes)."""

    def __init__(self, args=(), mode=0o700, dir=None):
        """dir: the folder of an earlier Daemon, to start a daemon again on
        its socket and storage (after that one died)."""
        if not os.access(ARBITERD, os.X_OK):
            pytest.fail("no arbiterd at %s: build it (make all BUILD=...) and "
                        "set ARBITER_BUILD to the absolute build folder" %
                        ARBITERD)
        if dir is None:
            dir = tempfile.mkdtemp(prefix="arbpy-", dir="/tmp")
            os.chmod(dir, mode)
        self.dir = dir
        self.socket = os.path.join(self.dir, "a.sock")
        self.storage = os.path.join(self.dir, "data")
        cmd = [ARBITERD, "-S", self.socket, "-s", self.storage,
               "-o", "log.level=debug"] + list(args)
        env = dict(os.environ)
        env.pop("ARBITER_SOCKET", None)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env,
                                     start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.pid = self.proc.pid
        self.lines = []
        self._cv = threading.Condition()
        self._eof = False
        try:
            self._read_until('msg="arbiter ready"')
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self._drain = threading.Thread(target=self._drain_loop, daemon=True)
        self._drain.start()

    def _read_until(self, needle):
        """Read stderr directly (before the drain thread exists)."""
        fd = self.proc.stderr.fileno()
        buf = b""
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("arbiterd never said %r:\n%s" %
                                   (needle, "\n".join(self.lines)))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError("arbiterd exited (%s) before %r:\n%s" % (
                    self.proc.wait(), needle, "\n".join(self.lines)))
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                self.lines.append(line.decode("utf-8", "replace"))
                if needle in self.lines[-1]:
                    self._rest = buf
                    return

    def _drain_loop(self):
        buf = self._rest
        f = self.proc.stderr
        while True:
            chunk = os.read(f.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            with self._cv:
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self.lines.append(line.decode("utf-8", "replace"))
                self._cv.notify_all()
        with self._cv:
            self._eof = True
            self._cv.notify_all()

    def wait_log(self, needle, timeout=WAIT):
        """Block until a log line contains needle; return it."""
        deadline = time.monotonic() + timeout
        i = 0
        with self._cv:
            while True:
                while i < len(self.lines):
                    if needle in self.lines[i]:
                        return self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise TimeoutError("no log line with %r:\n%s" %
                                       (needle, "\n".join(self.lines[-30:])))
                self._cv.wait(left)

    def ctl(self, *args, check=True):
        r = subprocess.run([ARBITERCTL, "-S", self.socket] + list(args),
                           stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=WAIT)
        if check and r.returncode != 0:
            raise AssertionError("arbiterctl %s: %d %s %s" %
                                 (args, r.returncode, r.stdout, r.stderr))
        return r

    def stop(self, sig=signal.SIGTERM):
        """Stop the daemon; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        d = getattr(self, "_drain", None)
        if d is not None:
            d.join(WAIT)
        self.proc.stderr.close()
        return self.proc.returncode

    def cleanup(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop(signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon():
    """A daemon shared by the tests of one module (tests use their own
    resource names)."""
    d = Daemon()
    yield d
    assert d.stop() == 0, "arbiterd did not exit cleanly:\n" + \
        "\n".join(d.lines[-30:])
    d.cleanup()


@pytest.fixture
def fresh_daemon():
    """A daemon of this test alone (for tests that stop or kill it)."""
    made = []

    def make(**kw):
        d = Daemon(**kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.cleanup()


@pytest.fixture
def res(request):
    """A resource name unique to the test."""
    return "t-%s" % request.node.name[:200]


@pytest.fixture
def clients(daemon):
    """Make Clients on the module daemon; all closed at the end."""
    from arbiter_client import Client
    made = []

    def make(**kw):
        kw.setdefault("socket_path", daemon.socket)
        c = Client(**kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def procs():
    """Child processes of a test: killed at the end if still running."""
    ps = []
    yield ps
    for p in ps:
        if p.poll() is None:
            p.kill()
            p.wait()
