"""What the sync and asyncio clients share: framing, names, defaults, the
mapping of daemon errors to exceptions, leases, and stats/status as dicts.

Nothing here does I/O.
"""
import os
import random
import sys
import time

from . import errors as E

try:
    from . import arbiter_pb2 as pb
except ImportError as exc:  # pragma: no cover - only in a broken checkout
    raise ImportError(
        "arbiter_client.arbiter_pb2 is missing: it is generated from "
        "proto/arbiter.proto by the package build (protoc --python_out). "
        "Install the package with `/usr/bin/python3 -m pip install "
        "--no-index --no-build-isolation ./client/python` (needs Debian's "
        "protobuf-compiler and python3-protobuf) instead of importing it "
        "from the source folder") from exc

PROTOCOL_VERSION = 1
FRAME_HEADER = 4
# The largest frame the wire format allows (the length's top byte is 0).
FRAME_HARD_MAX = (1 << 24) - 1
NAME_MAX = 255
CLIENT_NAME_MAX = 64

EXCLUSIVE = "exclusive"
SHARED = "shared"


# ------------------------------------------------------------ defaults

def default_socket_path():
    """The socket path when neither an argument nor $ARBITER_SOCKET names
    one. Mirrors arb_default_socket_path() in proto/defaults.h exactly:
    /run/arbiter/arbiter.sock for uid 0, else /tmp/arbiter-UID/arbiter.sock.
    """
    uid = os.getuid()
    if uid == 0:
        return "/run/arbiter/arbiter.sock"
    return "/tmp/arbiter-%u/arbiter.sock" % uid


def resolve_socket_path(socket_path=None):
    """The argument, else $ARBITER_SOCKET (when set and not empty), else the
    default path (like arb_socket_path() in libarbiter)."""
    return resolve_socket(socket_path)[0]


def resolve_socket(socket_path=None):
    """(path, is_default): as resolve_socket_path(), and whether the path
    is the default one, whose folder the client checks before connecting."""
    if socket_path:
        return os.fspath(socket_path), False
    env = os.environ.get("ARBITER_SOCKET")
    if env:
        return env, False
    return default_socket_path(), True


# How long a request may wait for its answer (and a send for room) before
# the client gives the connection up: ping, stats, status, release, renew,
# revoke. Acquire waits as long as its own timeout asks, plus ACQUIRE_GRACE.
IO_TIMEOUT = 30.0
# An acquire with a timeout gives up by itself this long after the daemon
# should have answered TIMEOUT: a stopped or stalled daemon cannot make it
# wait longer (the request is withdrawn; a late grant is released at once).
ACQUIRE_GRACE = 0.15


# Reconnecting after a lost connection (the daemon was killed or restarted):
# the first retry after RECONNECT_FIRST seconds, each next one after twice
# as long, up to RECONNECT_MAX; every delay is drawn from its upper half, so
# clients cut off together do not come back in lockstep.
RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0


class Backoff:
    """The delays between attempts to reach a daemon that is coming back.

    ``delay(deadline)`` gives the seconds to wait before the next attempt,
    cut to what is left before the monotonic deadline (None: no end), or
    None once the deadline has passed: then give up."""

    __slots__ = ("_next",)

    def __init__(self):
        self._next = RECONNECT_FIRST

    def delay(self, deadline):
        d = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, RECONNECT_MAX)
        if deadline is None:
            return d
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        return min(d, left)


def may_retry_connect(exc):
    """True for a failed (re)connect that a restarting daemon explains: no
    socket yet, nothing listening, a full listen queue, or a connection that
    closed during the handshake. Refusals (trust, permission, protocol)
    are final."""
    return isinstance(exc, (E.NotRunning, E.ConnectionLost))


def may_reconnect(closing, pid, closed):
    """True unless the client was closed (closing), is used in a child of
    the process pid that made it, or stopped on an error (closed) that a
    new connection would not cure."""
    return (not closing and pid == os.getpid() and
            (closed is None or isinstance(closed, E.ConnectionLost)))


def may_requeue(lost_exc, timeout, deadline):
    """True when an acquire whose connection was lost while it waited (or
    was about to wait) should reconnect and ask again: it may wait
    (timeout is not 0), its deadline has not passed, and the loss is the
    daemon's (not close(), not fork, not a protocol error)."""
    if timeout == 0 or not isinstance(lost_exc, E.ConnectionLost):
        return False
    return deadline is None or time.monotonic() < deadline


def back_too_late(text, timeout, path, last):
    """The exception for an acquire whose timeout ran out while the daemon
    was away (last: the last failed attempt to reach it)."""
    return E.Timeout(
        "gave up waiting for %r after %g s: the connection to arbiterd on %s "
        "was lost and the daemon was not back in time (last attempt: %s). "
        "Check that it runs (`arbiterctl -S %s status`), or raise the "
        "timeout" % (text, timeout, path, last, path), socket_path=path,
        resource=text)


def reconnect_failed(exc, lost_exc, path):
    """The exception for a call that found its connection lost and could
    not connect again (exc: why, lost_exc: how the old one ended)."""
    if not isinstance(exc, E.NotRunning):
        return exc
    return E.NotRunning(
        "%s (the previous connection to it was lost: %s)" % (exc, lost_exc),
        socket_path=path)


def check_io_timeout(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            value <= 0:
        raise ValueError("%s must be a positive number of seconds, not %r" %
                         (what, value))
    return float(value)


def acquire_deadline(deadline):
    """The monotonic time at which an acquire whose timeout runs out at
    deadline gives up by itself (None: never, for no timeout)."""
    if deadline is None:
        return None
    return deadline + ACQUIRE_GRACE


def acquire_expired(text, timeout, path):
    """The exception for an acquire whose own deadline ran out before the
    daemon answered."""
    if timeout == 0:
        return E.WouldBlock(
            "could not lock %r without waiting: arbiterd on %s did not answer "
            "within %g s (stopped or overloaded?); the request was withdrawn. "
            "Retry later, and check the daemon (`arbiterctl -S %s status`)" %
            (text, path, ACQUIRE_GRACE, path), socket_path=path,
            resource=text)
    return E.Timeout(
        "gave up waiting for %r after %g s: arbiterd on %s did not answer in "
        "time (stopped or overloaded?); the request was withdrawn. Raise the "
        "timeout, or check the daemon (`arbiterctl -S %s status`)" %
        (text, timeout, path, path), socket_path=path, resource=text)


def gate_timeout(text, timeout, withdrawing, who, path):
    """The exception for an acquire that ran out of time waiting in this
    process for another thread (task) of the same client, or for an
    earlier request of it that gave up and awaits the daemon's answer."""
    if withdrawing:
        return E.Timeout(
            "gave up waiting for %r after %g s: an earlier request for it "
            "from this client gave up, and arbiterd on %s has not answered "
            "its withdrawal yet (stopped or overloaded?). Check the daemon "
            "(`arbiterctl -S %s status`)" % (text, timeout, path, path),
            socket_path=path, resource=text)
    return E.Timeout(
        "gave up waiting for %r after %g s: another %s of this process held "
        "it all that time (same client, arbiter at %s). Raise the timeout" %
        (text, timeout, who, path), socket_path=path, resource=text)


# Requests that change nothing: sent again, once, on a new connection when
# the one they went out on turns out to be dead (the daemon restarted while
# the client was idle and had not yet seen the old connection end).
READ_ONLY = frozenset(("ping", "stats request", "status request"))


def may_resend(exc, op):
    """True when the request op may go out again after exc ended its
    connection: a read-only request, on a connection that broke (not one
    that hung: that already took io_timeout)."""
    return (op in READ_ONLY and isinstance(exc, E.ConnectionLost) and
            not getattr(exc, "unanswered", False))


def io_expired(path, op, seconds):
    """The exception for a request whose answer did not come within the
    I/O timeout: the connection is given up."""
    exc = E.ConnectionLost(
        "arbiterd on %s did not answer the %s within %g s (stopped, hung or "
        "overloaded?), so the connection to it was closed and its leases "
        "are gone. Check the daemon (`arbiterctl -S %s status`); the client "
        "connects again for its next call (io_timeout= sets this bound)" %
        (path, op, seconds, path),
        socket_path=path)
    exc.unanswered = True
    return exc


def default_client_name():
    """The program's name: `python app.py` gives "app.py", `python -m pkg`
    gives "pkg"."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    base = os.path.basename(argv0)
    if base == "__main__.py":
        base = os.path.basename(os.path.dirname(argv0))
    if not base or base in ("-c", "-"):
        base = "python"
    return base


def _printable(ch):
    c = ord(ch)
    return not (c < 0x20 or c == 0x7F or 0x80 <= c <= 0x9F)


def clean_client_name(name):
    """Printable UTF-8, at most 64 bytes, cut on a character boundary."""
    out = "".join(ch if _printable(ch) else "?" for ch in str(name))
    data = out.encode("utf-8", "replace")
    if len(data) > CLIENT_NAME_MAX:
        data = data[:CLIENT_NAME_MAX].decode("utf-8", "ignore").encode()
    return data


def check_name(resource):
    """Validate a resource name as the daemon will; returns (bytes, str)."""
    if isinstance(resource, (bytes, bytearray, memoryview)):
        raw = bytes(resource)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise E.InvalidName(
                "resource name %r is not valid UTF-8; names are 1 to 255 "
                "bytes of printable UTF-8" % (raw,), code="INVALID_NAME",
                resource=raw) from None
    elif isinstance(resource, str):
        text = resource
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            raise E.InvalidName(
                "resource name %r cannot be encoded as UTF-8 (lone "
                "surrogate?)" % (text,), code="INVALID_NAME",
                resource=text) from None
    else:
        raise TypeError("resource must be str or bytes, not %s" %
                        type(resource).__name__)
    if not raw:
        raise E.InvalidName("resource name is empty; give 1 to 255 bytes "
                            "of printable UTF-8", code="INVALID_NAME",
                            resource=text)
    if len(raw) > NAME_MAX:
        raise E.InvalidName("resource name %r... is %d bytes; the limit is "
                            "255" % (text[:40], len(raw)),
                            code="INVALID_NAME", resource=text)
    if not all(_printable(ch) for ch in text):
        raise E.InvalidName("resource name %r has control characters; names "
                            "are printable UTF-8 (and opaque: not paths the "
                            "daemon opens)" % (text,), code="INVALID_NAME",
                            resource=text)
    return raw, text


def seconds_to_ms(seconds, what):
    """Seconds (int/float) to whole milliseconds, rounding up so a tiny
    positive value never turns into 0 ("try once")."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" %
                        (what, seconds))
    ms = seconds * 1000.0
    whole = int(ms)
    return whole + 1 if ms > whole else whole


def normalize_timeout(timeout):
    """None or negative: wait forever (None); 0: try once; else seconds."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("timeout must be None or seconds, not %r" % (timeout,))
    if timeout < 0:
        return None
    return float(timeout)


# ------------------------------------------------------------ framing

def encode(req):
    """A Request message as one frame."""
    data = req.SerializeToString()
    return len(data).to_bytes(4, "big") + data


def hello_frame(req_id, name):
    req = pb.Request(id=req_id)
    req.hello.protocol_version = PROTOCOL_VERSION
    if name is not None:
        req.hello.client_name = clean_client_name(name)
    return encode(req)


def acquire_request(req_id, raw_name, shared, timeout_ms, ttl_ms,
                    position_updates=False, lock_delay_ms=None):
    req = pb.Request(id=req_id)
    a = req.acquire
    a.resource = raw_name
    a.mode = pb.SHARED if shared else pb.EXCLUSIVE
    if timeout_ms is not None:
        a.timeout_ms = timeout_ms
    if ttl_ms:
        a.ttl_ms = ttl_ms
    if lock_delay_ms is not None:
        a.lock_delay_ms = lock_delay_ms
    if position_updates:
        a.position_updates = True
    else:
        a.quiet = True  # nobody listens for Queued: the daemon sends none
    return req


def acquire_in_time(req_id, raw_name, text, shared, timeout, deadline,
                    ttl_ms, on_queued, lock_delay, socket_path):
    """The Acquire to send now for a caller whose own deadline may already
    have gone by while it waited in this process (Timeout then)."""
    if timeout is None:
        timeout_ms = None
    elif timeout == 0:
        timeout_ms = 0
    else:
        left = deadline - time.monotonic()
        if left <= 0:
            raise E.Timeout("gave up waiting for %r after %g s "
                            "(in this process)" % (text, timeout),
                            socket_path=socket_path, resource=text)
        timeout_ms = max(1, seconds_to_ms(left, "timeout"))
    return acquire_request(
        req_id, raw_name, shared, timeout_ms, ttl_ms,
        position_updates=on_queued is not None,
        lock_delay_ms=(None if lock_delay is None else
                       seconds_to_ms(lock_delay, "lock_delay")))


class FrameReader:
    """Bytes in, decoded ServerMessages out."""

    def __init__(self, socket_path):
        self.buf = bytearray()
        self.socket_path = socket_path

    def feed(self, data):
        buf = self.buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= FRAME_HEADER:
            n = int.from_bytes(buf[pos:pos + FRAME_HEADER], "big")
            if n == 0 or n > FRAME_HARD_MAX:
                raise E.ProtocolError(
                    "the daemon at %s sent a frame with length %d (allowed "
                    "1..%d); is that socket really an arbiter?" %
                    (self.socket_path, n, FRAME_HARD_MAX),
                    socket_path=self.socket_path)
            if end - pos - FRAME_HEADER < n:
                break
            m = pb.ServerMessage()
            try:
                m.ParseFromString(bytes(buf[pos + FRAME_HEADER:
                                            pos + FRAME_HEADER + n]))
            except Exception as exc:
                raise E.ProtocolError(
                    "cannot decode a %d-byte message from the daemon at %s "
                    "(%s): client and daemon speak different protocol "
                    "versions?" % (n, self.socket_path, exc),
                    socket_path=self.socket_path) from exc
            out.append(m)
            pos += FRAME_HEADER + n
        if pos:
            del buf[:pos]
        return out


# ------------------------------------------------------------ errors

def error_name(code):
    try:
        return pb.ErrorCode.Name(code)
    except ValueError:
        return "ERROR_%d" % code


def daemon_error(err, path, *, resource=None, op="request", timeout=None):
    """The exception for an Error message from the daemon."""
    code = error_name(err.code)
    msg = err.message
    kw = dict(code=code, daemon_message=msg, socket_path=path,
              resource=resource)
    where = "arbiter at %s" % path
    if code == "WOULD_BLOCK":
        return E.WouldBlock(
            "could not lock %r without waiting: %s. Retry later, or pass a "
            "timeout to wait for it (%s; `arbiterctl -S %s status` shows "
            "the holders)" % (resource, msg, where, path), **kw)
    if code == "TIMEOUT":
        waited = " after %g s" % timeout if timeout else ""
        return E.Timeout(
            "gave up waiting for %r%s: %s. Raise the timeout, or see who "
            "holds it with `arbiterctl -S %s status` (%s)" %
            (resource, waited, msg, path, where), **kw)
    if code == "FORBIDDEN":
        return E.Forbidden(
            "the %s refused the %s: %s. Ask its operator to allow your uid "
            "(access.allow_uids / allow_gids; admin requests need "
            "access.admin_uids)" % (where, op, msg), **kw)
    if code == "CANCELLED":
        return E.Cancelled("the acquire of %r was withdrawn: %s (%s)" %
                           (resource, msg, where), **kw)
    if code == "SHUTTING_DOWN":
        return E.ShuttingDown(
            "the %s is shutting down: %s. Retry when it is back: the client "
            "connects again by itself" % (where, msg), **kw)
    if code == "ALREADY_HELD":
        return E.AlreadyHeld(
            "%s (%s). Release the first lease before asking again, or use "
            "ArbiterLock, which counts re-entrant acquires" % (msg, where),
            **kw)
    if code == "DEADLOCK":
        return E.Deadlock("%s (%s)" % (msg, where), **kw)
    if code == "UNAVAILABLE":
        return E.Unavailable(
            "the %s cannot serve %r now: %s. It is a cluster resource and "
            "the daemon cannot reach etcd (or the cluster refuses grants); "
            "retry later, and see `arbiterctl -S %s stats` for the "
            "cluster's state and last error" % (where, resource, msg, path),
            **kw)
    if code == "INVALID_NAME":
        return E.InvalidName("invalid resource name %r: %s" % (resource, msg),
                             **kw)
    if code == "LIMIT":
        return E.ArbiterError(
            "the %s hit a limit: %s. Release leases you no longer need, or "
            "raise the limit in its configuration" % (where, msg), **kw)
    if code == "BAD_REQUEST":
        return E.ArbiterError("the %s rejected the %s: %s" % (where, op, msg),
                              **kw)
    if code == "UNKNOWN_LEASE":
        return E.ArbiterError("%s (%s)" % (msg, where), **kw)
    if code == "STORAGE":
        return E.ArbiterError(
            "the %s cannot take its storage lock: %s. See who holds the "
            "storage with `arbiterctl -S %s who`" % (where, msg, path), **kw)
    if code == "INTERNAL":
        return E.ProtocolError(
            "internal error in arbiterd (%s): %s. This is a bug in arbiter; "
            "please report it with the daemon's log" % (where, msg), **kw)
    return E.ProtocolError(
        "the %s rejected the %s: %s: %s. Client and daemon disagree on the "
        "protocol (update both), or this is a bug" % (where, op, code, msg),
        **kw)


def convert_error(exc, lease, op, timeout, path):
    """The exception for a refused upgrade or downgrade of lease, from the
    daemon's error exc (an ArbiterError made by daemon_error)."""
    code, msg = exc.code, exc.daemon_message
    kw = dict(code=code, daemon_message=msg, socket_path=path,
              resource=lease.resource)
    what = "lease %d on %r" % (lease.lease_id, lease.resource)
    if lease.revoked is not None:
        return lease.revoked.error(path)
    if code == "DEADLOCK":
        return E.Deadlock(
            "cannot upgrade %s: %s. The lease is still held shared: release "
            "it (the other upgrade then proceeds) and acquire the resource "
            "exclusive anew (arbiter at %s)" % (what, msg, path), **kw)
    if code == "WOULD_BLOCK":
        return E.WouldBlock(
            "could not upgrade %s without waiting: %s. Retry later, or pass "
            "a timeout to wait (`arbiterctl -S %s status` shows the other "
            "holders)" % (what, msg, path), **kw)
    if code == "TIMEOUT":
        return E.Timeout(
            "gave up upgrading %s after %g s: %s. Raise the timeout, or see "
            "who shares it with `arbiterctl -S %s status`" %
            (what, timeout, msg, path), **kw)
    if code == "CANCELLED" and "ended with the lease" in (msg or ""):
        return E.LeaseRevoked(
            "the %s of %s failed because the lease ended while it waited: "
            "%s. Work done under it since then was not protected; acquire "
            "it again (arbiter at %s)" % (op, what, msg, path),
            reason=msg.rsplit("(", 1)[-1].rstrip(")").upper(), lease=lease,
            **kw)
    if code == "UNKNOWN_LEASE":
        return E.LeaseRevoked(
            "cannot %s %s: the daemon no longer knows it (%s); acquire it "
            "again (arbiter at %s)" % (op, what, msg, path), lease=lease,
            **kw)
    if code == "BAD_REQUEST" and "no known kind" in (msg or ""):
        return E.ProtocolError(
            "arbiterd on %s does not support lock conversion (it predates "
            "it): upgrade the daemon, or release and acquire anew" % path,
            **kw)
    if code == "CANCELLED":
        return E.Cancelled(
            "the %s of %s was withdrawn: %s (arbiter at %s)" %
            (op, what, msg, path), **kw)
    return exc


def convert_expired(lease, timeout, path):
    """The exception for an upgrade whose own deadline ran out before the
    daemon answered (it was withdrawn: the lease is held shared)."""
    what = "lease %d on %r" % (lease.lease_id, lease.resource)
    kw = dict(socket_path=path, resource=lease.resource)
    if timeout == 0:
        return E.WouldBlock(
            "could not upgrade %s without waiting: arbiterd on %s did not "
            "answer within %g s (stopped or overloaded?); the upgrade was "
            "withdrawn and the lease is held shared. Check the daemon "
            "(`arbiterctl -S %s status`)" %
            (what, path, ACQUIRE_GRACE, path), **kw)
    return E.Timeout(
        "gave up upgrading %s after %g s: arbiterd on %s did not answer in "
        "time (stopped or overloaded?); the upgrade was withdrawn and the "
        "lease is held shared. Raise the timeout, or check the daemon "
        "(`arbiterctl -S %s status`)" % (what, timeout, path, path), **kw)


def unexpected_reply(m, path, op):
    return E.ProtocolError(
        "the arbiter at %s answered a %s with %r; client and daemon "
        "versions do not match?" % (path, op, m.WhichOneof("kind")),
        socket_path=path)


def connect_error(exc, path):
    """The exception for a failed connect()."""
    if isinstance(exc, FileNotFoundError):
        return E.NotRunning(
            "no arbiter socket at %s: is arbiterd running? Start it, or set "
            "ARBITER_SOCKET (or socket_path=) to the socket.path of its "
            "config" % path, socket_path=path)
    if isinstance(exc, ConnectionRefusedError):
        return E.NotRunning(
            "nothing listens on %s (a socket file left by a stopped "
            "arbiterd?): start arbiterd" % path, socket_path=path)
    if isinstance(exc, BlockingIOError):
        return E.NotRunning(
            "arbiterd on %s does not accept the connection: its listen queue "
            "is full (is it stopped or overloaded?). Check the daemon "
            "(`arbiterctl -S %s status`) and retry" % (path, path),
            socket_path=path)
    if isinstance(exc, PermissionError):
        return E.Forbidden(
            "permission denied on %s for uid %d: the socket's mode/group "
            "(socket.mode, socket.group in the daemon's config) must let "
            "you in" % (path, os.getuid()), socket_path=path)
    return E.NotRunning("cannot connect to the arbiter at %s: %s" %
                        (path, exc), socket_path=path)


def welcome_error(m, path):
    """The exception for a handshake that did not end in Welcome."""
    if m.WhichOneof("kind") == "error":
        e = daemon_error(m.error, path, op="handshake")
        if e.code == "VERSION":
            return E.ProtocolError(
                "the arbiter at %s does not speak protocol version %d: %s. "
                "Use a client that matches the daemon" %
                (path, PROTOCOL_VERSION, m.error.message),
                code=e.code, daemon_message=m.error.message,
                socket_path=path)
        return e
    return unexpected_reply(m, path, "Hello")


def lost(path, why=None):
    """The exception for a connection that broke (why: the error seen) or
    ended without a word from the daemon (why None)."""
    if why is None:
        why = "it closed without a reply"
    return E.ConnectionLost(
        "the connection to arbiterd on %s was lost (%s): the daemon may have "
        "died (killed, crashed) or been restarted. Its leases are gone; "
        "the client connects again for its next call (check that arbiterd "
        "runs: `arbiterctl -S %s status`)" % (path, why, path),
        socket_path=path)


def forked(what, pid, path):
    """The error of a client (what: "Client" or "AsyncClient") used in a
    child of the process pid that made it."""
    return E.ConnectionLost(
        "this %s was created in process %d and does not survive fork(): "
        "create a new %s in process %d" %
        (what, pid, "Client" if what == "Client" else "one", os.getpid()),
        socket_path=path)


def shut_down(path):
    """The exception for a connection that ended after the daemon said it
    was shutting down."""
    return E.ShuttingDown(
        "arbiterd on %s shut down and closed the connection; its leases are "
        "gone; the client connects again for its next call once it is "
        "back" % path, socket_path=path)


def says_shutdown(m):
    """True for a message that announces the daemon's shutdown."""
    kind = m.WhichOneof("kind")
    if kind == "revoked":
        return m.revoked.reason == pb.SHUTDOWN
    return kind == "error" and m.error.code == pb.SHUTTING_DOWN


# ------------------------------------------------------------ leases

REASONS = {
    pb.EXPIRED: "EXPIRED", pb.ADMIN: "ADMIN", pb.SHUTDOWN: "SHUTDOWN",
    pb.STORAGE_LOST: "STORAGE_LOST", pb.DISCONNECT: "DISCONNECT",
    pb.CLUSTER_LOST: "CLUSTER_LOST",
}


def boottime():
    """CLOCK_BOOTTIME now, in seconds: the clock of a cluster lease's
    deadline (the daemon's, on the same host; it counts a suspend too)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def deadline_of(ns):
    """A Granted/Converted/Extended valid_until_ns as CLOCK_BOOTTIME
    seconds, None for 0 (a local lease)."""
    return ns / 1e9 if ns else None


class Revocation:
    """Why a lease ended without the holder asking (given to on_revoked and
    kept in ``lease.revoked``)."""

    __slots__ = ("lease", "resource", "reason", "message", "when")

    def __init__(self, lease, reason, message):
        self.lease = lease
        self.resource = lease.resource
        self.reason = reason
        self.message = message
        self.when = time.monotonic()

    def __repr__(self):
        return "Revocation(%r, reason=%s, message=%r)" % (
            self.resource, self.reason, self.message)

    def error(self, path):
        return E.LeaseRevoked(
            "the lease on %r (lease %d, token %d) was revoked: %s (%s): "
            "work done under it since then was not protected. Acquire it "
            "again before touching the resource (arbiter at %s)" %
            (self.resource, self.lease.lease_id, self.lease.token,
             self.reason, self.message, path),
            reason=self.reason, lease=self.lease, socket_path=path,
            resource=self.resource)


class BaseLease:
    """One granted lease: ``resource`` (str), ``mode`` ("exclusive" or
    "shared"), ``token`` (fencing token, grows with every grant of the
    resource), ``lease_id``; also ``ttl`` (seconds, None without one),
    ``waited`` (seconds spent queued) and ``revoked`` (a Revocation once the
    daemon ended it, else None).

    A cluster lease (the daemon's cluster mode) has a deadline,
    ``valid_until``: CLOCK_BOOTTIME seconds (``time.clock_gettime(
    time.CLOCK_BOOTTIME)``), moved later each time the daemon renews its
    etcd session (an Extended message, read in the background); None for a
    local lease. Past it the daemon no longer vouches for the lease, even if
    it said nothing (frozen, cut off from etcd): ``valid()`` turns False and
    ``check()`` raises."""

    __slots__ = ("resource", "mode", "token", "lease_id", "ttl", "waited",
                 "revoked", "released", "valid_until", "_client", "_raw",
                 "_gate", "_auto_renew", "_on_revoked", "_conn",
                 "__weakref__")

    def __init__(self, client, raw, granted):
        self._client = client
        self._raw = raw
        self.resource = granted.resource or raw.decode("utf-8")
        self.mode = SHARED if granted.mode == pb.SHARED else EXCLUSIVE
        self.token = granted.token
        self.lease_id = granted.lease_id
        self.ttl = granted.ttl_ms / 1000.0 if granted.ttl_ms else None
        self.waited = granted.waited_us / 1e6
        self.valid_until = deadline_of(granted.valid_until_ns)
        self.revoked = None
        self.released = False
        self._gate = None
        self._auto_renew = False
        self._on_revoked = None
        self._conn = None       # the connection it was granted on

    @property
    def held(self):
        """True while the lease is ours: not released, not revoked."""
        return not self.released and self.revoked is None

    def valid(self):
        """True while the lease may be relied on: held (not released, not
        revoked) and, for a cluster lease, before its deadline."""
        return self.held and (self.valid_until is None or
                              boottime() < self.valid_until)

    def remaining(self):
        """Seconds until a cluster lease's deadline (0.0 once past it or
        no longer held); None for a local lease held (no deadline)."""
        if not self.held:
            return 0.0
        if self.valid_until is None:
            return None
        return max(0.0, self.valid_until - boottime())

    def check(self):
        """Raise LeaseRevoked if the daemon ended this lease, or if it is a
        cluster lease past its deadline; call it before a write when the
        work under a lease is long."""
        if self.revoked is not None:
            raise self.revoked.error(self._client.socket_path)
        if (self.valid_until is not None and not self.released and
                boottime() >= self.valid_until):
            raise Revocation(self, "CLUSTER_LOST", (
                "its cluster deadline passed %.3f s ago without a renewal "
                "from the daemon: is arbiterd frozen, or cut off from etcd? "
                "Another host may hold the resource now" %
                (boottime() - self.valid_until))).error(
                    self._client.socket_path)

    def __repr__(self):
        state = ("released" if self.released else
                 "revoked:%s" % self.revoked.reason if self.revoked else
                 "held")
        return "<%s %r %s token=%d id=%d %s>" % (
            type(self).__name__, self.resource, self.mode, self.token,
            self.lease_id, state)


class LockCount:
    """The re-entrant count of a lock object (ArbiterLock, AsyncArbiterLock;
    one per thread or task) and the lease behind it.

    When the daemon ends the lease (revoke, ttl, lost connection) the lock
    is no longer held: the next acquire takes a new lease with a count of
    its own, and the acquires still open on the ended lease stay as debt:
    once the new lease's count is back to 0, each further release raises
    LeaseRevoked for the ended one (so an outer ``with lock:`` around an
    inner one that re-acquired reports that it was not protected
    throughout)."""

    def __init__(self):
        self.counter = 0
        self.lease = None
        self.void = 0           # open acquires of an ended lease
        self.void_lease = None

    @property
    def held(self):
        return (self.counter > 0 and self.lease is not None and
                self.lease.held)

    def reenter(self):
        """Count up when the lease is still held; False: take a lease."""
        if self.held:
            self.counter += 1
            return True
        return False

    def ended(self):
        """The lease the daemon ended while counted (to release, quietly,
        before taking a new one: that lets the next one in), or None."""
        if self.counter > 0 and self.lease is not None and \
                not self.lease.held:
            return self.lease
        return None

    def adopt(self, lease):
        """A new lease was taken: it starts a count of 1."""
        if self.counter > 0 and self.lease is not None:
            self.void += self.counter
            self.void_lease = self.lease
        self.counter = 1
        self.lease = lease

    def count_down(self, force=False):
        """One release (all with force): returns (lease to release now or
        None, ended lease to report or None)."""
        if force:
            self.void = 0
            self.void_lease = None
        if self.counter > 0:
            self.counter = 0 if force else self.counter - 1
            if self.counter > 0:
                return None, None
            lease, self.lease = self.lease, None
            return lease, None
        if self.void > 0:
            self.void -= 1
            ended = self.void_lease
            if self.void == 0:
                self.void_lease = None
            return None, ended
        return None, None


class CountView:
    """The state of a re-entrant lock object, read from its LockCount (the
    one of this thread or task, or of the object, as _count() gives it):
    shared by ArbiterLock, AsyncArbiterLock, FileLock and AsyncFileLock."""

    @property
    def is_locked(self):
        """True while this object (this thread's or task's share) holds the
        lease: False as soon as the daemon ended it (the next acquire takes
        a new one)."""
        return self._count().held

    @property
    def lock_counter(self):
        return self._count().counter

    @property
    def lease(self):
        """The lease behind the lock (token, lease_id...) or None."""
        return self._count().lease

    def _count_down(self, force):
        """One release (all with force): the lease to release now, or None.
        Raises LeaseRevoked when it ends the count of a lease the daemon
        ended."""
        lease, ended = self._count().count_down(force)
        if ended is not None:
            ended.check()
        return lease


class LeaseContextBase:
    """Client.lease() and AsyncClient.lease(): acquire(*args[0],
    **args[1]) on entry, release on exit."""

    __slots__ = ("_client", "_args", "_lease")

    def __init__(self, client, args):
        self._client = client
        self._args = args
        self._lease = None


class LockBase(CountView):
    """What ArbiterLock and AsyncArbiterLock share: their arguments, the
    re-entrant count around the lease (a LockCount per thread or task, given
    by _count()) and the steps of acquire and release on it."""

    def _setup(self, resource, timeout, shared, ttl, blocking, on_revoked,
               socket_path, trust_uids):
        self._raw, self.resource = check_name(resource)
        self.timeout = timeout
        self.blocking = blocking
        self.shared = shared
        self.ttl = ttl
        self.on_revoked = on_revoked
        self._socket_path = socket_path
        self._trust_uids = trust_uids

    def _wait_for(self, timeout, blocking):
        """The timeout of acquire(timeout, blocking): None takes the
        object's; blocking=False (or the object's) tries once."""
        if timeout is None:
            timeout = self.timeout
        if blocking is None:
            blocking = self.blocking
        return timeout if blocking else 0

    def _take_args(self, timeout):
        """The client's acquire() arguments for a new lease."""
        return ((self._raw, self.shared, timeout, self.ttl),
                {"on_revoked": self.on_revoked})

    def __repr__(self):
        return "<%s %r %s counter=%d>" % (
            type(self).__name__, self.resource,
            "locked" if self.is_locked else "unlocked", self.lock_counter)



# ------------------------------------------------------------ stats, status

# Both are built from the messages' descriptors, not from lists of their
# fields kept here, so a figure the daemon adds to arbiter.proto reaches
# these dicts with no change. The rules are those of `arbiterctl stats
# --json` (arbiterctl.c): fields in field-number order; the elements of a
# repeated message are keyed by their first field when that is a string
# (the resource name), else listed; a message whose float fields all end in
# "_seconds" (a Histogram) moves the unit to its own key (wait ->
# wait_seconds holding count, sum, mean, max, p50, p90, p99); enums by
# their lower-case name; bytes (the paging cursor) left out.

_SECONDS = "_seconds"
_PLANS = {}


def _plan(desc, spread, strip, keyed):
    """How to render each field of a message, worked out once per message
    type and way: (kind, field, output name, arg), arg being the key field
    of a listed message's elements, or whether a submessage's unit moved
    to its key. keyed: the message is named by its first field elsewhere
    (an element of a keyed list, the total), which is then left out."""
    plan = _PLANS.get((desc.full_name, spread, strip, keyed))
    if plan is not None:
        return plan
    fields = sorted(desc.fields, key=lambda f: f.number)
    plan, late = [], []
    for i, f in enumerate(fields):
        rep = f.label == f.LABEL_REPEATED
        msg = f.type == f.TYPE_MESSAGE
        if f.type == f.TYPE_BYTES or (keyed and i == 0 and _is_key(f)):
            continue
        if msg and rep:
            (late if spread else plan).append(
                ("listed", f, f.name, _key_field(f.message_type)))
        elif msg and spread and _is_total(desc, f):
            plan.append(("spread", f, None, None))
        elif msg:
            unit = _in_seconds(f.message_type)
            plan.append(("message", f, f.name + (_SECONDS if unit else ""),
                         unit))
        else:
            name = f.name
            if strip and name.endswith(_SECONDS):
                name = name[:-len(_SECONDS)]
            plan.append(("repeated" if rep else "scalar", f, name, None))
    plan = _PLANS[(desc.full_name, spread, strip, keyed)] = plan + late
    return plan


def _is_total(desc, f):
    """The top level's total: the single message of the type its repeated
    message field lists (Stats.total beside Stats.resources). Any other
    single message (Stats.cluster) keeps its own key."""
    return any(g.type == g.TYPE_MESSAGE and g.label == g.LABEL_REPEATED and
               g.message_type is f.message_type for g in desc.fields)


def _is_key(f):
    return f.type == f.TYPE_STRING and f.label != f.LABEL_REPEATED


def _key_field(desc):
    first = min(desc.fields, key=lambda f: f.number, default=None)
    return first.name if first is not None and _is_key(first) else None


def _in_seconds(desc):
    floats = [f.name for f in desc.fields
              if f.type in (f.TYPE_DOUBLE, f.TYPE_FLOAT)]
    return bool(floats) and all(n.endswith(_SECONDS) for n in floats)


def _scalar(f, v):
    if f.type == f.TYPE_ENUM:
        e = f.enum_type.values_by_number.get(v)
        return e.name.lower() if e is not None else "unknown"
    return v


def _message_dict(m, spread=False, strip=False, keyed=True):
    """m's fields as a dict. spread: the top level of a reply, where the
    total is spread over the dict and a repeated message comes last;
    strip: the unit went to the parent's key; keyed: see _plan."""
    d = {}
    for kind, f, name, arg in _plan(m.DESCRIPTOR, spread, strip, keyed):
        v = getattr(m, f.name)
        if kind == "scalar":
            d[name] = _scalar(f, v)
        elif kind == "listed" and arg is None:
            d[name] = [_message_dict(e) for e in v]
        elif kind == "listed":
            d[name] = {getattr(e, arg): _message_dict(e) for e in v}
        elif kind == "spread":
            d.update(_message_dict(v))
        elif kind == "message" and not arg and not m.HasField(f.name):
            continue    # absent, and no histogram: Stats.cluster off cluster
        elif kind == "message":
            d[name] = _message_dict(v, strip=arg, keyed=False)
        else:
            d[name] = [_scalar(f, x) for x in v]
    return d


def stats_dict(s):
    """A Stats message as the dict `arbiterctl stats --json` prints: the
    total's figures at the top level, then connections, storage_locked,
    role, uptime_seconds, resources_omitted, resources_tracked and every
    other field of Stats, and `resources` keyed by name."""
    return _message_dict(s, spread=True)


def status_dict(s):
    """A Status message as the dict `arbiterctl status --json` prints (plus
    connection_id per holder and waiter, and each waiter's position). Per
    resource every field of ResourceStatus (delayed_us, holders, waiters,
    holders_omitted, waiters_omitted: the ones past the 1000 listed;
    cluster_state and hosts, a cluster resource's hosts in queue order).
    In cluster mode also ``cluster``: the host's etcd session (state,
    host_id, endpoint, lease_id, valid_for_ms, ...)."""
    res = {}
    for r in s.resources:
        e = res[r.resource] = _message_dict(r)
        e["waiters"] = [dict(position=i + 1, **w)
                        for i, w in enumerate(e["waiters"])]
        # A cluster resource's hosts in queue order (holding ones first),
        # as a list like the waiters.
        e["hosts"] = [dict(host_id=h.host_id, **_message_dict(h))
                      for h in r.hosts]
    d = {"role": s.role, "pid": s.pid, "version": s.server_version,
         "storage": s.storage_path, "storage_holder": s.storage_holder,
         "connections": s.connections, "resources": res}
    if s.HasField("cluster"):
        d["cluster"] = _message_dict(s.cluster, keyed=False)
    return d
