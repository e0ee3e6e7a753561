"""Cluster mode end to end: several arbiterds ("hosts") on one real
3-member etcd, each with its own socket and storage, each reaching etcd
through its own TCP proxy (pausing a proxy partitions that host).

Every wait here reads a socket or a log line; the only clock comparisons
are against deadlines the test itself set through the config.
"""
import os
import signal
import sys
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))

import etcdlib  # noqa: E402
import harness  # noqa: E402
from harness import Wire, WireError, pb  # noqa: E402

TTL_MS = 3000
MARGIN_MS = 500
TIMEOUT_MS = 300
CLUSTER_BIT = 1 << 62


def boottime_ns():
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class Hosts:
    """Arbiterds on one etcd prefix, each behind its own proxy."""

    def __init__(self, cluster, tmp):
        self.cluster = cluster
        self.tmp = tmp
        self.prefix = "t-%s/" % uuid.uuid4().hex[:8]
        self.daemons = {}
        self.proxies = {}

    def start(self, name, *extra, proxy=True, wait_active=True,
              endpoints=None, **kw):
        if endpoints is not None:
            pass
        elif proxy:
            if name not in self.proxies:
                self.proxies[name] = self.cluster.proxy()
            endpoints = self.proxies[name].endpoints()
        else:
            endpoints = self.cluster.endpoints()
        folder = os.path.join(str(self.tmp), name)
        os.makedirs(folder, exist_ok=True)
        d = harness.Daemon(
            folder, name=name, storage=os.path.join(folder, "data"),
            args=["-o", "cluster.backend=etcd",
                  "-o", "cluster.endpoints=" + endpoints,
                  "-o", "cluster.prefix=" + self.prefix,
                  "-o", "cluster.host_id=" + name,
                  "-o", "cluster.session_ttl_ms=%d" % TTL_MS,
                  "-o", "cluster.safety_margin_ms=%d" % MARGIN_MS,
                  "-o", "cluster.request_timeout_ms=%d" % TIMEOUT_MS]
            + list(extra), **kw)
        self.daemons[name] = d  # stopped by stop(), even if not active
        if wait_active:
            d.log.wait_for("cluster session active")
        return d

    def stop(self):
        for d in self.daemons.values():
            d.stop()
        for p in self.proxies.values():
            p.resume()
            p.stop()

    def keys(self):
        """The keys under this prefix, through the JSON gateway."""
        import base64
        ep = self.cluster.endpoints().split(",")[0]
        start = self.prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])
        body = {"key": base64.b64encode(start).decode(),
                "range_end": base64.b64encode(end).decode()}
        out = etcdlib.http(ep + "/v3/kv/range", body)
        return [base64.b64decode(kv["key"]).decode()
                for kv in out.get("kvs", [])]


@pytest.fixture
def hosts(healthy, tmp_path):
    h = Hosts(healthy, tmp_path)
    yield h
    h.stop()


def test_a_resource_is_one_lock_across_hosts(hosts):
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    assert wa.welcome.cluster
    g = wa.lock("db")
    assert g.token > CLUSTER_BIT
    assert g.valid_until_ns > boottime_ns()
    # b waits while a holds; a try-once on b is answered busy, naming a.
    with pytest.raises(WireError) as e:
        wb.lock("db", timeout_ms=0)
    assert e.value.code == pb.WOULD_BLOCK
    assert "host a" in e.value.message
    # The busy answer came from etcd's own range; b's mirror of the key
    # space learns a's key from the watch, maybe a moment later, and then
    # tells the waiter again.
    rid = wb.acquire("db", position_updates=True)
    while wb.wait_kind("queued", rid).queued.hosts_ahead != 1:
        pass
    wa.release(g.lease_id)
    g2 = wb.granted(rid)
    assert g2.token > g.token  # fencing tokens grow across hosts


def test_shared_leases_coexist_across_hosts_and_exclude_a_writer(hosts):
    a, b, c = hosts.start("a"), hosts.start("b"), hosts.start("c")
    wa, wb, wc = Wire(a.socket), Wire(b.socket), Wire(c.socket)
    ra = wa.lock("docs", shared=True)
    rb = wb.lock("docs", shared=True)  # both readers hold at once
    rid = wc.acquire("docs", position_updates=True)
    while wc.wait_kind("queued", rid).queued.hosts_ahead != 2:
        pass  # told again once c's key is in etcd, behind a's and b's
    st = wc.call(status=pb.StatusRequest(resource=b"docs"))
    hosts_seen = [(h.host_id, h.holding) for h in
                  st.status.resources[0].hosts]
    assert ("a", True) in hosts_seen and ("b", True) in hosts_seen
    assert ("c", False) in hosts_seen
    wa.release(ra.lease_id)
    with pytest.raises(TimeoutError):
        wc.s.settimeout(0.3)
        wc.wait(rid)  # b still reads
    wc.s.settimeout(harness.WAIT)
    wb.release(rb.lease_id)
    g = wc.granted(rid)
    assert g.token > max(ra.token, rb.token)


def test_local_handoffs_stay_local_while_the_key_is_held(hosts):
    a = hosts.start("a")
    w1, w2 = Wire(a.socket), Wire(a.socket)
    g1 = w1.lock("q")
    rid = w2.acquire("q")
    w1.release(g1.lease_id)
    g2 = w2.granted(rid)
    # Same key: same create_revision part, next grant number.
    assert g2.token == g1.token + 1


def test_kill_9_of_a_host_frees_its_resources_within_the_ttl(hosts):
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    t0 = time.monotonic()
    a.proc.kill()
    a.proc.wait()
    g = wb.granted(rid)
    waited = time.monotonic() - t0
    assert g.token > CLUSTER_BIT
    assert waited < (TTL_MS + 1000) / 1000.0 * 2 * harness.SLOW, waited
    print("kill -9 of the holding host: others waited %.2f s" % waited)


def test_a_restarted_host_frees_its_old_keys_at_once(hosts):
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    a.proc.kill()
    a.proc.wait()
    t0 = time.monotonic()
    del hosts.daemons["a"]
    hosts.start("a")
    g = wb.granted(rid)
    waited = time.monotonic() - t0
    assert g.token > CLUSTER_BIT
    print("restart of the killed host: others waited %.2f s after it "
          "started" % waited)
    assert waited < TTL_MS / 1000.0, waited


def test_a_partitioned_host_revokes_before_another_is_granted(hosts):
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    ga = wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    hosts.proxies["a"].pause()
    m = wa.wait_kind("revoked")
    t_revoked = time.monotonic()
    assert m.revoked.reason == pb.CLUSTER_LOST
    assert boottime_ns() >= ga.valid_until_ns
    g = wb.granted(rid)
    t_granted = time.monotonic()
    assert t_revoked < t_granted
    print("partition: revoked %.3f s before the other host's grant" %
          (t_granted - t_revoked))
    a.log.wait_for("cluster session expired")
    seen = len(a.log.lines)
    hosts.proxies["a"].resume()
    a.log.wait_for("cluster session active", start=seen)
    assert g.token > ga.token


def test_a_paused_host_revokes_first_thing_when_it_resumes(hosts):
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    ga = wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    os.kill(a.pid, signal.SIGSTOP)
    try:
        g = wb.granted(rid)  # a's key expired in etcd
    finally:
        os.kill(a.pid, signal.SIGCONT)
    m = wa.wait_kind("revoked")
    assert m.revoked.reason == pb.CLUSTER_LOST
    assert g.token > ga.token
    # What a resumed a granted since: nothing on db while b holds it.
    rid2 = wa.acquire("db", timeout_ms=0)
    r = wa.wait(rid2)
    assert r.WhichOneof("kind") == "error", r


def test_without_etcd_local_resources_work_and_cluster_ones_fail_or_wait(
        healthy, tmp_path):
    h = Hosts(healthy, tmp_path)
    try:
        d = h.start("solo", "-o", "cluster.resources=shared-*",
                    "-o", "cluster.when_unavailable=fail")
        h.proxies["solo"].pause()
        d.log.wait_for("cluster session expired")
        w = Wire(d.socket)
        assert w.lock("local-thing").token < CLUSTER_BIT
        with pytest.raises(WireError) as e:
            w.lock("shared-db")
        assert e.value.code == pb.UNAVAILABLE
        assert "etcd" in e.value.message
        seen = len(d.log.lines)
        h.proxies["solo"].resume()
        d.log.wait_for("cluster session active", start=seen)
        assert w.lock("shared-db").token > CLUSTER_BIT
    finally:
        h.stop()


def test_a_leader_kill_does_not_lose_the_session(hosts):
    a = hosts.start("a", *RIDE_OUT, proxy=False)
    b = hosts.start("b", *RIDE_OUT, proxy=False)
    wa, wb = Wire(a.socket), Wire(b.socket)
    ga = wa.lock("db")
    leader = hosts.cluster.leader()
    leader.kill9()
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    wa.release(ga.lease_id)
    g = wb.granted(rid)
    assert g.token > ga.token
    assert "cluster session expired" not in "".join(a.log.lines)


def test_no_keys_are_left_after_a_clean_stop(hosts):
    a = hosts.start("a")
    w = Wire(a.socket)
    w.lock("x")
    w.lock("y", shared=True)
    assert len(hosts.keys()) == 2
    a.stop()
    assert hosts.keys() == []


def test_status_stats_and_metrics_show_the_session(hosts):
    a = hosts.start("a")
    w = Wire(a.socket)
    w.lock("db")
    st = w.call(status=pb.StatusRequest()).status
    assert st.cluster.state == "active"
    assert st.cluster.host_id == "a"
    assert st.cluster.valid_for_ms > 0
    [r] = [r for r in st.resources if r.resource == "db"]
    assert r.cluster_state == "owned"
    s = w.call(stats=pb.StatsRequest()).stats
    assert s.cluster.sessions == 1
    # The text protocol shows the same, for a human with socat.
    raw = harness.connect_raw(a.socket)
    raw.sendall(b"status\nquit\n")
    text = harness.read_all(raw).decode()
    raw.close()
    assert "cluster_state:active\n" in text, text
    assert "cluster_host_id:a\n" in text and "cluster_lease_id:" in text
    assert "cluster_keepalive_rtt:count=" in text
    res = text.split("# Resource db\n", 1)[1]
    assert res.startswith("cluster_state:owned\ncluster_host:host_id=a "), res
    assert " mode=exclusive holding=1 " in res and " holders=1 " in res


# CMD for arbiterctl run: says when SIGTERM reaches it, then ends.
TRAPPED = ["sh", "-c", "echo RUNNING; trap 'echo TERM; exit 3' TERM; "
           "sleep 60 & wait"]


def test_run_stops_cmd_at_the_deadline_even_when_its_daemon_is_frozen(
        hosts):
    a, b = hosts.start("a"), hosts.start("b")
    p = a.ctl_bg("run", "-n", "db", "--", *TRAPPED)
    try:
        p.out.wait_for("RUNNING")
        wb = Wire(b.socket)
        rid = wb.acquire("db")
        wb.wait_kind("queued", rid)
        os.kill(a.pid, signal.SIGSTOP)  # no Revoked can come from a now
        t0 = time.monotonic()
        p.out.wait_for("TERM")
        took = time.monotonic() - t0
        g = wb.granted(rid)  # a's key expired in etcd after the deadline
        t_granted = time.monotonic() - t0
        assert p.wait(timeout=harness.WAIT) == 75  # lease lost
        assert took < TTL_MS / 1000.0 + 1.0 * harness.SLOW, took
        assert took < t_granted
        print("frozen daemon: CMD got SIGTERM %.2f s after the freeze, "
              "the other host its grant %.2f s after" % (took, t_granted))
        assert g.token > CLUSTER_BIT
    finally:
        os.kill(a.pid, signal.SIGCONT)
        harness.kill_tree(p)


# Riding out a leader's loss needs a TTL of at least 3 election timeouts
# (1 s here) plus the margin, as cluster.session_ttl_ms says.
RIDE_OUT = ("-o", "cluster.session_ttl_ms=4000")


def test_a_follower_kill_and_a_stopped_member_change_nothing(hosts):
    leader = hosts.cluster.leader()
    used, other = hosts.cluster.followers()[:2]
    a = hosts.start("a", *RIDE_OUT, endpoints=",".join(
        m.url for m in (used, other, leader)))
    w = Wire(a.socket)
    ga = w.lock("db")
    other.kill9()  # a follower this host does not use
    w.release(ga.lease_id)
    g = w.lock("db")
    assert g.token > ga.token
    other.start(state="existing")
    other.wait_ready()
    hosts.cluster.wait_healthy()
    assert w.call(status=pb.StatusRequest()).status.cluster.endpoint == \
        used.url
    # The member this host uses hangs: it is left after the timeout.
    used.sigstop()
    try:
        w.release(g.lease_id)
        assert w.lock("db").token > g.token
    finally:
        used.sigcont()
    assert not any("cluster session expired" in l for l in a.log.lines)


def test_quorum_lost_revokes_at_the_deadline_and_heals(hosts):
    a = hosts.start("a", proxy=False)
    w = Wire(a.socket)
    g = w.lock("db")
    lost = hosts.cluster.members[:2]
    for m in lost:
        m.kill9()
    m = w.wait_kind("revoked")
    assert m.revoked.reason == pb.CLUSTER_LOST
    assert boottime_ns() >= g.valid_until_ns
    seen = len(a.log.lines)
    for m in lost:
        m.start(state="existing")
    for m in lost:
        m.wait_ready()
    a.log.wait_for("cluster session active", start=seen)
    assert w.lock("db2").token > CLUSTER_BIT


def test_leaving_cluster_mode_keeps_tokens_above_the_cluster_ones(hosts):
    a = hosts.start("a")
    w = Wire(a.socket)
    g = w.lock("db")
    w.release(g.lease_id)
    w.close()
    a.stop()
    del hosts.daemons["a"]
    folder = os.path.join(str(hosts.tmp), "a")
    local = harness.Daemon(folder, name="a",
                           storage=os.path.join(folder, "data"))
    try:
        assert Wire(local.socket).lock("db").token > g.token
    finally:
        local.stop()


def test_an_etcd_restored_from_an_older_backup_is_refused(hosts, tmp_path):
    a = hosts.start("a")
    w = Wire(a.socket)
    g = w.lock("db")
    w.close()
    a.stop()
    del hosts.daemons["a"]
    older = etcdlib.Cluster(n=1).start()  # revision back at its start
    try:
        older.wait_healthy()
        h2 = Hosts(older, hosts.tmp)
        d = h2.start("a", "-o", "cluster.when_unavailable=fail",
                     "-o", "cluster.resources=db", proxy=False,
                     wait_active=False)
        try:
            line = d.log.wait_for("cluster grants refused")
            assert "etcdutl snapshot restore --bump-revision" in line
            with pytest.raises(WireError) as e:
                Wire(d.socket).lock("db")
            assert e.value.code == pb.UNAVAILABLE
            assert "older backup" in e.value.message
            # Local resources still work, above every cluster token.
            assert Wire(d.socket).lock("local").token > g.token
        finally:
            h2.stop()
    finally:
        older.stop()


def test_a_key_deleted_by_hand_revokes_its_holders(hosts):
    import base64
    a, b = hosts.start("a"), hosts.start("b")
    wa, wb = Wire(a.socket), Wire(b.socket)
    ga = wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    lease = wa.call(status=pb.StatusRequest()).status.cluster.lease_id
    key = "%sr/%s/%016x" % (hosts.prefix, b"db".hex(), lease)
    assert key in hosts.keys()
    ep = hosts.cluster.endpoints().split(",")[0]
    etcdlib.http(ep + "/v3/kv/deleterange",
                 {"key": base64.b64encode(key.encode()).decode()})
    m = wa.wait_kind("revoked")
    assert m.revoked.reason == pb.CLUSTER_LOST
    g = wb.granted(rid)
    assert g.token > ga.token


def test_cluster_mode_over_tls_with_a_self_signed_ca(tmp_path):
    if not etcdlib.have_etcd():
        pytest.skip("etcd is not installed: sh scripts/deps.sh test")
    d = etcdlib.tmpfs_dir("arbiter-etcd-tls-")
    tls = etcdlib.TLS(d)
    c = etcdlib.Cluster(n=1, tls=tls).start()
    h = Hosts(c, tmp_path)
    try:
        args = ("-o", "cluster.tls_ca=" + tls.ca_crt,
                "-o", "cluster.tls_cert=" + tls.client_crt,
                "-o", "cluster.tls_key=" + tls.client_key)
        a = h.start("a", *args, proxy=False)
        b = h.start("b", *args, proxy=False)
        assert c.endpoints().startswith("https://")
        wa, wb = Wire(a.socket), Wire(b.socket)
        g = wa.lock("db")
        rid = wb.acquire("db")
        wb.wait_kind("queued", rid)
        wa.release(g.lease_id)
        assert wb.granted(rid).token > g.token
    finally:
        h.stop()
        c.stop()
        import shutil
        shutil.rmtree(d, True)


def test_lock_delay_holds_a_resource_whose_host_died_not_one_released(hosts):
    a = hosts.start("a")
    b = hosts.start("b", "-o", "leases.lock_delay_ms=1500")
    wa, wb = Wire(a.socket), Wire(b.socket)
    g = wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    wa.release(g.lease_id)  # released: no delay
    g2 = wb.granted(rid)
    assert not any("cluster lock-delay" in l for l in b.log.lines)
    wb.release(g2.lease_id)
    g3 = wa.lock("db")
    rid = wb.acquire("db")
    wb.wait_kind("queued", rid)
    a.proc.kill()  # a's holder may still be finishing: b waits longer
    a.proc.wait()
    b.log.wait_for("cluster lock-delay")
    t0 = time.monotonic()
    g4 = wb.granted(rid)
    held_back = time.monotonic() - t0
    assert held_back > 1.3, held_back
    assert g4.token > g3.token
