"""A fake arbiterd for the client's tests: it says Welcome to Hello and then
grants every Acquire ("grant", what a hostile server would do), answers
nothing after Welcome ("silent"), grants every Acquire and answers nothing
else ("grant-only"), or grants an Acquire only after the client withdrew it
("late").

It runs in a thread of the test (same uid), or in a forked child that first
switches to another uid (as root) and then only does socket work: nothing is
executed from the clone, so it works from any folder, even a 0700 home.
Everything it sees is reported, one line per event, on a pipe.
"""
import ctypes
import os
import selectors
import signal
import socket
import threading
import time

from arbiter_client._proto import FrameReader, pb

NOBODY = 65534


def _reply(conn, req_id, **kind):
    m = pb.ServerMessage(id=req_id, **kind)
    data = m.SerializeToString()
    try:
        conn.sendall(len(data).to_bytes(4, "big") + data)
    except OSError:
        pass            # the client is gone: its close is reported next


def serve(lsock, mode, report, stop_fd=None):
    """Serve lsock until stop_fd is readable; report(line) for each
    event."""
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    if stop_fd is not None:
        sel.register(stop_fd, selectors.EVENT_READ)
    readers = {}
    next_lease = [100]
    held_back = {}          # "late": request id -> resource, per conn
    while True:
        try:
            events = sel.select()
        except (OSError, ValueError):
            return
        for key, _ in events:
            s = key.fileobj
            if s is stop_fd:
                for conn in list(readers):
                    conn.close()
                sel.close()
                return
            if s is lsock:
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    return
                readers[conn] = FrameReader("fake")
                held_back[conn] = {}
                sel.register(conn, selectors.EVENT_READ)
                report("connect")
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                readers.pop(s, None)
                report("close")
                continue
            # FrameReader decodes ServerMessages; decode Requests by hand.
            buf = readers[s].buf
            buf += data
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + n:
                    break
                req = pb.Request()
                req.ParseFromString(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                kind = req.WhichOneof("kind")
                if kind == "hello":
                    report("hello")
                    w = pb.Welcome(protocol_version=1, server_version="fake",
                                   connection_id=1, role="active")
                    w.limits.max_frame_bytes = 65536
                    _reply(s, req.id, welcome=w)
                elif kind == "acquire":
                    report("acquire %d" % req.id)
                    res = req.acquire.resource
                    if mode in ("grant", "grant-only"):
                        next_lease[0] += 1
                        _reply(s, req.id, granted=pb.Granted(
                            lease_id=next_lease[0], token=next_lease[0],
                            resource=res.decode(), mode=req.acquire.mode))
                    elif mode == "late":
                        held_back[s][req.id] = res
                elif kind == "release":
                    r = req.release
                    if r.HasField("request_id"):
                        report("withdraw %d" % r.request_id)
                        res = held_back[s].pop(r.request_id, None)
                        if res is not None:
                            # The grant "raced ahead" of the withdrawal.
                            next_lease[0] += 1
                            _reply(s, r.request_id, granted=pb.Granted(
                                lease_id=next_lease[0], token=1,
                                resource=res.decode(), mode=pb.EXCLUSIVE))
                            report("granted-late %d" % next_lease[0])
                    else:
                        report("release %d" % r.lease_id)
                        if mode not in ("silent", "grant-only"):
                            _reply(s, req.id, released=pb.Released(
                                lease_id=r.lease_id))
                else:
                    report(kind)
                    if mode not in ("silent", "grant-only") and \
                            kind == "ping":
                        _reply(s, req.id, pong=pb.Pong(role="active"))


def _die_with_parent():
    """SIGKILL when the test process dies, so a killed run never leaves a
    fake server behind."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


class Fake:
    """A fake server on path; .lines() reads its report."""

    def __init__(self, path, mode="grant", uid=None):
        self.path = path
        self.pid = None
        self._buf = b""
        self._lines = []
        r, w = os.pipe()
        self._r = r
        if uid is None:
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            lsock.bind(path)
            lsock.listen(16)
            self._lsock = lsock
            self._w = w
            self._stop_r, self._stop_w = os.pipe()

            def report(line):
                os.write(w, line.encode() + b"\n")
            self._thread = threading.Thread(
                target=serve, args=(lsock, mode, report, self._stop_r),
                daemon=True)
            self._thread.start()
            return
        pid = os.fork()
        if pid == 0:                                  # the other user
            try:
                os.close(r)
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                _die_with_parent()      # after the uid change, which clears it
                lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                lsock.bind(path)
                lsock.listen(16)
                os.write(w, b"ready\n")
                serve(lsock, mode, lambda line: os.write(
                    w, line.encode() + b"\n"))
            except BaseException as exc:
                try:
                    os.write(w, ("failed %r\n" % exc).encode())
                finally:
                    os._exit(1)
            os._exit(0)
        os.close(w)
        self.pid = pid
        self._w = None
        self._lsock = None
        first = self.next_line()
        if first != "ready":
            self.stop()
            raise RuntimeError("the fake server as uid %d did not start: %s"
                               % (uid, first))

    def next_line(self, timeout=20.0):
        """The next report line (waits for it by reading the pipe)."""
        import select
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the fake server reported nothing more")
            if not select.select([self._r], [], [], left)[0]:
                continue
            chunk = os.read(self._r, 4096)
            if not chunk:
                raise EOFError("the fake server is gone")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        line = line.decode()
        self._lines.append(line)
        return line

    def wait_for(self, prefix, timeout=20.0):
        while True:
            line = self.next_line(timeout)
            if line.startswith(prefix):
                return line

    def stop(self):
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = None
        if self._lsock is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(20.0)
            self._lsock.close()
            self._lsock = None
            os.close(self._stop_r)
            os.close(self._stop_w)
        for fd in (self._r, self._w):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._r = self._w = None
