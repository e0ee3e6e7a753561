"""Who serves the socket: the client refuses a server run by a uid it does
not trust (SO_PEERCRED, checked before Hello) and a default socket folder
another user could have made, and trusts what the rule says it must:
ARBITER_TRUST_UID, trust_uids=, and a folder root handed to the daemon's
user.

Servers of another uid are fake arbiters in a forked child that switched to
uid 65534 and only does socket work (needs root; skipped otherwise)."""
import asyncio
import os
import pwd
import shutil
import tempfile

import pytest

import arbiter_client as ac
from arbiter_client import _proto
from conftest import in_child_as
from fake_arbiter import NOBODY, Fake

needs_root = pytest.mark.skipif(
    os.getuid() != 0, reason="a server of another uid needs root to switch "
    "uid in a forked child")


@pytest.fixture
def tmpdirs():
    made = []

    def make(mode=0o755, owner=None, parent=None):
        d = tempfile.mkdtemp(prefix="arbtr-", dir=parent or "/tmp")
        os.chmod(d, mode)
        if owner is not None:
            os.chown(d, owner, owner)
        made.append(d)
        return d
    yield make
    for d in reversed(made):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def fakes():
    made = []

    def make(path, mode="grant", uid=None):
        f = Fake(path, mode, uid)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("ARBITER_TRUST_UID", raising=False)
    monkeypatch.delenv("ARBITER_SOCKET", raising=False)


def nobody_server(tmpdirs, fakes, mode="grant"):
    d = tmpdirs(0o755, owner=NOBODY)          # in /tmp (1777): not rule d
    return fakes(os.path.join(d, "a.sock"), mode, uid=NOBODY)


def refused(fn, *args, **kw):
    """The exception fn raised, which must be the refusal (on a client
    without the check, fn goes on and gets a grant: the test fails)."""
    try:
        r = fn(*args, **kw)
    except ac.ArbiterError as e:
        assert type(e).__name__ == "UntrustedServer", repr(e)
        return e
    pytest.fail("not refused: the client went on and got %r" % (r,))


def arefused(coro_fn):
    async def main():
        try:
            r = await coro_fn()
        except ac.ArbiterError as e:
            assert type(e).__name__ == "UntrustedServer", repr(e)
            return e
        pytest.fail("not refused: the client went on and got %r" % (r,))
    return asyncio.run(main())


def assert_refusal(exc, path):
    msg = str(exc)
    assert isinstance(exc, ac.UntrustedServer), repr(exc)
    assert isinstance(exc, ac.ArbiterError) and isinstance(exc,
                                                           PermissionError)
    assert exc.socket_path == path and exc.uid == NOBODY
    assert exc.user == "nobody"
    assert "refusing the server on %s" % path in msg
    assert "uid %d (nobody)" % NOBODY in msg
    assert "not as you (uid %d) or root" % os.geteuid() in msg
    assert "ARBITER_TRUST_UID=%d" % NOBODY in msg


def no_hello(fake):
    """The refusal came before Hello: the fake saw a connect, a close and
    nothing else."""
    assert fake.wait_for("connect") == "connect"
    assert fake.next_line() == "close"


# ------------------------------------------------------------ refusals

@needs_root
def test_sync_refuses_server_of_another_uid(tmpdirs, fakes):
    f = nobody_server(tmpdirs, fakes)
    e = refused(lambda: ac.Client(f.path).acquire("db", timeout=0))
    assert_refusal(e, f.path)
    no_hello(f)


@needs_root
def test_async_refuses_server_of_another_uid(tmpdirs, fakes):
    f = nobody_server(tmpdirs, fakes)

    async def main():
        return await ac.AsyncClient(f.path).acquire("db", timeout=0)
    assert_refusal(arefused(main), f.path)
    no_hello(f)


@needs_root
def test_two_try_locks_on_a_hostile_server_both_refused(tmpdirs, fakes):
    # The hostile server grants everything: two holders at once if trusted.
    f = nobody_server(tmpdirs, fakes)
    for _ in range(2):
        refused(lambda: ac.Client(f.path).acquire("db", timeout=0))
        refused(lambda: ac.ArbiterLock("db", timeout=0,
                                       socket_path=f.path).acquire())

    async def acq():
        return await ac.AsyncClient(f.path).acquire("db", timeout=0)

    async def lock():
        return await ac.AsyncArbiterLock("db", timeout=0,
                                         socket_path=f.path).acquire()
    for _ in range(2):
        arefused(acq)
        arefused(lock)
    assert "hello" not in f._lines


# ------------------------------------------------------------ trusting

@needs_root
@pytest.mark.parametrize("value", ["65534", " 1, nobody ,", "*"])
def test_trust_env_accepts_that_uid(tmpdirs, fakes, monkeypatch, value):
    f = nobody_server(tmpdirs, fakes)
    monkeypatch.setenv("ARBITER_TRUST_UID", value)
    with ac.Client(f.path) as c:
        assert c.acquire("db", timeout=0).token > 0

    async def main():
        async with ac.AsyncClient(f.path) as c:
            return (await c.acquire("db", timeout=0)).token
    assert asyncio.run(main()) > 0


@needs_root
@pytest.mark.parametrize("trust", [[NOBODY], ["nobody"], "65534", NOBODY])
def test_trust_uids_keyword_accepts_that_uid(tmpdirs, fakes, trust):
    f = nobody_server(tmpdirs, fakes)
    with ac.Client(f.path, trust_uids=trust) as c:
        assert c.acquire("db", timeout=0).token > 0
    lock = ac.ArbiterLock("db2", timeout=0, socket_path=f.path,
                          trust_uids=trust)
    with lock:
        assert lock.is_locked

    async def main():
        async with ac.AsyncClient(f.path, trust_uids=trust) as c:
            await c.acquire("db", timeout=0)
        lock = ac.AsyncArbiterLock("db3", timeout=0, socket_path=f.path,
                                   trust_uids=trust)
        async with lock:
            assert lock.is_locked
        await lock.client.close()
    asyncio.run(main())


@needs_root
def test_trust_of_other_uids_does_not_open_the_door(tmpdirs, fakes,
                                                    monkeypatch):
    f = nobody_server(tmpdirs, fakes)
    monkeypatch.setenv("ARBITER_TRUST_UID", "1,no-such-user-here")
    e = refused(ac.Client, f.path, trust_uids=[2])
    assert "note: ARBITER_TRUST_UID has 'no-such-user-here', which is "\
        "neither a uid nor a user name." in str(e)


@needs_root
def test_folder_root_handed_to_the_daemon_user_is_trusted(tmpdirs, fakes):
    # The systemd case: /run (root, 0755) / arbiter (User=, 0750).
    parent = tmpdirs(0o755)
    folder = os.path.join(parent, "arbiter")
    os.mkdir(folder, 0o750)
    os.chown(folder, NOBODY, NOBODY)
    f = fakes(os.path.join(folder, "arbiter.sock"), uid=NOBODY)
    with ac.Client(f.path) as c:
        c.acquire("db", timeout=0)

    async def main():
        async with ac.AsyncClient(f.path) as c:
            await c.acquire("db", timeout=0)
    asyncio.run(main())


@needs_root
@pytest.mark.parametrize("what", ["parent-writable", "folder-writable",
                                  "parent-not-root"])
def test_folder_not_handed_by_root_is_not_trusted(tmpdirs, fakes, what):
    parent = tmpdirs(0o777 if what == "parent-writable" else 0o755,
                     owner=NOBODY if what == "parent-not-root" else None)
    folder = os.path.join(parent, "arbiter")
    os.mkdir(folder)
    os.chmod(folder, 0o770 if what == "folder-writable" else 0o750)
    os.chown(folder, NOBODY, NOBODY)
    f = fakes(os.path.join(folder, "arbiter.sock"), uid=NOBODY)
    e = refused(lambda: ac.Client(f.path).acquire("db", timeout=0))
    assert_refusal(e, f.path)


def test_own_and_root_servers_are_trusted(daemon):
    # The daemon runs as this test's uid (root or not): rule a (and b).
    with ac.Client(daemon.socket) as c:
        assert c.ping()["role"] == "active"


# ------------------------------------------------------------ default folder

@pytest.fixture
def default_at(monkeypatch):
    """Make the client's default socket path one in a test folder."""
    def point(path):
        monkeypatch.setattr(_proto, "default_socket_path", lambda: path)
    return point


def refusal_of_default():
    sync = refused(lambda: ac.Client().acquire("db", timeout=0))

    async def main():
        return await ac.AsyncClient().acquire("db", timeout=0)
    return sync, arefused(main)


def test_default_folder_writable_by_others_is_refused(tmpdirs, default_at,
                                                      fakes):
    d = tmpdirs(0o777)
    f = fakes(os.path.join(d, "arbiter.sock"))  # would grant if asked
    default_at(f.path)
    for e in refusal_of_default():
        msg = str(e)
        assert "refusing %s: its folder %s is writable by group and "\
               "others (mode 0777)" % (f.path, d) in msg
        assert "chmod go-w %s" % d in msg and "ARBITER_SOCKET" in msg
    assert "connect" not in f._lines
    # The same socket named explicitly is served by our own uid: trusted.
    with ac.Client(f.path) as c:
        c.ping()


@pytest.mark.parametrize("mode,by", [(0o770, "its group"),
                                     (0o703, "others")])
def test_default_folder_writable_by_group_or_others(tmpdirs, default_at,
                                                    mode, by):
    d = tmpdirs(mode)
    default_at(os.path.join(d, "arbiter.sock"))
    for e in refusal_of_default():
        assert "its folder %s is writable by %s (mode %04o)" % (d, by, mode)\
            in str(e)


def test_default_folder_that_is_a_file_is_refused(tmpdirs, default_at):
    f = os.path.join(tmpdirs(0o700), "arbiter-x")
    open(f, "w").close()
    default_at(os.path.join(f, "arbiter.sock"))
    for e in refusal_of_default():
        assert "its folder %s is a file, not a folder of yours" % f in str(e)


def test_default_folder_that_is_a_symlink_is_refused(tmpdirs, default_at):
    real = tmpdirs(0o700)
    link = real + "-link"
    os.symlink(real, link)
    try:
        default_at(os.path.join(link, "arbiter.sock"))
        for e in refusal_of_default():
            assert "its folder %s is a symbolic link" % link in str(e)
            assert e.folder == link
    finally:
        os.unlink(link)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder "
                    "to another uid")
def test_default_folder_of_another_user_is_refused(tmpdirs, default_at):
    d = tmpdirs(0o700, owner=NOBODY)
    default_at(os.path.join(d, "arbiter.sock"))
    for e in refusal_of_default():
        assert ("its folder %s belongs to uid %d (nobody), not to you (uid "
                "%d), so another user could be answering as arbiterd" %
                (d, NOBODY, os.getuid())) in str(e)
        assert e.uid == NOBODY and e.user == "nobody"


@needs_root
def test_default_folder_root_handed_to_the_daemon_user_is_used(
        tmpdirs, fakes, default_at):
    # Root on a systemd host: the default /run/arbiter belongs to the
    # daemon's user, handed over by root (0750 inside root's 0755 /run).
    parent = tmpdirs(0o755)
    folder = os.path.join(parent, "arbiter")
    os.mkdir(folder, 0o750)
    os.chown(folder, NOBODY, NOBODY)
    f = fakes(os.path.join(folder, "arbiter.sock"), uid=NOBODY)
    default_at(f.path)
    with ac.Client() as c:
        c.acquire("db", timeout=0)
    # The same folder open to its group is no longer root's hand-over.
    os.chmod(folder, 0o770)
    for e in refusal_of_default():
        assert "its folder %s belongs to uid %d (nobody)" % (folder, NOBODY)\
            in str(e)


def test_private_default_folder_is_used(fresh_daemon, default_at):
    d = fresh_daemon()                 # its folder: 0700, ours
    default_at(d.socket)
    with ac.Client() as c:
        c.ping()


def _free_uid():
    for uid in range(61000, 64000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not os.path.lexists("/tmp/arbiter-%d" % uid):
                return uid
    pytest.skip("no free uid without a /tmp/arbiter-UID folder")


@needs_root
def test_victim_refuses_a_folder_planted_in_tmp(fakes):
    """The attack as reported: another user makes /tmp/arbiter-<victim>
    mode 0777 and serves a granting arbiter.sock in it. The victim (a
    forked child as a free uid) with no socket configured is refused, sync
    and asyncio, by the folder check alone."""
    victim = _free_uid()
    folder = "/tmp/arbiter-%d" % victim
    os.mkdir(folder)
    try:
        os.chmod(folder, 0o777)
        os.chown(folder, NOBODY, NOBODY)
        fakes(os.path.join(folder, "arbiter.sock"), uid=NOBODY)
        out = in_child_as(victim, _victim_probe).split()
        assert out == ["UntrustedServer"] * 4, out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _victim_probe():
    os.environ.pop("ARBITER_SOCKET", None)
    os.environ.pop("ARBITER_TRUST_UID", None)
    out = []
    for _ in range(2):
        try:
            ac.Client().acquire("db", timeout=0)
            out.append("granted")
        except ac.ArbiterError as e:
            assert "/tmp/arbiter-%d" % os.getuid() in str(e)
            out.append(type(e).__name__)

    async def main():
        try:
            await ac.AsyncClient().acquire("db", timeout=0)
            return "granted"
        except ac.ArbiterError as e:
            return type(e).__name__
    for _ in range(2):
        out.append(asyncio.run(main()))
    return " ".join(out)


# ------------------------------------------------------------ parsing

def test_parse_trust():
    from arbiter_client import _trust
    assert _trust.parse_trust(" 0 , nobody,,12") == ({0, NOBODY, 12}, False,
                                                     [])
    assert _trust.parse_trust("*")[1] is True
    assert _trust.parse_trust(["root", 5, "x-no-user"], "trust_uids") == (
        {0, 5}, False, ["trust_uids has 'x-no-user'"])
    assert _trust.parse_trust(None) == (set(), False, [])
