"""Who serves the socket: the trust rule every arbiter client applies (the
C client applies the very same one).

1. When the socket path is the default one (no argument, no
   $ARBITER_SOCKET), its folder (/tmp/arbiter-UID, or /run/arbiter for root)
   must be a real directory (not a symlink) owned by the caller and not
   writable by group or others; else the client refuses before connecting.
2. After connect, before Hello, for every path: the server's uid
   (SO_PEERCRED) is trusted when it is the caller's effective uid, root, a
   uid listed in $ARBITER_TRUST_UID or in the client's ``trust_uids=``
   (uids or user names; ``*`` trusts any uid, which turns the check off),
   or the owner of the socket's folder when that folder is a real directory
   not writable by group or others inside a folder owned by root and not
   writable by group or others (only root can have handed it over: the
   systemd RuntimeDirectory case).

The decisions are pure functions of stat results and uids; the two small
helpers at the end read those (lstat, getsockopt) for both transports.
"""
import os
import pwd
import socket
import stat
import struct

from . import errors as E

ENV = "ARBITER_TRUST_UID"
_UCRED = struct.Struct("3i")   # struct ucred: pid, uid, gid


def user_name(uid):
    """The user name of uid, or None when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def who(uid):
    """"uid 1001 (mallory)", or "uid 1001" for a uid without a name."""
    name = user_name(uid)
    return "uid %d (%s)" % (uid, name) if name else "uid %d" % uid


# ------------------------------------------------------------ trust lists

def parse_trust(value, what=ENV):
    """A trust list (a comma-separated string, or an iterable of uids and
    user names) as (set of uids, any_uid, [entries not understood, as
    "WHAT has 'entry'"])."""
    if value is None:
        return set(), False, []
    if isinstance(value, (str, bytes)):
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        items = value.split(",")
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    else:
        items = list(value)
    uids, bad = set(), []
    label = "%s has" % what
    any_uid = False
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if item >= 0:
                uids.add(item)
            else:
                bad.append("%s %r" % (label, item))
            continue
        text = str(item).strip()
        if not text:
            continue
        if text == "*":
            any_uid = True
        elif text.isdigit():
            uids.add(int(text))
        else:
            try:
                uids.add(pwd.getpwnam(text).pw_uid)
            except KeyError:
                bad.append("%s %r" % (label, text))
    return uids, any_uid, bad


# ------------------------------------------------------------ decisions

def folder_problem(path, folder, st, uid, parent_st=None):
    """Why the default socket folder (its lstat result st, None when it
    does not exist; parent_st, the stat of its parent) cannot be trusted by
    a caller of this uid; None when it can (or does not exist: then no
    daemon runs there). A folder root handed to a service (systemd's
    /run/arbiter for a daemon of its own user, rule d) is as safe as the
    caller's own."""
    if st is None:
        return None
    mode = st.st_mode
    if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
        return ("refusing %s: its folder %s is %s, not a folder of yours, so "
                "another user could be answering as arbiterd. Remove it (rm "
                "%s) and restart arbiterd, or name a socket you trust with "
                "ARBITER_SOCKET." % (
                    path, folder, "a symbolic link" if stat.S_ISLNK(mode)
                    else "a file", folder))
    if st.st_uid != uid and not delegated_by_root(st.st_uid, st, parent_st):
        return ("refusing %s: its folder %s belongs to %s, not to you (uid "
                "%d), so another user could be answering as arbiterd. Remove "
                "it (rm -r %s) and restart arbiterd, or name a socket you "
                "trust with ARBITER_SOCKET." % (path, folder, who(st.st_uid),
                                                uid, folder))
    if mode & 0o022:
        by = ("group and others" if mode & 0o020 and mode & 0o002 else
              "its group" if mode & 0o020 else "others")
        return ("refusing %s: its folder %s is writable by %s (mode %04o), "
                "so another user could be answering as arbiterd. Close it "
                "(chmod go-w %s) or remove it (rm -r %s) and restart "
                "arbiterd, or name a socket you trust with ARBITER_SOCKET." %
                (path, folder, by, stat.S_IMODE(mode), folder, folder))
    return None


def _private_dir(st):
    return (st is not None and stat.S_ISDIR(st.st_mode) and
            not st.st_mode & 0o022)


def delegated_by_root(peer_uid, folder_st, parent_st):
    """Rule d: the server's uid owns the socket's folder, a real directory
    not writable by group or others, inside a folder owned by root and not
    writable by group or others."""
    return (_private_dir(folder_st) and folder_st.st_uid == peer_uid and
            _private_dir(parent_st) and parent_st.st_uid == 0)


def peer_problem(path, peer_uid, euid, trust, folder_st=None,
                 parent_st=None):
    """Why a server of peer_uid on path is not trusted by a caller of
    effective uid euid with trust = (uids, any_uid, bad entries) from the
    caller's option and $ARBITER_TRUST_UID; None when it is trusted."""
    uids, any_uid, bad = trust
    if peer_uid == euid or peer_uid == 0 or any_uid or peer_uid in uids:
        return None
    if delegated_by_root(peer_uid, folder_st, parent_st):
        return None
    name = user_name(peer_uid)
    runs_as = "uid %d (%s)" % (peer_uid, name) if name else "uid %d" % \
        peer_uid
    msg = ("refusing the server on %s: it runs as %s, not as you (uid %d) "
           "or root. If uid %d runs your arbiterd, trust it with "
           "ARBITER_TRUST_UID=%d (Python: trust_uids=[%d])" %
           (path, runs_as, euid, peer_uid, peer_uid, peer_uid))
    if bad:
        return msg + ("; note: %s, which is neither a uid nor a user name." %
                      "; ".join(bad))
    return msg + "."


# ------------------------------------------------------------ reading them

def _lstat(p):
    try:
        return os.lstat(p)
    except OSError:
        return None


def _stat(p):
    try:
        return os.stat(p)
    except OSError:
        return None


def check_default_folder(path):
    """Raise UntrustedServer when path is the default socket and its folder
    is not the caller's own private folder (call before connecting)."""
    uid = os.getuid()
    folder = os.path.dirname(path)
    msg = folder_problem(path, folder, _lstat(folder), uid,
                         _stat(os.path.join(folder, "..")))
    if msg:
        st = _lstat(folder)
        raise E.UntrustedServer(msg, socket_path=path, folder=folder,
                                uid=st.st_uid if st else None)


def trust_of(trust_uids):
    """The caller's option plus $ARBITER_TRUST_UID, parsed."""
    a_uids, a_any, a_bad = parse_trust(trust_uids, "trust_uids")
    e_uids, e_any, e_bad = parse_trust(os.environ.get(ENV))
    return a_uids | e_uids, a_any or e_any, a_bad + e_bad


def peer_uid(sock):
    """The uid of the process that made the listening socket; None when
    the socket is not connected (a connect to a full listen queue that
    asyncio took for done)."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                           _UCRED.size)
    pid, uid, _ = _UCRED.unpack(data)
    if uid == -1 or (pid == 0 and uid == 0 and _not_connected(sock)):
        return None             # no peer: (uid_t)-1
    return uid & 0xFFFFFFFF     # uid_t is unsigned


def _not_connected(sock):
    try:
        sock.getpeername()
        return False
    except OSError:
        return True


def check_peer(sock, path, trust_uids):
    """Raise UntrustedServer unless the server at the other end of the
    connected sock is trusted (call before sending Hello)."""
    try:
        uid = peer_uid(sock)
    except OSError as exc:
        raise E.UntrustedServer(
            "refusing the server on %s: cannot learn its uid (SO_PEERCRED: "
            "%s)" % (path, exc), socket_path=path) from None
    if uid is None:
        raise E.NotRunning(
            "arbiterd on %s does not accept the connection: its listen queue "
            "is full (is it stopped or overloaded?). Check the daemon "
            "(`arbiterctl -S %s status`) and retry" % (path, path),
            socket_path=path)
    euid = os.geteuid()
    if uid == euid or uid == 0:
        return uid
    trust = trust_of(trust_uids)       # user names are looked up only now
    if trust[1] or uid in trust[0]:
        return uid
    folder = os.path.dirname(path) or "."
    # When the folder is no link, its ".." is its real parent.
    msg = peer_problem(path, uid, euid, trust, _lstat(folder),
                       _stat(os.path.join(folder, "..")))
    if msg:
        raise E.UntrustedServer(msg, socket_path=path, uid=uid)
    return uid
