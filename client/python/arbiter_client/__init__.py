"""arbiter_client: the Python client of arbiterd.

arbiterd lends named locks ("leases") to local processes over a Unix socket;
a lease dies with its holder's connection, so a crash never leaves a stale
lock. Quick use::

    from arbiter_client import Client

    with Client() as arb:                      # $ARBITER_SOCKET or default
        with arb.lease("qdrant", timeout=30) as lease:
            ...                                # exclusive until the block ends

    from arbiter_client import FileLock        # drop-in for filelock's
    lock = FileLock("/data/app.db.lock", timeout=10)  # no file is made
    with lock:
        ...

    from arbiter_client import AsyncClient     # asyncio
    async with AsyncClient() as arb:
        async with arb.lease("index", shared=True) as lease:
            ...

See README.md for the recipes and the threading rules.
"""
from ._proto import (EXCLUSIVE, PROTOCOL_VERSION, SHARED, BaseLease,
                     Revocation, default_socket_path, resolve_socket_path)
from ._sync import ArbiterLock, Client, Lease, QueueInfo, default_client
from ._async import AsyncArbiterLock, AsyncClient, AsyncLease
from ._filelock import (AsyncFileLock, FileLock, FileLockTimeout,
                        LockDeadlock)
from .errors import (AlreadyHeld, ArbiterError, Cancelled, ConnectionLost,
                     Deadlock, Forbidden, InvalidName, LeaseRevoked, NotRunning,
                     ProtocolError, ShuttingDown, Timeout, Unavailable,
                     UntrustedServer, WouldBlock)

__version__ = "0.1.0"

__all__ = [
    "Client", "AsyncClient", "Lease", "AsyncLease", "BaseLease",
    "ArbiterLock", "AsyncArbiterLock", "Revocation", "QueueInfo",
    "FileLock", "AsyncFileLock", "FileLockTimeout", "LockDeadlock",
    "default_client", "default_socket_path", "resolve_socket_path",
    "EXCLUSIVE", "SHARED", "PROTOCOL_VERSION",
    "ArbiterError", "NotRunning", "ConnectionLost", "ShuttingDown",
    "ProtocolError", "Forbidden", "Timeout", "WouldBlock", "Cancelled",
    "AlreadyHeld", "InvalidName", "LeaseRevoked", "UntrustedServer",
    "Deadlock", "Unavailable",
]
