"""Big replies: status and stats at the documented limits, closing text
sessions that still have a reply to read, coalesced queue-position updates,
and the bound on output buffered across all connections."""
import json
import os
import socket
import struct
import time

import pytest

import harness
from harness import WAIT, Daemon, Wire, connect_raw, pb, read_all

MANY = 100_000


def frames(s, buf):
    """Yield ServerMessages read from s; buf is a bytearray kept between
    calls. Slices by offset, so reading 100,000 frames stays linear."""
    off = 0
    while True:
        while len(buf) - off >= 4:
            (n,) = struct.unpack_from(">I", buf, off)
            if len(buf) - off < 4 + n:
                break
            m = pb.ServerMessage()
            m.ParseFromString(bytes(buf[off + 4:off + 4 + n]))
            off += 4 + n
            yield m
        del buf[:off]
        off = 0
        chunk = s.recv(1 << 20)
        if not chunk:
            return
        buf += chunk


def hold_many(path, n, name_len=12, prefix="r", per_conn=1000,
              deadline=None):
    """Connections that hold n leases on n distinct resources, per_conn each,
    acquired in pipelined batches. Returns the Wires (closing them drops the
    leases)."""
    wires = []
    done = 0
    while done < n:
        w = Wire(path, name="holder")
        wires.append(w)
        it = frames(w.s, bytearray())
        mine = 0
        while mine < per_conn and done < n:
            k = min(5000, n - done, per_conn - mine)
            out = bytearray()
            for i in range(done, done + k):
                name = ("%s%09d" % (prefix, i)).ljust(name_len, "x")
                w.next_id += 1
                req = pb.Request(id=w.next_id, acquire=pb.Acquire(
                    resource=name.encode(), quiet=True))
                data = req.SerializeToString()
                out += struct.pack(">I", len(data)) + data
            w.s.sendall(out)
            for _ in range(k):
                m = next(it)
                assert m.WhichOneof("kind") == "granted", m
            done += k
            mine += k
            assert deadline is None or time.monotonic() < deadline, \
                "only %d leases held in time" % done
    return wires


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A daemon with 100,000 leases held by one connection."""
    tmp = tmp_path_factory.mktemp("big")
    d = Daemon(tmp, args=["-o", "log.level=info"])
    ws = hold_many(d.socket, MANY, name_len=40)
    yield d
    for w in ws:
        w.close()
    harness.check_clean_exit(d)


def test_one_connection_holds_100000_leases_in_linear_time(tmp_path):
    """Up to limits.max_leases_per_connection on one connection: each
    Acquire checks the connection's own leases, which must not cost a walk
    over all of them."""
    d = Daemon(tmp_path, args=["-o", "limits.max_leases_per_connection=200000",
                               "-o", "log.level=info"])
    try:
        ws = hold_many(d.socket, MANY, per_conn=MANY,
                       deadline=time.monotonic() + 30 * harness.SLOW)
        st = ws[0].call(status=pb.StatusRequest(resource=b"r000000007"
                                                + b"x" * 2))
        assert st.WhichOneof("kind") == "status"
        ws[0].close()
    finally:
        harness.check_clean_exit(d)


# ---------------------------------------------------------- text closing


def test_text_status_then_quit_gets_the_whole_reply(big):
    s = connect_raw(big.socket)
    s.sendall(b"status\nquit\n")
    text = read_all(s).decode()
    s.close()
    assert text.count("\n# Resource ") == MANY
    assert text.count("\nholder:lease=") == MANY
    assert text.endswith("\n.\n")


def test_text_status_then_half_close_gets_the_whole_reply(big):
    s = connect_raw(big.socket)
    s.sendall(b"status\nping\n")
    s.shutdown(socket.SHUT_WR)
    text = read_all(s).decode()
    s.close()
    assert text.count("\n# Resource ") == MANY
    assert "resources:%d\n" % MANY in text
    # Lines sent after status are answered after its whole reply.
    assert text.endswith("\n.\npong active\n")


def test_text_half_close_with_nothing_pending_closes(tmp_path):
    d = Daemon(tmp_path)
    try:
        s = connect_raw(d.socket)
        s.sendall(b"ping\n")
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b"pong active\n"
        s.close()
    finally:
        harness.check_clean_exit(d)


def test_many_pipelined_status_commands_each_get_their_reply(tmp_path):
    """Each streamed reply starts once the previous one is out, however
    many commands wait behind it."""
    d = Daemon(tmp_path)
    try:
        s = connect_raw(d.socket)
        s.sendall(b"status\n" * 5000 + b"stats\n" * 100 + b"quit\n")
        assert read_all(s).count(b"\n.\n") == 5100
        s.close()
    finally:
        harness.check_clean_exit(d)


def test_closing_text_client_that_stops_reading_is_dropped(tmp_path):
    """The flush before close is bounded: a client that sends quit and
    reads nothing more is closed after limits.close_flush_ms."""
    d = Daemon(tmp_path, args=["-o", "limits.close_flush_ms=200"])
    try:
        s = connect_raw(d.socket)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # About 800 KB of replies, more than the socket buffers hold.
        s.sendall(b"help\n" * 2000 + b"quit\n")
        d.log.wait_for("within limits.close_flush_ms")
        try:
            got = read_all(s)
        except ConnectionResetError:
            got = b""
        assert len(got) < 2000 * 300
        s.close()
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------- binary clients


def test_arbiterctl_status_lists_100000_held_leases(big):
    r = big.ctl("status", timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if " holds " in l]
    assert len(lines) == MANY
    assert len({l.split()[0] for l in lines}) == MANY


def test_arbiterctl_status_json_lists_100000_held_leases(big):
    r = big.ctl("status", "--json", timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["resources"]) == MANY
    assert all(len(v["holders"]) == 1 for v in doc["resources"].values())


def test_arbiterctl_stats_merges_its_pages(big):
    r = big.ctl("stats", "--json", check=True)
    doc = json.loads(r.stdout)
    assert len(doc["resources"]) == 10000  # stats.max_resources
    assert doc["total_acquisitions"] == MANY


def test_status_pages_are_bounded_and_cover_everything(big):
    w = Wire(big.socket)
    seen = set()
    cursor = b""
    pages = 0
    while True:
        req = pb.StatusRequest(page_size=50_000)
        if cursor:
            req.cursor = cursor
        m = w.call(status=req)
        assert m.WhichOneof("kind") == "status", m
        st = m.status
        assert len(st.resources) <= 1000 + 50  # one bucket past the page
        assert st.resources_total == MANY
        seen.update(r.resource for r in st.resources)
        pages += 1
        cursor = st.next_cursor
        if not cursor:
            break
    w.close()
    assert len(seen) == MANY
    assert pages >= MANY // 1050


def import_python_client(tmp):
    """The Python client from this tree, with the build's generated
    arbiter_pb2 beside it (as its package build puts it)."""
    import importlib
    import shutil
    import sys
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                       "client", "python", "arbiter_client")
    dst = os.path.join(str(tmp), "arbiter_client")
    shutil.copytree(src, dst)
    shutil.copy(os.path.join(harness.BUILD, "gen", "python", "arbiter_pb2.py"),
                dst)
    sys.path.insert(0, str(tmp))
    try:
        return importlib.import_module("arbiter_client")
    finally:
        sys.path.remove(str(tmp))


def test_python_client_status_and_stats_fetch_every_page(big, tmp_path):
    Client = import_python_client(tmp_path).Client
    with Client(big.socket, name="pytest") as c:
        st = c.status()
        assert len(st["resources"]) == MANY
        stats = c.stats()
        assert len(stats["resources"]) == 10000  # stats.max_resources


# ----------------------------------------------------------- bystander


BYSTANDER = r"""
import socket, struct, sys, threading, time
sys.path.insert(0, sys.argv[2])
import arbiter_pb2 as pb
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
def frame(i, **kind):
    d = pb.Request(id=i, **kind).SerializeToString()
    return struct.pack(">I", len(d)) + d
s.sendall(frame(1, hello=pb.Hello(protocol_version=1, client_name=b"b")))
sent, lat, final = {}, [], []
def reader():
    buf = b""
    while True:
        while len(buf) >= 4:
            n = struct.unpack(">I", buf[:4])[0]
            if len(buf) < 4 + n:
                break
            m = pb.ServerMessage()
            m.ParseFromString(buf[4:4 + n])
            buf = buf[4 + n:]
            if m.id in sent:
                lat.append(time.monotonic() - sent.pop(m.id))
            if final and m.id == final[0]:
                return
        buf += s.recv(65536)
t = threading.Thread(target=reader)
t.start()
print("ready", flush=True)
i = 1
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set())).start()
while not stop.is_set():
    i += 1
    sent[i] = time.monotonic()
    s.sendall(frame(i, ping=pb.Ping()))
    time.sleep(0.002)  # the sampling rate
final.append(i + 1)
s.sendall(frame(i + 1, ping=pb.Ping()))
t.join()
print(" ".join("%.6f" % x for x in lat), flush=True)
"""


def test_bystander_ping_p99_stays_low_during_big_status(tmp_path):
    """Open-loop pings every 2 ms from a bystander process while big text
    and binary status replies are produced: a reply built in one go holds
    the loop for a quarter of a second and delays dozens of pings. (Output
    limits raised so that such a reply is not simply refused.)"""
    import subprocess
    import sys
    big = Daemon(tmp_path, args=["-o", "log.level=info",
                                 "-o", "limits.output_buffer_bytes=256M"])
    holders = hold_many(big.socket, MANY, name_len=200)
    p = subprocess.Popen([sys.executable, "-c", BYSTANDER, big.socket,
                          os.path.join(harness.BUILD, "gen", "python")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        failed = []
        took = []
        for _ in range(2):
            t0 = time.monotonic()
            s = connect_raw(big.socket)
            s.sendall(b"status\nquit\n")
            n = read_all(s).count(b"\n# Resource ")
            s.close()
            took.append(time.monotonic() - t0)
            if n != MANY:
                failed.append("text status listed %d" % n)
            r = big.ctl("status", "--json", timeout=120)
            if r.returncode != 0:
                failed.append("arbiterctl status: " + r.stderr)
        out, _ = p.communicate("", timeout=WAIT)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        for w in holders:
            w.close()
        harness.check_clean_exit(big)
    lat = sorted(float(x) for x in out.split())
    assert len(lat) > 100
    p99 = lat[int(len(lat) * 0.99)]
    print("bystander ping p99 %.1f ms, max %.1f ms over %d pings" %
          (p99 * 1e3, lat[-1] * 1e3, len(lat)))
    # 50 ms is the goal; 60 ms leaves room for a 2-core machine. A machine
    # so loaded that a whole text status takes over 0.3 s is judged against
    # that same run instead: a reply built in one go stalls the loop for
    # most of the time the status takes, so pings waiting a fifth of it
    # mean the loop was held.
    bound = max(0.060, min(took) / 5)
    assert p99 < bound, "ping p99 %.1f ms over %d pings (bound %.1f ms)" % (
        p99 * 1e3, len(lat), bound * 1e3)
    assert not failed, failed


# -------------------------------------------------------- queue updates


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drain_cpu(d, n, watched):
    """Queue n waiters behind one holder, then drain them in order; the
    daemon's CPU seconds for the drain."""
    holder = Wire(d.socket, name="holder")
    lease = holder.lock("q").lease_id
    ws = []
    for i in range(n):
        w = Wire(d.socket, name="w%d" % i)
        rid = w.acquire("q", position_updates=watched)
        # In queue order: each is queued before the next asks.
        assert w.wait_kind("queued", id=rid).queued.position == i + 1
        ws.append((w, rid))
    t0 = cpu_seconds(d.pid)
    holder.release(lease)
    for w, rid in ws:
        g = w.granted(rid)
        w.release(g.lease_id)
    used = cpu_seconds(d.pid) - t0
    for w, _ in ws:
        w.close()
    holder.close()
    return used


def test_queue_position_updates_cost_stays_linear(tmp_path):
    n = 1500
    d = Daemon(tmp_path, args=["-o", "log.level=info"])
    try:
        unwatched = drain_cpu(d, n, False)
        watched = drain_cpu(d, n, True)
    finally:
        harness.check_clean_exit(d)
    print("drain of %d waiters: unwatched %.3f s, watched %.3f s CPU" %
          (n, unwatched, watched))
    assert watched < 5 * max(unwatched, 0.05), (watched, unwatched)


def test_position_updates_still_arrive_coalesced(tmp_path):
    d = Daemon(tmp_path)
    try:
        holder = Wire(d.socket, name="holder")
        lease = holder.lock("q").lease_id
        ws = [Wire(d.socket, name="w%d" % i) for i in range(4)]
        rids = []
        for i, w in enumerate(ws):
            rids.append(w.acquire("q", position_updates=True))
            assert w.wait_kind("queued", id=rids[-1]).queued.position == i + 1
        last = ws[-1]
        # Two grants in a row: the last waiter moves from 4 to 2 and is told
        # so (once the interval has passed) with the latest position.
        holder.release(lease)
        g = ws[0].granted(rids[0])
        ws[0].release(g.lease_id)
        g = ws[1].granted(rids[1])
        pos = 4
        while pos != 2:
            pos = last.wait_kind("queued", id=rids[-1]).queued.position
        # Reaching the head is told at once.
        ws[1].release(g.lease_id)
        assert last.wait_kind("queued", id=rids[-1]).queued.position == 1
        ws[2].release(ws[2].granted(rids[2]).lease_id)
        assert last.granted(rids[-1]).lease_id
        for w in ws + [holder]:
            w.close()
    finally:
        harness.check_clean_exit(d)


# ------------------------------------------------------ global output cap


def test_global_output_cap_sheds_the_slowest_reader(tmp_path):
    d = Daemon(tmp_path, args=["-o", "limits.output_total_bytes=1M",
                               "-o", "limits.output_buffer_bytes=64M"])
    try:
        holders = hold_many(d.socket, 3000, name_len=200)
        fast = Wire(d.socket, name="fast")
        slow = Wire(d.socket, name="slow")
        slow.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # The slow reader asks for many status pages and reads none.
        out = bytearray()
        for _ in range(40):
            slow.next_id += 1
            data = pb.Request(id=slow.next_id,
                              status=pb.StatusRequest()).SerializeToString()
            out += struct.pack(">I", len(data)) + data
        slow.s.sendall(out)
        d.log.wait_for("limits.output_total_bytes")
        # The fast reader is served all along, and after.
        for _ in range(50):
            assert fast.call(ping=pb.Ping()).WhichOneof("kind") == "pong"
        st = fast.call(status=pb.StatusRequest())
        assert st.WhichOneof("kind") == "status"
        # The slow one was closed: what it reads ends.
        slow.s.settimeout(WAIT)
        got = read_all(slow.s)
        assert len(got) < 40 * 600_000
        for w in [fast, slow] + holders:
            w.close()
    finally:
        harness.check_clean_exit(d)


def test_status_walk_survives_the_table_growing(tmp_path):
    """Resources created between pages make the daemon's hash table grow
    several times over; every resource present for the whole walk is still
    listed exactly once."""
    d = Daemon(tmp_path, args=["-o", "log.level=info"])
    try:
        old = hold_many(d.socket, 2000, prefix="old")
        w = Wire(d.socket)
        seen = []
        cursor = b""
        pages = 0
        new = []
        while True:
            req = pb.StatusRequest(page_size=100)
            if cursor:
                req.cursor = cursor
            m = w.call(status=req)
            seen += [r.resource for r in m.status.resources]
            pages += 1
            if pages == 3:
                new = hold_many(d.socket, 30000, prefix="new")
            cursor = m.status.next_cursor
            if not cursor:
                break
        olds = [r for r in seen if r.startswith("old")]
        assert len(olds) == 2000
        assert len(set(olds)) == 2000
        for x in old + new + [w]:
            x.close()
    finally:
        harness.check_clean_exit(d)


def test_text_status_lists_every_queue_entry_up_to_the_cap(tmp_path):
    """A resource's queue beyond 1000 is counted, not listed, in text and
    binary status alike."""
    d = Daemon(tmp_path, args=["-o", "log.level=info"])
    try:
        holder = Wire(d.socket)
        holder.lock("q")
        ws = []
        for i in range(1003):
            w = Wire(d.socket)
            w.acquire("q", quiet=True)
            w.call(ping=pb.Ping())  # answered after the Acquire was read
            ws.append(w)
        text = d.text(["status q"])
        assert text.count("\nwaiter:position=") == 1000
        assert "\nwaiters_omitted:3\n" in text
        st = holder.call(status=pb.StatusRequest(resource=b"q")).status
        assert len(st.resources[0].waiters) == 1000
        assert st.resources[0].waiters_omitted == 3
        r = d.ctl("status", "--json", check=True)
        assert json.loads(r.stdout)["resources"]["q"]["waiters_omitted"] == 3
        for w in ws + [holder]:
            w.close()
    finally:
        harness.check_clean_exit(d)
