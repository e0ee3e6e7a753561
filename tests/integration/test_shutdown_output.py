"""SIGTERM waits up to shutdown.timeout_ms for the holders' Revoked
messages to be written, even to a client whose socket is full when the
daemon stops."""
import signal
import socket
import struct

import harness
from harness import Wire, pb


def test_a_holder_with_a_full_socket_still_gets_its_revoked(tmp_path):
    d = harness.Daemon(tmp_path, args=[
        "-o", "limits.output_buffer_bytes=67108864",
        "-o", "limits.output_total_bytes=134217728"])
    try:
        w = Wire(d.socket)
        w.lock("db")
        # A small send buffer: sendall returns once the daemon has read
        # all but a few KiB, so its replies (far more than a socket
        # holds) wait in its output when SIGTERM comes.
        w.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        one = pb.Request(id=7, ping=pb.Ping()).SerializeToString()
        w.s.sendall((struct.pack(">I", len(one)) + one) * 60000)
        d.proc.send_signal(signal.SIGTERM)
        d.log.wait_for("shutting down")
        kinds = []
        while True:  # read everything, promptly, until the daemon closes
            m = w.read()
            if m is None:
                break
            kinds.append(m.WhichOneof("kind"))
        assert "revoked" in kinds, "%d replies, no Revoked" % len(kinds)
    finally:
        harness.check_clean_exit(d)


def test_a_holder_that_never_reads_cannot_hold_up_shutdown(tmp_path):
    # The wait for last words is bounded: past shutdown.timeout_ms the
    # daemon closes with the output unsent, says so, and exits cleanly
    # (its storage lock given back with it).
    d = harness.Daemon(tmp_path, args=[
        "-o", "shutdown.timeout_ms=300",
        "-o", "limits.output_buffer_bytes=67108864",
        "-o", "limits.output_total_bytes=134217728"])
    w = Wire(d.socket)
    w.lock("db")
    w.s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    one = pb.Request(id=7, ping=pb.Ping()).SerializeToString()
    w.s.sendall((struct.pack(">I", len(one)) + one) * 60000)
    d.proc.send_signal(signal.SIGTERM)
    # Never read: the replies stay queued until the bound.
    d.log.wait_for("shutdown bound reached")
    assert d.proc.wait(harness.WAIT) == 0
    harness.check_clean_exit(d)
    w.s.close()
