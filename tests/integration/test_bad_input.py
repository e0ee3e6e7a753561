"""Bad input: every bad client gets a clear answer, everyone else goes on.

Each test starts a real arbiterd with a well-behaved bystander client that
locks and releases its own resource. The bystander measures a few round
trips before the bad input (its baseline), keeps locking *during* the
floods, drips and pipelines, and again after the test: the median round
trip must stay under LATENCY_P50 (50 ms, a generous bound that only a
stalled loop would break), and the daemon must still be running and stop
cleanly with no sanitizer report.

A bad client gets an Error frame that names what is wrong (or a clean close
where no frame can be answered, such as a client that vanishes mid-frame).
Malformed frames close the connection; well-formed but invalid requests are
answered and the connection stays usable.

The cases, counting the ones other files already hold (43 in all):

  test_foundation.py
    1  garbage payload that is not protobuf ("hello"): BAD_FRAME, closed
    2  frame length 0: BAD_FRAME
    3  frame length over max_frame_bytes (0x00ffffff): LIMIT
    4  a request before Hello: NOT_WELCOME, closed
    5  wrong protocol version: VERSION
    6  resource names: empty, 256 bytes, NUL, \\xff\\xfe, tab, overlong
       UTF-8 (\\xc0\\xaf): INVALID_NAME
    7  unknown enum value (mode 7): BAD_REQUEST
    8  a silent client: closed at handshake_timeout_ms with LIMIT
    9  release of another connection's lease, of an unknown lease, double
       release: UNKNOWN_LEASE
   10  a holder that pipelined past the read watermark, then was killed,
       loses its lease at once
   11  a second arbiterd on a live socket: refused, the first undisturbed
  test_durable.py
   12  renew of an expired lease, of another connection's, of one with no
       ttl: UNKNOWN_LEASE / BAD_REQUEST
   13  a state file that is a symlink: the daemon refuses to start
   14  unusable state files (garbage, empty, truncated, newer format)
   15  admin revoke by a non-admin uid: FORBIDDEN
  test_operate.py
   16  config file errors (13 kinds): file:line: key: message
   17  a uid outside access.allow_uids: FORBIDDEN
   18  max_resources, max_waiters_per_resource, max_connections,
       max_leases_per_connection: LIMIT naming the limit
   19  a client that never reads its replies: dropped at
       output_buffer_bytes, others keep going
  test_stats.py
   20  a text line over max_text_line (with its newline): error, closed
  this file
   21  truncated frame, then close: its leases go to the next waiter at once
   22  truncated header (2 bytes), then close: clean close, nothing leaks
   23  bytes with an invalid protobuf wire type: BAD_FRAME
   24  a Request missing its required id: BAD_FRAME
   25  a varint longer than 10 bytes: BAD_FRAME
   26  a ServerMessage (Error) sent as a Request: BAD_REQUEST, no kind
   27  a ServerMessage (Granted) sent as a Request: BAD_FRAME (wire types)
   28  unknown enum values: mode -1 (10-byte varint) and 2^31-1
   29  a 60 KB resource name, and more invalid UTF-8 (surrogate, C1 control,
       above U+10FFFF, cut-off sequence, overlong 3-byte): INVALID_NAME
   30  Hello with an empty client name (found by fuzzing: it crashed the
       UBSan build), and with a bad one: Welcome / BAD_REQUEST
   31  a second Hello: NOT_WELCOME, closed
   32  a Request with no kind set: BAD_REQUEST, closed
   33  Acquire with a timeout and a ttl over leases.max_ttl_ms, and Renew
       over it: BAD_REQUEST, connection kept
   34  Release with both lease_id and request_id, and with neither
   35  a first byte that is neither 0x00 nor a letter (0x01, 0xff): LIMIT
   36  a frame of exactly max_frame_bytes is served; one byte more: LIMIT
   37  a frame of 21,000 unknown fields: refused within the decode bound
   38  good frames, then a bad one, in one write: answers in order, Error
   39  10,000 pipelined requests in one write: all answered, in order
   40  slow drip, one byte per second: closed at the handshake deadline;
       after Hello, a frame dripped byte by byte is still answered
   41  connect-and-close floods: 2,000 silent clients, 500 that send half a
       frame, 300 holders that all close at once
   42  fd exhaustion (RLIMIT_NOFILE 64): accept pauses, served clients go
       on, and new clients are served once descriptors free up
   43  files: a socket path that is a symlink (dangling, or to a live
       daemon's socket) is refused; a state file replaced by a directory is
       refused; a symlink planted at the state file's temp path is never
       followed; a text line over the limit without a newline; text with
       NUL and high bytes
"""
import contextlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import harness
from harness import WAIT, Wire, error_of, pb

# Floods log a debug line per connection; nobody reads the daemon's stderr
# while the flood runs, and a full pipe would stall the daemon on write(2).
QUIET = "log.level=info"

# Median acquire+release round trip of the bystander; a healthy daemon
# answers in well under a millisecond.
LATENCY_P50 = 0.05 * harness.SLOW


# ------------------------------------------------------------ helpers

def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def req(id, **kind):
    return frame(pb.Request(id=id, **kind).SerializeToString())


HELLO = req(1, hello=pb.Hello(protocol_version=1, client_name=b"bad"))


def raw(d):
    return harness.connect_raw(d.socket)


read_until_closed = harness.read_until_closed


def messages(data):
    """The ServerMessages in data; a trailing partial frame is an error."""
    out = []
    while data:
        assert len(data) >= 4, "partial header %r" % data
        (n,) = struct.unpack(">I", data[:4])
        assert 4 + n <= len(data), "partial frame"
        m = pb.ServerMessage()
        m.ParseFromString(data[4:4 + n])
        out.append(m)
        data = data[4 + n:]
    return out


def closed(w):
    """True once the daemon has closed w (EOF, or a reset after EOF)."""
    try:
        return w.read() is None
    except ConnectionResetError:
        return True


def kinds(msgs):
    return [m.WhichOneof("kind") for m in msgs]


def send_and_read(d, data):
    """Send data on a new connection; all replies, up to the daemon's close."""
    s = raw(d)
    s.sendall(data)
    return messages(read_until_closed(s))


def counted_connections(d):
    """The daemon's connection count, this text session included."""
    out = d.text(["stats"])
    return int(out.split("\nconnections:")[1].split()[0])


def wait_connections(d, n):
    """Wait until the daemon counts n connections (this query included)."""
    deadline = time.monotonic() + WAIT
    while True:
        d.log.drain()  # a daemon blocked on a full stderr pipe answers none
        got = counted_connections(d)
        if got == n:
            return
        assert time.monotonic() < deadline, "connections %d, want %d" % (
            got, n)
        time.sleep(0.01)


# The bystander runs in its own process, so the test's own work (parsing
# thousands of replies, opening thousands of sockets) never holds it up
# through Python's GIL: what it measures is the daemon.
BYSTANDER = r"""
import os, select, socket, statistics, struct, sys, time
sys.path.insert(0, sys.argv[2])
import arbiter_pb2 as pb
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(sys.argv[1])
buf = b""
def call(id, **kind):
    global buf
    d = pb.Request(id=id, **kind).SerializeToString()
    s.sendall(struct.pack(">I", len(d)) + d)
    while True:
        if len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) >= 4 + n:
                m = pb.ServerMessage()
                m.ParseFromString(buf[4:4 + n])
                buf = buf[4 + n:]
                assert m.id == id, m
                return m
        chunk = s.recv(65536)
        assert chunk, "the daemon closed the bystander"
        buf += chunk
assert call(1, hello=pb.Hello(protocol_version=1,
                              client_name=b"bystander")).HasField("welcome")
ids = iter(range(2, 1 << 62))
def round_trip():
    t0 = time.monotonic()
    g = call(next(ids), acquire=pb.Acquire(resource=b"bystander",
                                           timeout_ms=0))
    assert g.HasField("granted"), g
    r = call(next(ids), release=pb.Release(lease_id=g.granted.lease_id))
    assert r.HasField("released"), r
    return time.monotonic() - t0
print("ready", flush=True)
inbuf = b""
def commands():
    global inbuf
    while True:
        while b"\n" in inbuf:
            line, inbuf = inbuf.split(b"\n", 1)
            yield line.decode().split()
        chunk = os.read(0, 4096)
        if not chunk:
            return
        inbuf += chunk
def stop_asked():
    return b"\n" in inbuf or select.select([0], [], [], 0)[0]
cmds = commands()
for cmd in cmds:
    lat = []
    if cmd[0] == "p50":
        lat = [round_trip() for _ in range(int(cmd[1]))]
    elif cmd[0] == "during":  # until the next command arrives
        while len(lat) < 3 or not stop_asked():
            lat.append(round_trip())
        next(cmds)
    print("%.6f %d" % (statistics.median(lat), len(lat)), flush=True)
"""


class Bystander:
    """A well-behaved client locking and releasing its own resource."""

    def __init__(self, d):
        self.p = subprocess.Popen(
            [sys.executable, "-c", BYSTANDER, d.socket,
             os.path.dirname(pb.__file__)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline() == "ready\n"
        self.baseline = self.p50()

    def _ask(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def _answer(self):
        line = self.p.stdout.readline()
        assert line, "the bystander failed (see its traceback above)"
        p50, n = line.split()
        return float(p50), int(n)

    def p50(self, n=7):
        self._ask("p50 %d" % n)
        return self._answer()[0]

    def check(self):
        p = self.p50()
        assert p < LATENCY_P50, "bystander p50 after: %.1f ms (baseline " \
            "%.1f ms)" % (p * 1e3, self.baseline * 1e3)

    @contextlib.contextmanager
    def during(self):
        """Keep round-tripping while the body runs."""
        self._ask("during")
        try:
            yield
        finally:
            self._ask("stop")
            p, n = self._answer()
        assert p < LATENCY_P50, "bystander p50 during: %.1f ms over %d" % (
            p * 1e3, n)

    def close(self):
        self.p.stdin.close()
        self.p.wait(WAIT)


@pytest.fixture
def arbiter(tmp_path):
    """Start daemons (with -o options), each with a bystander; check both
    at the end."""
    started = []

    def start(*opts, wrapper=None, name=None):
        args = []
        for o in opts:
            args += ["-o", o]
        n = name or "d%d" % len(started)
        saved = harness.WRAPPER
        if wrapper:
            harness.WRAPPER = wrapper + harness.WRAPPER
        try:
            d = harness.Daemon(tmp_path, name=n, args=args,
                               storage=str(tmp_path / ("data-" + n)))
        finally:
            harness.WRAPPER = saved
        started.append(d)
        d.bystander = Bystander(d)
        return d

    yield start
    try:
        for d in started:
            assert d.proc.poll() is None, "arbiterd died:\n" + "\n".join(
                d.log.drain()[-40:])
            d.bystander.check()
            d.bystander.close()
    finally:
        for d in started:
            d.bystander.p.kill()
            harness.check_clean_exit(d)


def hand_acquire(id, resource, extra):
    """An Acquire encoded by hand, with raw extra bytes in its body."""
    body = b"\x0a" + bytes([len(resource)]) + resource + extra
    return frame(b"\x08" + bytes([id]) + b"\x5a" + bytes([len(body)]) + body)


# ------------------------------------------------------------ broken streams

def test_truncated_frame_then_close_hands_its_lease_on_at_once(arbiter):
    d = arbiter()
    bad, waiter = Wire(d.socket, "bad"), Wire(d.socket, "waiter")
    bad.lock("db")
    i = waiter.acquire("db")
    waiter.wait_kind("queued", i)
    # The header promises 100 bytes; 3 come, then the client is gone.
    bad.send_raw(struct.pack(">I", 100) + b"\x08\x02\x5a")
    bad.close()
    t0 = time.monotonic()
    assert waiter.granted(i).token > 0
    assert time.monotonic() - t0 < 1 * harness.SLOW
    d.log.wait_for("reason=eof")


def test_truncated_header_then_close_leaves_nothing_behind(arbiter):
    d = arbiter()
    before = counted_connections(d)
    s = raw(d)
    s.sendall(b"\x00\x00")
    s.shutdown(socket.SHUT_WR)
    assert read_until_closed(s) == b""  # nothing to answer: a clean close
    wait_connections(d, before)


MALFORMED = [
    ("invalid-wire-type", HELLO + frame(b"\x0f\xff\xff"), pb.BAD_FRAME,
     "frame of 3 bytes is not a valid Request"),
    ("missing-required-id",
     HELLO + frame(pb.Request(ping=pb.Ping()).SerializePartialToString()),
     pb.BAD_FRAME, "not a valid Request"),
    ("varint-of-11-bytes", HELLO + frame(b"\x08" + b"\xff" * 10 + b"\x01"),
     pb.BAD_FRAME, "not a valid Request"),
    ("server-error-as-request",
     frame(pb.ServerMessage(id=7, error=pb.Error(
         code=pb.BAD_FRAME, message="x")).SerializeToString()),
     pb.BAD_REQUEST, "request 7 has no known kind"),
    ("server-granted-as-request",
     HELLO + frame(pb.ServerMessage(id=3, granted=pb.Granted(
         lease_id=1, token=2)).SerializeToString()),
     pb.BAD_FRAME, "not a valid Request"),
    ("no-kind", HELLO + req(5), pb.BAD_REQUEST,
     "request 5 has no known kind (field 0)"),
    ("second-hello", HELLO + req(2, hello=pb.Hello(protocol_version=1)),
     pb.NOT_WELCOME, "a second Hello"),
    ("bad-client-name",
     req(1, hello=pb.Hello(protocol_version=1, client_name=b"\x1b[2J")),
     pb.BAD_REQUEST, "client name must be"),
    ("long-client-name",
     req(1, hello=pb.Hello(protocol_version=1, client_name=b"n" * 65)),
     pb.BAD_REQUEST, "at most 64 bytes"),
    ("first-byte-0x01", b"\x01\x00\x00\x05hello", pb.LIMIT,
     "frame of 16777221 bytes is over limits.max_frame_bytes (65536)"),
    ("first-byte-0xff", b"\xff\xff\xff\xff", pb.LIMIT,
     "over limits.max_frame_bytes"),
]


@pytest.mark.parametrize("name,stream,code,words", MALFORMED,
                         ids=[c[0] for c in MALFORMED])
def test_a_malformed_stream_gets_an_error_then_a_close(arbiter, name, stream,
                                                       code, words):
    d = arbiter()
    msgs = send_and_read(d, stream)
    assert msgs, "no answer to %s" % name
    e = error_of(msgs[-1])
    assert e.code == code and words in e.message, e
    # Nothing after the Error: the daemon closed (read_until_closed ended).
    assert all(k == "welcome" for k in kinds(msgs[:-1])), kinds(msgs)


@pytest.mark.parametrize("value", [b"\xff" * 9 + b"\x01",  # -1
                                   b"\xff\xff\xff\xff\x07"],  # 2^31 - 1
                         ids=["minus-1", "2^31-1"])
def test_unknown_enum_values_are_refused(arbiter, value):
    d = arbiter()
    w = Wire(d.socket)
    w.send_raw(hand_acquire(9, b"db", b"\x10" + value))
    e = error_of(w.wait(9))
    assert e.code == pb.BAD_REQUEST and "unknown mode" in e.message
    assert w.lock("db").token > 0  # the connection is still good


@pytest.mark.parametrize("name", [
    b"n" * 60000,           # huge, still inside one frame
    b"\xed\xa0\x80",        # a UTF-16 surrogate
    b"a\xc2\x85b",          # C1 control character (NEL)
    b"\xf4\x90\x80\x80",    # above U+10FFFF
    b"ab\xe2\x82",          # a sequence cut off by the end
    b"\xe0\x80\xaf",        # overlong 3-byte form of '/'
    b"del\x7f",             # DEL
], ids=["60KB", "surrogate", "C1-control", "above-U+10FFFF", "cut-off",
        "overlong", "DEL"])
def test_more_invalid_resource_names_are_refused(arbiter, name):
    d = arbiter()
    w = Wire(d.socket)
    e = error_of(w.wait(w.acquire(name)))
    assert e.code == pb.INVALID_NAME
    assert "resource name" in e.message
    assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"


def test_an_empty_client_name_is_no_name(arbiter):
    """Found by fuzzing: protobuf-c hands an empty bytes field over as NULL,
    and memchr(NULL, 0, 0) aborted the daemon built with UBSan."""
    d = arbiter()
    msgs = []
    s = raw(d)
    s.sendall(req(1, hello=pb.Hello(protocol_version=1, client_name=b"")) +
              req(2, acquire=pb.Acquire(resource=b"db")) +
              req(3, status=pb.StatusRequest()))
    buf = b""
    while len(msgs) < 3:
        buf += s.recv(65536)
        try:
            msgs = messages(buf)
        except AssertionError:
            continue  # a partial frame: read on
    s.close()
    assert kinds(msgs) == ["welcome", "granted", "status"]
    assert msgs[2].status.resources[0].holders[0].client_name == ""


def test_invalid_limits_in_a_request_are_refused_and_the_connection_kept(
        arbiter):
    d = arbiter("leases.max_ttl_ms=60000")
    w = Wire(d.socket)
    e = error_of(w.wait(w.acquire("db", timeout_ms=100, ttl_ms=2 ** 63)))
    assert e.code == pb.BAD_REQUEST
    assert "ttl_ms 9223372036854775808 is over leases.max_ttl_ms (60000)" \
        in e.message
    lease = w.lock("db", ttl_ms=1000)
    e = error_of(w.call(renew=pb.Renew(lease_id=lease.lease_id,
                                       ttl_ms=60001)))
    assert e.code == pb.BAD_REQUEST and "over leases.max_ttl_ms" in e.message
    r = w.call(renew=pb.Renew(lease_id=lease.lease_id, ttl_ms=60000))
    assert r.renewed.ttl_ms == 60000


@pytest.mark.parametrize("release", [
    pb.Release(lease_id=1, request_id=1),
    pb.Release(),
], ids=["both", "neither"])
def test_release_needs_exactly_one_id(arbiter, release):
    d = arbiter()
    w = Wire(d.socket)
    lease = w.lock("db")
    e = error_of(w.call(release=release))
    assert e.code == pb.BAD_REQUEST
    assert "exactly one of lease_id or request_id" in e.message
    assert w.release(lease.lease_id).lease_id == lease.lease_id


def test_a_frame_of_exactly_the_limit_is_served_and_one_more_byte_is_not(
        arbiter):
    d = arbiter()
    limit = 65536
    k = limit - 10
    while len(pb.Request(id=2, ping=pb.Ping(payload=b"p" * k))
              .SerializeToString()) < limit:
        k += 1
    payload = pb.Request(id=2, ping=pb.Ping(payload=b"p" * k))
    payload = payload.SerializeToString()
    assert len(payload) == limit
    w = Wire(d.socket)
    w.send_raw(frame(payload))
    assert w.wait(2).pong.payload == b"p" * k
    over = pb.Request(id=3, ping=pb.Ping(payload=b"p" * (k + 1)))
    w.send_raw(frame(over.SerializeToString()))
    e = error_of(w.wait(3))
    assert e.code == pb.LIMIT
    assert "frame of 65537 bytes is over limits.max_frame_bytes" in e.message
    assert closed(w)


def test_a_frame_of_many_unknown_fields_is_refused_within_the_decode_bound(
        arbiter):
    d = arbiter()
    # Field 1000 (varint) 21,000 times: valid protobuf that protobuf-c would
    # keep as 21,000 unknown-field records, more than the bounded arena.
    body = b"\x08\x02" + b"\xc0\x3e\x01" * 21000 + b"\x6a\x00"
    msgs = send_and_read(d, HELLO + frame(body))
    assert kinds(msgs) == ["welcome", "error"]
    e = error_of(msgs[1])
    assert e.code == pb.BAD_FRAME and "63004 bytes" in e.message
    # A few unknown fields (a newer client's additions) are fine.
    w = Wire(d.socket)
    w.send_raw(frame(b"\x08\x05" + b"\xc0\x3e\x01" * 10 + b"\x6a\x00"))
    assert w.wait(5).WhichOneof("kind") == "pong"


def test_good_frames_then_a_bad_one_are_answered_in_order(arbiter):
    d = arbiter()
    msgs = send_and_read(d, HELLO + req(2, ping=pb.Ping(payload=b"a")) +
                         req(3, acquire=pb.Acquire(resource=b"db")) +
                         frame(b"\xff\xff\xff") + req(4, ping=pb.Ping()))
    assert kinds(msgs) == ["welcome", "pong", "granted", "error"]
    assert [m.id for m in msgs] == [1, 2, 3, 0]
    assert msgs[3].error.code == pb.BAD_FRAME
    # The lease died with the connection.
    assert Wire(d.socket).lock("db", timeout_ms=0).token > msgs[2].granted.token


# ------------------------------------------------------------ volume

def test_ten_thousand_pipelined_requests_are_all_answered_in_order(arbiter):
    d = arbiter()
    w = Wire(d.socket)
    blob = []
    for i in range(5000):
        a, r = 10 + 2 * i, 11 + 2 * i
        blob.append(req(a, acquire=pb.Acquire(resource=b"pipe")))
        blob.append(req(r, release=pb.Release(request_id=a)))
    blob = b"".join(blob)
    with d.bystander.during():
        sender = threading.Thread(target=w.send_raw, args=(blob,))
        sender.start()
        last_token = 0
        for i in range(5000):
            g = w.read()
            assert g.id == 10 + 2 * i and g.WhichOneof("kind") == "granted", g
            assert g.granted.token > last_token
            last_token = g.granted.token
            r = w.read()
            assert r.id == 11 + 2 * i and r.WhichOneof("kind") == "released"
        sender.join(WAIT)
    assert w.call(ping=pb.Ping()).WhichOneof("kind") == "pong"


def test_slow_drip_before_hello_is_closed_at_the_handshake_deadline(arbiter):
    d = arbiter("limits.handshake_timeout_ms=500")
    hello = HELLO
    s = raw(d)
    t0 = time.monotonic()
    got = b""
    with d.bystander.during():
        for b in hello:
            try:
                s.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            # One byte per second, unless the daemon answers first.
            s.settimeout(1.0)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            s.settimeout(WAIT)
            got = chunk + read_until_closed(s)
            break
    took = time.monotonic() - t0
    msgs = messages(got)
    assert kinds(msgs) == ["error"]
    assert msgs[0].error.code == pb.LIMIT
    assert "no Hello within limits.handshake_timeout_ms (500 ms)" in \
        msgs[0].error.message
    assert 0.4 < took < 1.5 * harness.SLOW, took


def test_a_frame_dripped_byte_by_byte_after_hello_is_answered(arbiter):
    d = arbiter()
    w = Wire(d.socket)
    data = req(7, ping=pb.Ping(payload=b"drip"))
    with d.bystander.during():
        for b in data:
            w.send_raw(bytes([b]))
            time.sleep(0.01)  # the drip itself, not a wait
        assert w.wait(7).pong.payload == b"drip"


@pytest.mark.parametrize("kind,n", [("silent", 2000), ("half-frame", 500)])
def test_connect_and_close_floods(arbiter, kind, n):
    d = arbiter(QUIET)
    before = counted_connections(d)
    with d.bystander.during():
        socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.socket)
            if kind == "half-frame":
                s.send(b"\x00\x00\x00\x20\x08\x01")
            socks.append(s)
        for s in socks:  # all at once
            s.close()
        wait_connections(d, before)


def test_a_flood_of_holders_closing_at_once_frees_every_lease(arbiter):
    d = arbiter(QUIET)
    before = counted_connections(d)
    with d.bystander.during():
        holders = []
        for i in range(300):
            s = raw(d)
            s.sendall(HELLO + req(2, acquire=pb.Acquire(
                resource=b"flood-%d" % i)))
            holders.append(s)
        for s in holders:  # each must have its grant before we close
            buf = b""
            while len(messages_prefix(buf)) < 2:
                buf += s.recv(4096)
            assert kinds(messages_prefix(buf)) == ["welcome", "granted"]
        for s in holders:
            s.close()
        wait_connections(d, before)
    st = d.text(["stats"])
    assert "\nholders:0\n" in st and "\nwaiters:0\n" in st


def messages_prefix(data):
    """The complete ServerMessages at the start of data."""
    out = []
    while len(data) >= 4:
        (n,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + n:
            break
        m = pb.ServerMessage()
        m.ParseFromString(data[4:4 + n])
        out.append(m)
        data = data[4 + n:]
    return out


def test_fd_exhaustion_refuses_past_the_reserve_and_recovers(arbiter):
    # A long handshake deadline, so the flood holds its descriptors until
    # the test lets go of them.
    d = arbiter("limits.handshake_timeout_ms=600000",
                wrapper=["prlimit", "--nofile=64:64", "--"])
    flood = []
    with d.bystander.during():
        for _ in range(90):  # more than the daemon has descriptors for
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.socket)  # the listen backlog takes them all
            flood.append(s)
        d.log.wait_for("reason=open_file_limit")
        # Past the descriptors kept for its own files, a client is told
        # why and closed, not left waiting.
        late = raw(d)
        harness.send_to_closing(late, HELLO)
        msgs = messages_prefix(read_until_closed(late))
        assert kinds(msgs) == ["error"]
        assert msgs[0].error.code == pb.LIMIT
        assert "open-file limit" in msgs[0].error.message
        for s in flood:
            s.close()
        # Descriptors free up: a new client is accepted and served.
        end = time.monotonic() + WAIT
        while True:
            s = raw(d)
            harness.send_to_closing(
                s, HELLO + req(2, acquire=pb.Acquire(resource=b"after")))
            buf = b""
            while len(messages_prefix(buf)) < 2:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                buf += chunk
            s.close()
            if kinds(messages_prefix(buf)) == ["welcome", "granted"]:
                break
            assert time.monotonic() < end, "never served again"
    assert Wire(d.socket).lock("after").token > 0


# ------------------------------------------------------------ files

def start_refused(tmp_path, name, *args):
    d = harness.Daemon(tmp_path, name=name, args=list(args),
                       storage=str(tmp_path / ("data-" + name)),
                       wait_ready=False)
    return harness.expect_refusal(d)


def test_a_socket_path_that_is_a_symlink_to_a_live_socket_is_refused(
        arbiter, tmp_path):
    d = arbiter()
    link = tmp_path / "link.sock"
    os.symlink(d.socket, link)
    out = start_refused(tmp_path, "link")
    assert "link.sock exists and is not a socket (a symbolic link)" in out
    assert os.path.islink(link) and os.readlink(link) == d.socket
    assert Wire(link.as_posix()).lock("db").token > 0  # the live one serves


def test_a_socket_path_that_is_a_dangling_symlink_is_refused(arbiter,
                                                             tmp_path):
    arbiter()
    link = tmp_path / "gone.sock"
    os.symlink(tmp_path / "nowhere" / "x.sock", link)
    out = start_refused(tmp_path, "gone")
    assert "gone.sock exists and is not a socket (a symbolic link)" in out
    assert os.path.islink(link) and not os.path.exists(tmp_path / "nowhere")


def test_a_state_file_that_is_a_directory_is_refused(arbiter, tmp_path):
    arbiter()
    data = tmp_path / "data-bad"
    (data / ".arbiter.state").mkdir(parents=True)
    out = start_refused(tmp_path, "bad")
    assert "state file" in out and "is unusable" in out
    assert "not a regular file" in out and "--reset-state" in out


def test_a_symlink_at_the_state_temp_path_is_never_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    d = harness.Daemon(tmp_path)
    try:
        w = Wire(d.socket)
        w.lock("db")
        tmp = os.path.join(d.storage, ".arbiter.state.tmp")
        os.symlink(victim, tmp)
        d.stop()  # the last state write goes through the temp path
        # The link is removed, not followed; the write still happens.
        assert victim.read_bytes() == b"precious\n"
        assert not os.path.lexists(tmp)
        assert not [l for l in d.log.lines if "cannot write the state" in l]
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------------ text protocol

def test_a_text_line_over_the_limit_without_a_newline_is_refused(arbiter):
    d = arbiter()
    s = raw(d)
    s.sendall(b"stats " + b"x" * 2000)  # no newline: it must not wait
    out = read_until_closed(s).decode()
    assert out == ("error: line longer than limits.max_text_line (1024 "
                   "bytes); closing\n")


def test_text_with_nul_and_high_bytes_is_an_unknown_command(arbiter):
    d = arbiter()
    s = raw(d)
    s.sendall(b"stat\x00s\xff\n\xc3\x28\xa0\xa1\nping\nquit\n")
    out = read_until_closed(s).decode("utf-8", "replace")
    lines = out.splitlines()
    assert lines[0] == "error: unknown command 'stat'; try 'help'"
    assert lines[1].startswith("error: unknown command")
    assert lines[2] == "pong active"
