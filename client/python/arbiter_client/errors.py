"""Exceptions of arbiter_client.

Every exception the client raises on purpose is an :class:`ArbiterError`.
Each one says what went wrong and what to do, names the daemon's socket,
and carries the daemon's own message when the daemon sent one:

========================  =====================================================
``NotRunning``            no daemon at the socket path (nothing to connect to)
``ConnectionLost``        an open connection to the daemon closed or broke
``ShuttingDown``          the daemon is stopping (a ``ConnectionLost``)
``ProtocolError``         the daemon and client do not understand each other
``UntrustedServer``       the socket's folder or the server's uid is not one
                          this client trusts (also a ``PermissionError``)
``Forbidden``             the daemon refused this uid/gid, or an admin request
``Timeout``               ``timeout`` ran out while waiting (a
                          ``TimeoutError``, like ``filelock.Timeout``)
``WouldBlock``            try-lock (``timeout=0``, ``blocking=False``) found
                          the resource busy (a ``Timeout``)
``Cancelled``             the pending acquire was withdrawn by an admin
``AlreadyHeld``           this connection/thread already holds or waits for it
``Deadlock``              an upgrade refused: another holder already waits to
                          upgrade, and each would wait for the other for ever
``Unavailable``           a cluster resource while the daemon cannot reach
                          etcd (``cluster.when_unavailable = fail``): retry
``InvalidName``           resource name not 1..255 bytes of printable UTF-8
                          (also a ``ValueError``)
``LeaseRevoked``          a lease ended without the holder asking (TTL expiry,
                          admin revoke, daemon shutdown, lost connection)
========================  =====================================================

Attributes on every ArbiterError: ``code`` (the daemon's ErrorCode name such
as ``"TIMEOUT"``, or None), ``daemon_message`` (the daemon's text or None),
``socket_path`` and ``resource`` (None when not about one resource).
"""


class ArbiterError(Exception):
    """Base class of every error arbiter_client raises."""

    def __init__(self, message, *, code=None, daemon_message=None,
                 socket_path=None, resource=None):
        super().__init__(message)
        self.code = code
        self.daemon_message = daemon_message
        self.socket_path = socket_path
        self.resource = resource


class NotRunning(ArbiterError):
    """No arbiter daemon answers at the socket path."""


class ConnectionLost(ArbiterError):
    """The connection to the daemon closed; its leases are gone."""


class ShuttingDown(ConnectionLost):
    """The daemon is stopping; it will close the connection."""


class ProtocolError(ArbiterError):
    """The daemon sent something this client cannot read, or refused what
    the client sent as malformed (version mismatch or a bug)."""


class UntrustedServer(ArbiterError, PermissionError):
    """The socket is served by a uid this client does not trust, or the
    default socket's folder could let another user answer as arbiterd.
    ``uid`` is the server's uid (or the folder's owner), ``user`` its user
    name (None without one), ``folder`` the folder at fault (or None).
    Trust a server's uid with $ARBITER_TRUST_UID or ``trust_uids=``."""

    def __init__(self, message, *, uid=None, folder=None, **kw):
        super().__init__(message, **kw)
        self.uid = uid
        self.folder = folder
        self.user = None
        if uid is not None:
            from ._trust import user_name
            self.user = user_name(uid)


class Forbidden(ArbiterError):
    """The daemon does not allow this uid/gid, or the request needs an
    admin."""


class Timeout(ArbiterError, TimeoutError):
    """Waiting for a resource ran out of time (subclass of TimeoutError, so
    code written for ``filelock.Timeout`` keeps working when it catches
    TimeoutError)."""


class WouldBlock(Timeout):
    """A try-lock (timeout=0, blocking=False) found the resource busy."""


class Cancelled(ArbiterError):
    """The pending acquire was withdrawn (by an administrator)."""


class AlreadyHeld(ArbiterError):
    """This connection (or this very thread/task) already holds or waits for
    the resource: a second lease on it would wait for itself forever."""


class Deadlock(ArbiterError):
    """``lease.upgrade()`` was refused at once: another holder of the
    resource already waits to upgrade, and each would wait for the other to
    leave. The lease is still held shared; release it (the other upgrade
    then proceeds) and acquire the resource exclusive anew."""


class Unavailable(ArbiterError):
    """A cluster resource cannot be granted now: the daemon cannot reach
    etcd, or the cluster refuses grants (the daemon's
    ``cluster.when_unavailable = fail``; with ``queue`` the acquire waits
    instead). The message names the endpoints; retry later."""


class InvalidName(ArbiterError, ValueError):
    """A resource name is empty, longer than 255 bytes or not printable
    UTF-8."""


class LeaseRevoked(ArbiterError):
    """A lease ended without the holder asking.

    ``reason`` is one of ``"EXPIRED"`` (ttl ran out without a renew),
    ``"ADMIN"`` (arbiterctl revoke), ``"SHUTDOWN"`` (the daemon stopped),
    ``"STORAGE_LOST"``, ``"DISCONNECT"`` (the connection to the daemon was
    lost) or ``"CLUSTER_LOST"`` (a cluster lease past its deadline: the
    daemon's etcd session was not renewed in time; ``lease.check()`` also
    raises it when the deadline passed and the daemon said nothing).
    ``lease`` is the :class:`~arbiter_client.Lease` concerned.
    """

    def __init__(self, message, *, reason=None, lease=None, **kw):
        super().__init__(message, **kw)
        self.reason = reason
        self.lease = lease


__all__ = [
    "ArbiterError", "NotRunning", "ConnectionLost", "ShuttingDown",
    "ProtocolError", "Forbidden", "Timeout", "WouldBlock", "Cancelled",
    "AlreadyHeld", "InvalidName", "LeaseRevoked", "UntrustedServer",
    "Deadlock", "Unavailable",
]
