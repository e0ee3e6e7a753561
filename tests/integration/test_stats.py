"""Stats, status, the text protocol and Prometheus metrics."""
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import harness
from harness import WAIT, Wire, error_of, pb


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scenario(d):
    """Known waits and failures; returns the waits the daemon reported."""
    a, b, c = Wire(d.socket, "a"), Wire(d.socket, "b"), Wire(d.socket, "c")
    la = a.lock("db")                                   # immediate
    e = error_of(c.wait(c.acquire("db", timeout_ms=0)))   # would-block
    assert e.code == pb.WOULD_BLOCK
    e = error_of(c.wait(c.acquire("db", timeout_ms=50)))  # timeout
    assert e.code == pb.TIMEOUT
    ib = b.acquire("db")
    b.wait_kind("queued", ib)
    time.sleep(0.2)   # the holder works a while: the wait being measured
    a.release(la.lease_id)
    lb = b.granted(ib)                                    # after waiting
    b.release(lb.lease_id)
    lo = a.lock("other")                                  # immediate
    a.close()                                             # disconnect
    return [0, lb.waited_us, 0], lo


def test_stats_count_a_scripted_scenario_exactly(daemon):
    waits, _ = scenario(daemon)
    r = daemon.ctl("stats", "--json")
    assert r.returncode == 0
    s = json.loads(r.stdout)
    assert s["total_acquisitions"] == 3
    assert s["failed_acquisitions"] == 2
    # The maximum is exact (to the microsecond the Granted reported).
    assert abs(s["max_wait_time"] - max(waits) / 1e6) < 2e-6
    assert abs(s["average_wait_time"] - sum(waits) / 3 / 1e6) < 2e-6
    db = s["resources"]["db"]
    assert db["acquired_immediate"] == 1 and db["acquired_after_wait"] == 1
    assert db["failed_would_block"] == 1 and db["failed_timeout"] == 1
    assert db["releases"] == 2
    assert s["resources"]["other"]["revoked_disconnect"] == 1
    # Quantiles are within the stated 12.5 % of the true value.
    w = db["wait_seconds"]
    assert w["count"] == 2
    assert abs(w["p99"] - max(waits) / 1e6) <= 0.125 * max(waits) / 1e6
    assert w["p50"] < 0.001 * harness.SLOW  # the immediate grant
    assert 0.19 <= db["hold_seconds"]["max"] < 10 * harness.SLOW


def test_stats_of_one_resource_and_the_table(daemon):
    scenario(daemon)
    s = json.loads(daemon.ctl("stats", "--json", "db").stdout)
    assert list(s["resources"]) == ["db"]
    t = daemon.ctl("stats").stdout
    assert "acquisitions 3 (immediate 2, after wait 1)" in t
    assert "failed 2 (40.0 %)" in t


SECONDS = "_seconds"


def figure_keys():
    """The --json keys of one resource's figures, enumerated from the
    ResourceStats descriptor: every field but the name, a Histogram's key
    carrying the unit its members drop (wait -> wait_seconds: p50, ...)."""
    keys = {}
    for f in pb.ResourceStats.DESCRIPTOR.fields:
        if f.name == "resource":
            continue
        if f.type == f.TYPE_MESSAGE:
            keys[f.name + SECONDS] = {
                g.name[:-len(SECONDS)] if g.name.endswith(SECONDS)
                else g.name for g in f.message_type.fields}
        else:
            keys[f.name] = None
    return keys


def test_every_stats_field_reaches_arbiterctl_stats_json(daemon):
    scenario(daemon)
    s = json.loads(daemon.ctl("stats", "--json").stdout)
    for where, d in (("top level", s), ("db", s["resources"]["db"]),
                     ("other", s["resources"]["other"])):
        for k, sub in figure_keys().items():
            assert k in d, "%s lacks %s" % (where, k)
            if sub is not None:
                assert set(d[k]) == sub, (where, k)
    for f in pb.Stats.DESCRIPTOR.fields:
        if f.type == f.TYPE_BYTES:      # the paging cursor
            continue
        if f.name == "cluster":         # cluster mode only (the session):
            assert f.name not in s      # test_cluster_client.py has it
        elif f.name != "total":         # spread over the top level
            assert f.name in s, "stats --json lacks %s" % f.name
    assert s["revoked_storage_lost"] == 0
    assert s["resources"]["db"]["revoked_storage_lost"] == 0
    assert s["resources_tracked"] == 2
    assert "next_cursor" not in s and "resource" not in s
    assert list(s)[-1] == "resources"


# The headline of each resource's table says these in words of its own.
HEADLINE = {"total_acquisitions": "acquisitions 3 ",
            "acquired_immediate": "(immediate 2,",
            "acquired_after_wait": "after wait 1)",
            "failed_acquisitions": "failed 2 (40.0 %)",
            "holders": "now: 0 holding", "waiters": "0 waiting"}


def shown(lines, name, value=None):
    """Whether the table shows field `name`: as its words on a line, or
    as the rest of its words on the line of its first word ("revoked:
    disconnect 1, ..., storage lost 0")."""
    first, _, rest = name.partition("_")
    words = name.replace("_", " ") + ("" if value is None else " %s" % value)
    tail = rest.replace("_", " ") + ("" if value is None else " %s" % value)
    return any(words in l or (l.strip().startswith(first + ":") and
                              (" " + tail) in l.split(":", 1)[1] + ",")
               for l in lines)


def sections(text):
    """The table's sections ("total:", "db:", ...) and their lines."""
    out, cur = {}, None
    for l in text.splitlines():
        if l.endswith(":") and not l.startswith(" "):
            cur = out[l[:-1]] = []
        elif cur is not None and l.startswith("  "):
            cur.append(l)
    return out


def test_every_stats_field_reaches_arbiterctl_stats_table(daemon):
    scenario(daemon)
    t = daemon.ctl("stats").stdout
    lines = t.splitlines()
    total = sections(t)["total"]
    for f in pb.ResourceStats.DESCRIPTOR.fields:
        if f.name == "resource":
            continue
        if f.name in HEADLINE:
            assert HEADLINE[f.name] in "\n".join(total), f.name
        elif f.type == f.TYPE_MESSAGE:
            row = next(l for l in total if l.split()[0] == f.name)
            if f.name.startswith("cluster_") or f.name == "upgrade_wait":
                # No cluster mode and no conversion here: an empty
                # histogram shows "-" (test_cluster_client.py and
                # test_convert.py show full ones).
                assert row.split() == [f.name, "-"], row
                continue
            for g in f.message_type.fields:
                assert " %s " % g.name.replace(SECONDS, "") in row, (
                    f.name, g.name)
        else:
            assert shown(total, f.name), "the table lacks %s:\n%s" % (
                f.name, t)
    assert shown(total, "revoked_storage_lost", 0)
    assert shown(total, "revoked_disconnect", 1)
    for f in pb.Stats.DESCRIPTOR.fields:
        if f.type != f.TYPE_MESSAGE and f.type != f.TYPE_BYTES and \
                f.name not in ("role", "uptime_seconds", "connections",
                               "storage_locked"):   # the first line
            assert shown(lines, f.name), "the table lacks %s" % f.name
    assert lines[0].startswith("arbiter active, up ")
    assert "resources: omitted 0, tracked 2" in lines


def test_status_lists_holders_and_waiters_in_queue_order(daemon):
    h1, h2 = Wire(daemon.socket, "reader-1"), Wire(daemon.socket, "reader-2")
    h1.lock("idx", shared=True)
    h2.lock("idx", shared=True)
    ws = []
    for name, shared in (("writer", False), ("reader-3", True),
                         ("writer-2", False)):
        w = Wire(daemon.socket, name)
        i = w.acquire("idx", shared=shared)
        w.wait_kind("queued", i)
        ws.append(w)
    s = json.loads(daemon.ctl("status", "--json").stdout)
    idx = s["resources"]["idx"]
    assert [h["client_name"] for h in idx["holders"]] == ["reader-1",
                                                         "reader-2"]
    assert [h["mode"] for h in idx["holders"]] == ["shared", "shared"]
    assert [w["client_name"] for w in idx["waiters"]] == [
        "writer", "reader-3", "writer-2"]
    assert [w["position"] for w in idx["waiters"]] == [1, 2, 3]
    assert s["role"] == "active"
    t = daemon.ctl("status").stdout
    assert t.index("writer ") < t.index("reader-3") < t.index("writer-2")
    assert "waits#1" in t and "holds" in t


def test_stats_reset_moves_the_baseline_only(daemon):
    scenario(daemon)
    assert daemon.ctl("stats-reset").returncode == 0
    s = json.loads(daemon.ctl("stats", "--json").stdout)
    assert s["total_acquisitions"] == 0 and s["max_wait_time"] == 0


def test_the_text_protocol(daemon):
    scenario(daemon)
    out = daemon.text(["help", "ping", "stats", "status", "nonsense"])
    assert "stats [RESOURCE]" in out and "pong active" in out
    assert "total_acquisitions:3" in out and "failed_acquisitions:2" in out
    assert "# Resource db" in out
    assert "error: unknown command 'nonsense'; try 'help'" in out


def test_a_text_line_over_the_limit_gets_an_error(daemon):
    out = daemon.text(["s" * 5000])
    assert "longer than limits.max_text_line" in out


def test_text_protocol_with_socat(daemon):
    if shutil.which("socat") is None:
        pytest.fail("socat missing: scripts/deps.sh test installs it")
    r = subprocess.run(["socat", "-", "UNIX-CONNECT:" + daemon.socket],
                       input="ping\nquit\n", capture_output=True, text=True,
                       timeout=WAIT)
    assert r.stdout == "pong active\n"


def test_prometheus_metrics_pass_promtool_and_count(tmp_path):
    port = free_port()
    d = harness.Daemon(tmp_path, args=["-o", "metrics.listen=127.0.0.1:%d"
                                       % port,
                                       "-o", "metrics.max_resource_labels=2"])
    try:
        scenario(d)
        for i in range(4):  # more resources than labels
            Wire(d.socket).lock("r%d" % i)
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                      timeout=WAIT).read().decode()
        r = subprocess.run(["promtool", "check", "metrics"], input=body,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        assert 'arbiter_acquired_after_wait_total{resource="db"} 1' in body
        assert 'arbiter_failed_timeout_total{resource="db"} 1' in body
        assert 'resource="_other"' in body
        assert 'arbiter_wait_seconds_count{resource="db"} 2' in body
        assert "arbiter_storage_lock_held 1" in body
        labels = {l.split('resource="')[1].split('"')[0]
                  for l in body.splitlines() if 'resource="' in l}
        assert len(labels) == 3  # two named + _other
        h = urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port,
                                   timeout=WAIT)
        assert h.status == 200
    finally:
        harness.check_clean_exit(d)


def test_healthz_is_503_on_a_standby(tmp_path):
    a = harness.Daemon(tmp_path, name="a")
    port = free_port()
    b = harness.Daemon(tmp_path, name="b", storage=a.storage,
                       args=["-o", "metrics.listen=127.0.0.1:%d" % port])
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port,
                                   timeout=WAIT)
        assert e.value.code == 503
        assert b"standby" in e.value.read()
    finally:
        harness.check_clean_exit(b)
        harness.check_clean_exit(a)
