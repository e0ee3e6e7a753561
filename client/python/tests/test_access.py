"""Forbidden: socket permissions, access.allow_uids and admin-only requests,
seen by a client running as another uid (needs root to switch uid).

The client of another uid is a forked child that switches uid and only does
socket work with the arbiter_client this test process already imported:
nothing is executed (or imported) from the clone as that uid, so the tests
work from a clone in any folder, even a 0700 home."""
import os

import pytest

import arbiter_client as ac
from conftest import in_child_as

pytestmark = pytest.mark.skipif(os.getuid() != 0,
                                reason="needs root to run a client as "
                                       "another uid")

NOBODY = 65534


def _probe(socket_path, what):
    try:
        c = ac.Client(socket_path, name="nobody")
        if what == "revoke":
            c.revoke(pid=1)
        elif what == "reset":
            c.stats_reset()
        elif what == "lease":
            with c.lease("open-to-all"):
                pass
        return "OK"
    except ac.Forbidden as e:
        return "Forbidden: %s" % e


def probe(socket_path, what):
    """_probe() in a forked child running as uid/gid NOBODY (no exec)."""
    return in_child_as(NOBODY, _probe, socket_path, what)


def test_socket_mode_refuses_other_uids(fresh_daemon):
    d = fresh_daemon(mode=0o755)             # socket.mode default 0660
    out = probe(d.socket, "lease")
    assert out.startswith("Forbidden: permission denied on " + d.socket)
    assert "socket.mode" in out


def test_allow_uids_refuses_at_hello(fresh_daemon):
    d = fresh_daemon(mode=0o755, args=["-o", "socket.mode=0666",
                                       "-o", "access.allow_uids=0"])
    out = probe(d.socket, "lease")
    assert out.startswith("Forbidden: the arbiter at %s refused" % d.socket)
    assert "uid %d" % NOBODY in out and "allow_uids" in out


def test_admin_requests_need_an_admin(fresh_daemon):
    d = fresh_daemon(mode=0o755, args=["-o", "socket.mode=0666"])
    assert probe(d.socket, "lease") == "OK"
    for what in ("revoke", "reset"):
        out = probe(d.socket, what)
        assert out.startswith("Forbidden:") and "admin" in out, out
