"""The daemon's socket setup refuses what it cannot use and says why; a
reload applies the frame limit and the metrics address, or keeps serving
when the new metrics address is taken."""
import signal
import socket
import subprocess
import struct
import urllib.request

import harness
from harness import Wire, pb


def test_a_socket_folder_that_is_a_file_is_named(tmp_path):
    (tmp_path / "f").write_text("")
    sock = str(tmp_path / "f" / "a.sock")
    d = harness.Daemon(tmp_path, wait_ready=False, args=["-S", sock])
    harness.expect_refusal(d, "socket folder %s is not a folder" %
                           (tmp_path / "f"))


def test_a_socket_folder_that_cannot_be_made_is_named(tmp_path):
    (tmp_path / "f").write_text("")
    sock = str(tmp_path / "f" / "sub" / "a.sock")
    d = harness.Daemon(tmp_path, wait_ready=False, args=["-S", sock])
    harness.expect_refusal(d, "cannot create socket folder %s: Not a "
                           "directory" % (tmp_path / "f" / "sub"))


def test_an_unknown_socket_group_is_named(tmp_path):
    d = harness.Daemon(tmp_path, wait_ready=False,
                       args=["-o", "socket.group=no-such-group-xyz"])
    harness.expect_refusal(d, "socket.group: no group named "
                           "'no-such-group-xyz'")


def test_a_regular_file_at_the_socket_path_is_left_alone(tmp_path):
    sock = tmp_path / "a.sock"
    sock.write_text("keep me")
    d = harness.Daemon(tmp_path, wait_ready=False)
    harness.expect_refusal(d, "%s exists and is not a socket; remove it or "
                           "set socket.path" % sock)
    assert sock.read_text() == "keep me"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def test_a_reload_applies_the_frame_limit_and_moves_the_metrics_port(tmp_path):
    p1, p2 = free_port(), free_port()
    conf = tmp_path / "arbiter.conf"
    conf.write_text("[metrics]\nlisten = 127.0.0.1:%d\n" % p1)
    d = harness.Daemon(tmp_path, config=str(conf))
    try:
        r = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p1,
                                   timeout=harness.WAIT)
        assert r.status == 200
        conf.write_text("[metrics]\nlisten = 127.0.0.1:%d\n"
                        "[limits]\nmax_frame_bytes = 100\n" % p2)
        seen = len(d.log.lines)
        d.proc.send_signal(signal.SIGHUP)
        d.log.wait_for("config reloaded", start=seen)
        r = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % p2,
                                   timeout=harness.WAIT)
        assert r.status == 200
        # A frame over the new limit is refused on a new connection.
        w2 = Wire(d.socket)
        req = pb.Request(id=1, acquire=pb.Acquire(resource=b"y" * 150))
        data = req.SerializeToString()
        w2.send_raw(struct.pack(">I", len(data)) + data)
        m = w2.read()
        assert m is not None and m.WhichOneof("kind") == "error", m
        assert "max_frame_bytes" in m.error.message, m
    finally:
        harness.check_clean_exit(d)


def test_a_busy_metrics_port_stops_the_start_and_names_it(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    spec = "127.0.0.1:%d" % busy.getsockname()[1]
    try:
        d = harness.Daemon(tmp_path, wait_ready=False,
                           args=["-o", "metrics.listen=" + spec])
        harness.expect_refusal(d, "metrics.listen: cannot listen on %s"
                               % spec)
    finally:
        busy.close()


def test_a_reload_onto_a_busy_metrics_port_keeps_serving(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    conf = tmp_path / "arbiter.conf"
    conf.write_text("[log]\nlevel = info\n")
    d = harness.Daemon(tmp_path, config=str(conf))
    try:
        conf.write_text("[metrics]\nlisten = 127.0.0.1:%d\n"
                        % busy.getsockname()[1])
        d.proc.send_signal(signal.SIGHUP)
        line = d.log.wait_for("metrics listener not restarted")
        assert "Address already in use" in line, line
        assert Wire(d.socket).call(ping=pb.Ping()).WhichOneof("kind") \
            == "pong"
    finally:
        busy.close()
        harness.check_clean_exit(d)


def test_a_socket_path_without_a_folder_is_made_in_the_working_folder(
        tmp_path):
    cmd = harness.WRAPPER + [harness.ARBITERD, "-S", "rel.sock",
                             "-s", str(tmp_path / "data")]
    p = subprocess.Popen(cmd,
                         cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = harness.LineReader(p.stderr, p)
    try:
        log.wait_for("arbiter ready")
        assert (tmp_path / "rel.sock").is_socket()
        assert Wire(str(tmp_path / "rel.sock")).call(ping=pb.Ping()) \
            .WhichOneof("kind") == "pong"
    finally:
        p.terminate()
        assert p.wait(harness.WAIT) == 0
        harness.assert_no_reports(log.drain())
    assert not (tmp_path / "rel.sock").exists()
