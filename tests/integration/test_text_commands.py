"""The text protocol's commands with arguments and untidy lines: `stats
RESOURCE`, `status RESOURCE`, CRLF and trailing blanks, empty lines, a
standby's storage holder, and a uid outside the allow lists."""
import os
import socket

import pytest

import harness
from harness import Wire


def test_stats_of_one_resource_gives_only_its_figures(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        w = Wire(d.socket)
        w.lock("db")
        w.lock("other")
        out = d.text(["stats db"])
        assert out.startswith("# Server\n")
        assert "# Resource db\nacquired_immediate:1\n" in out
        assert "# Resource other" not in out
        assert out.endswith(".\n")
        # An unknown resource: the server block alone, then the end mark.
        out = d.text(["stats nosuch"])
        assert "# Resource" not in out and out.endswith("resources_tracked:2"
                                                        "\n.\n"), out
        w.close()
    finally:
        harness.check_clean_exit(d)


def test_crlf_blanks_and_empty_lines_are_tolerated(tmp_path):
    d = harness.Daemon(tmp_path)
    try:
        w = Wire(d.socket)
        w.lock("db")
        s = harness.connect_raw(d.socket)
        s.sendall(b"ping \r\n\r\n\nstatus    db\r\nquit\r\n")
        out = harness.read_until_closed(s).decode()
        assert out.startswith("pong active\n# Server\nrole:active\n"), out
        assert "# Resource db\nholder:lease=" in out and "name=test" in out
        w.close()
    finally:
        harness.check_clean_exit(d)


def test_a_standby_names_the_storage_holder_in_status(tmp_path):
    d = harness.Daemon(tmp_path)
    s = harness.Daemon(tmp_path, name="b", storage=d.storage)
    try:
        out = s.text(["status"])
        assert "role:standby\n" in out
        assert ("storage_holder:pid=%d " % d.pid) in out, out
        assert ("socket=%s " % d.socket) in out, out
    finally:
        harness.check_clean_exit(s)
        harness.check_clean_exit(d)


@pytest.mark.skipif(os.getuid() != 0, reason="another uid needs root")
def test_a_text_session_from_a_uid_outside_the_allow_list_is_refused(
        tmp_path):
    d = harness.Daemon(tmp_path, args=["-o", "socket.mode=0666",
                                       "-o", "access.allow_uids=root"],
                       sockdir=harness.open_dir())
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(harness.WAIT)
                s.connect(d.socket)
                s.sendall(b"ping\n")
                os.write(w, harness.read_until_closed(s))
            finally:
                os._exit(0)
        os.close(w)
        out = b""
        while True:
            chunk = os.read(r, 4096)
            if not chunk:
                break
            out += chunk
        os.close(r)
        os.waitpid(pid, 0)
        assert out.decode() == ("error: forbidden: uid 65534 gid 65534 is "
                                "not in access.allow_uids or "
                                "access.allow_gids\n"), out
    finally:
        harness.check_clean_exit(d)
