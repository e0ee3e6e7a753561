"""A fake arbiterd in cluster mode, for the clients' deadline tests.

Run as its own process (so that a test can freeze it with SIGSTOP):

    python3 fake_cluster.py SOCKET PB_DIR [--valid-ms MS] [--extend-ms MS]
        [--extends N] [--hosts-ahead N] [--fail CODE] [--revoke-ms MS]

PB_DIR holds arbiter_pb2.py. It listens on SOCKET (as the caller's uid, so
the clients' trust check passes), answers Hello with Welcome(cluster=true),
and every Acquire with Granted(valid_until_ns = CLOCK_BOOTTIME now +
--valid-ms), after a Queued with --hosts-ahead when that is given, or with
the Error --fail names (e.g. UNAVAILABLE). After a grant it sends Extended
every --extend-ms, each moving the deadline to now + --valid-ms, --extends
times; then it goes silent, connection kept. With --revoke-ms it revokes
the lease that long after the grant instead (reason CLUSTER_LOST). Release, Ping, Stats and
Status are answered (Stats and Status with cluster parts: see canned_*).

It tells the test what happens on stdout, one line each, flushed:
"ready", "hello", "granted LEASE VALID_UNTIL_NS", "extended N
VALID_UNTIL_NS", "silent" (after the last Extended), "revoked", "release",
"close".
"""
import argparse
import os
import selectors
import socket
import sys
import time


def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


def boottime_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def canned_cluster(pb):
    return pb.Cluster(
        state="active", host_id="node-a", endpoint="http://127.0.0.1:2379",
        lease_id=0x694d7a1c3f6b1e05, valid_for_ms=2500, sessions=3,
        session_losses=1, etcd_errors=4, failovers=2,
        keepalive_rtt=pb.Histogram(count=9, sum_seconds=0.009,
                                   mean_seconds=0.001, max_seconds=0.002,
                                   p50_seconds=0.001, p90_seconds=0.002,
                                   p99_seconds=0.002),
        message="")


def canned_stats(pb):
    def figures(name):
        return pb.ResourceStats(
            resource=name, acquired_immediate=5, revoked_cluster_lost=3,
            cluster_yields=2, total_acquisitions=5,
            cluster_wait=pb.Histogram(count=4, sum_seconds=0.02,
                                      mean_seconds=0.005, max_seconds=0.01,
                                      p50_seconds=0.004, p90_seconds=0.01,
                                      p99_seconds=0.01),
            cluster_hold=pb.Histogram(count=4))
    return pb.Stats(total=figures(""), resources=[figures("db")],
                    connections=1, storage_locked=True, role="active",
                    uptime_seconds=12.0, resources_tracked=1,
                    cluster=canned_cluster(pb))


def canned_status(pb):
    hosts = [
        pb.ClusterHost(host_id="node-a", pid=101, mode=pb.SHARED,
                       holding=True, create_revision=41, holders=2,
                       waiters=0),
        pb.ClusterHost(host_id="node-b", pid=202, mode=pb.SHARED,
                       holding=True, create_revision=44, holders=1,
                       waiters=0),
        pb.ClusterHost(host_id="node-c", pid=303, mode=pb.EXCLUSIVE,
                       holding=False, create_revision=57, holders=0,
                       waiters=3),
        pb.ClusterHost(host_id="node-d", pid=404, mode=pb.SHARED,
                       holding=False, create_revision=60, holders=0,
                       waiters=1),
    ]
    r = pb.ResourceStatus(
        resource="db", cluster_state="owned", hosts=hosts,
        holders=[pb.Holder(lease_id=7, mode=pb.SHARED, pid=4242, uid=0,
                           client_name="reader", held_us=1500, token=9)])
    return pb.Status(resources=[r], role="active", storage_path="/st",
                     connections=1, pid=os.getpid(), server_version="fake",
                     resources_total=1, holders_total=1,
                     cluster=canned_cluster(pb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("socket")
    ap.add_argument("pb_dir")
    ap.add_argument("--valid-ms", type=int, default=1000)
    ap.add_argument("--extend-ms", type=int, default=100)
    ap.add_argument("--extends", type=int, default=0)
    ap.add_argument("--hosts-ahead", type=int, default=None)
    ap.add_argument("--fail", default=None)
    ap.add_argument("--revoke-ms", type=int, default=None)
    a = ap.parse_args()
    sys.path.insert(0, a.pb_dir)
    import arbiter_pb2 as pb

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(a.socket)
    srv.listen(8)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    bufs = {}
    extending = []      # [conn, lease id, resource, sends left, due (mono)]
    revoking = []       # [conn, lease id, resource, due (mono)]
    next_lease = [100]
    say("ready")

    def send(conn, req_id, **kind):
        data = pb.ServerMessage(id=req_id, **kind).SerializeToString()
        try:
            conn.sendall(len(data).to_bytes(4, "big") + data)
        except OSError:
            pass

    def answer(conn, req):
        kind = req.WhichOneof("kind")
        if kind == "hello":
            say("hello")
            send(conn, req.id, welcome=pb.Welcome(
                protocol_version=1, server_version="fake-cluster",
                cluster=True))
        elif kind == "acquire":
            name = req.acquire.resource.decode()
            lease = next_lease[0]
            next_lease[0] += 1
            if a.fail:
                send(conn, req.id, error=pb.Error(
                    code=pb.ErrorCode.Value(a.fail),
                    message="cluster resource %r: etcd at "
                            "http://127.0.0.1:1 cannot be reached" % name))
                say("failed")
                return
            if a.hosts_ahead is not None:
                send(conn, req.id, queued=pb.Queued(
                    lease_id=lease, position=1, holder_pid=0,
                    resource=name, hosts_ahead=a.hosts_ahead))
            until = boottime_ns() + a.valid_ms * 1000000
            send(conn, req.id, granted=pb.Granted(
                lease_id=lease, token=(1 << 62) + (41 << 20) + 1,
                resource=name, mode=req.acquire.mode,
                valid_until_ns=until))
            say("granted", lease, until)
            if a.revoke_ms is not None:
                revoking.append([conn, lease, name,
                                 time.monotonic() + a.revoke_ms / 1000])
            elif a.extends > 0:
                extending.append([conn, lease, name, a.extends,
                                  time.monotonic() + a.extend_ms / 1000])
            else:
                say("silent")
        elif kind == "release":
            say("release")
            for e in list(extending):
                if e[0] is conn:
                    extending.remove(e)
            send(conn, req.id, released=pb.Released(
                lease_id=req.release.lease_id))
        elif kind == "ping":
            send(conn, req.id, pong=pb.Pong(role="active"))
        elif kind == "stats":
            send(conn, req.id, stats=canned_stats(pb))
        elif kind == "status":
            send(conn, req.id, status=canned_status(pb))
        elif kind == "convert":
            send(conn, req.id, converted=pb.Converted(
                lease_id=req.convert.lease_id, token=5,
                mode=req.convert.mode,
                valid_until_ns=boottime_ns() + a.valid_ms * 1000000))
        else:
            send(conn, req.id, error=pb.Error(
                code=pb.BAD_REQUEST, message="the fake does not do that"))

    while True:
        timeout = None
        dues = [e[4] for e in extending] + [e[3] for e in revoking]
        if dues:
            timeout = max(0.0, min(dues) - time.monotonic())
        for key, _ in sel.select(timeout):
            s = key.fileobj
            if s is srv:
                conn, _ = srv.accept()
                bufs[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                del bufs[s]
                extending[:] = [e for e in extending if e[0] is not s]
                revoking[:] = [e for e in revoking if e[0] is not s]
                say("close")
                continue
            buf = bufs[s] + data
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + n:
                    break
                req = pb.Request()
                req.ParseFromString(buf[4:4 + n])
                buf = buf[4 + n:]
                answer(s, req)
            bufs[s] = buf
        now = time.monotonic()
        for e in list(revoking):
            if e[3] <= now:
                send(e[0], 0, revoked=pb.Revoked(
                    lease_id=e[1], reason=pb.CLUSTER_LOST, resource=e[2],
                    message="the etcd session of host node-a was not "
                            "renewed before its deadline"))
                revoking.remove(e)
                say("revoked")
        for e in list(extending):
            if e[4] > now:
                continue
            until = boottime_ns() + a.valid_ms * 1000000
            send(e[0], 0, extended=pb.Extended(
                lease_id=e[1], valid_until_ns=until, resource=e[2]))
            e[3] -= 1
            say("extended", a.extends - e[3], until)
            e[4] = now + a.extend_ms / 1000
            if e[3] == 0:
                extending.remove(e)
                say("silent")


if __name__ == "__main__":
    main()


# ------------------------------------------------------------ for tests

class FakeCluster:
    """The fake as a child process of a test: path is its socket; expect()
    reads its report lines (never sleeping: select on its stdout)."""

    started = 0     # fakes made in this process: each its own socket name

    def __init__(self, folder, pb_dir, *args):
        import subprocess
        FakeCluster.started += 1
        self.path = os.path.join(folder, "fake%d.sock" % FakeCluster.started)
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), self.path, pb_dir] +
            [str(x) for x in args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE)
        self.pid = self.proc.pid
        self._buf = b""
        self.lines = []
        self.expect("ready")

    def expect(self, prefix, timeout=20.0, unless=None):
        """The next report line starting with prefix (earlier ones are
        skipped but kept in lines); AssertionError when none comes, or
        when a line starting with unless comes first."""
        import select
        end = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                line = line.decode()
                self.lines.append(line)
                if line.startswith(prefix):
                    return line
                if unless is not None and line.startswith(unless):
                    raise AssertionError("the fake said %r before %r: %r" %
                                         (line, prefix, self.lines))
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError("the fake said no %r within %g s: %r" %
                                     (prefix, timeout, self.lines))
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError("the fake ended without %r: %r" %
                                     (prefix, self.lines))
            self._buf += chunk

    def stop(self):
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)   # if a test froze it
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
