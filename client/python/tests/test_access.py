"""Forbidden: socket permissions, access.allow_uids and admin-only requests,
seen by a client running as another uid (needs root to switch uid)."""
import os
import subprocess
import sys

import pytest

from conftest import WAIT, client_env

pytestmark = pytest.mark.skipif(os.getuid() != 0,
                                reason="needs root to run a client as "
                                       "another uid")

NOBODY = 65534

PROBE = r"""
import sys
import arbiter_client as ac
what = sys.argv[2]
try:
    c = ac.Client(sys.argv[1], name="nobody")
    if what == "revoke":
        c.revoke(pid=1)
    elif what == "reset":
        c.stats_reset()
    elif what == "lease":
        with c.lease("open-to-all"):
            pass
    print("OK")
except ac.Forbidden as e:
    print("Forbidden:", e)
"""


def probe(socket_path, what):
    r = subprocess.run([sys.executable, "-c", PROBE, socket_path, what],
                       capture_output=True, text=True, timeout=WAIT,
                       env=client_env(), user=NOBODY, group=NOBODY,
                       extra_groups=[])
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


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
