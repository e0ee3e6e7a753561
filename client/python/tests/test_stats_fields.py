"""Stats and Status as dicts: every field of the reply reaches them, read
from the message descriptors (a field added to arbiter.proto needs no
change in the client), in the shape `arbiterctl stats --json` prints."""
import asyncio
import json

import arbiter_client as ac
from arbiter_client import _proto as P
from arbiter_client import arbiter_pb2 as pb

from conftest import WAIT

SECONDS = "_seconds"


def expected_keys(desc):
    """The keys a message's dict carries, enumerated from its descriptor:
    bytes (the paging cursor) and the key field of a listed message (the
    resource name) are left out; a Histogram's key carries the unit."""
    keys = {}
    for f in desc.fields:
        if f.type == f.TYPE_BYTES or f.name == "resource":
            continue
        if f.type == f.TYPE_MESSAGE and f.label != f.LABEL_REPEATED:
            sub = f.message_type
            keys[f.name + SECONDS] = {
                g.name[:-len(SECONDS)] if g.name.endswith(SECONDS)
                else g.name for g in sub.fields}
        else:
            keys[f.name] = None
    return keys


def check_figures(d, where):
    """d holds every field of ResourceStats, histograms included."""
    for k, sub in expected_keys(pb.ResourceStats.DESCRIPTOR).items():
        assert k in d, "%s lacks %s" % (where, k)
        if sub is not None:
            assert set(d[k]) == sub, (where, k)


def check_stats(s, resource):
    # The total's figures at the top level, then the Stats fields.
    check_figures(s, "the top level")
    for f in pb.Stats.DESCRIPTOR.fields:
        if f.type == f.TYPE_BYTES or f.name == "total":
            continue
        if f.name == "cluster":     # cluster mode only (test_cluster_lease)
            assert f.name not in s
            continue
        assert f.name in s, "stats() lacks %s" % f.name
    check_figures(s["resources"][resource], "resource %s" % resource)
    # The counter that once never reached the client, by name.
    assert s["revoked_storage_lost"] == 0
    assert s["resources"][resource]["revoked_storage_lost"] == 0
    assert s["resources"][resource]["total_acquisitions"] == 1


def test_every_stats_field_reaches_client_stats(daemon, clients, res):
    c = clients()
    with c.lease(res):
        pass
    s = c.stats()
    check_stats(s, res)
    assert c.stats(res)["resources"].keys() == {res}
    ctl = json.loads(daemon.ctl("stats", "--json").stdout)
    assert list(ctl) == list(s)
    assert list(ctl["resources"][res]) == list(s["resources"][res])


def test_every_stats_field_reaches_async_client_stats(daemon, res):
    async def main():
        async with ac.AsyncClient(daemon.socket) as c:
            await (await c.acquire(res)).release()
            return await c.stats()

    check_stats(asyncio.run(asyncio.wait_for(main(), WAIT)), res)


def test_a_field_set_in_the_reply_reaches_the_dict():
    # Every scalar of ResourceStats set to a value of its own: each must
    # come out under its name, for the total and for a resource.
    r = pb.ResourceStats(resource="db")
    want = {}
    for i, f in enumerate(pb.ResourceStats.DESCRIPTOR.fields):
        if f.type in (f.TYPE_UINT64, f.TYPE_UINT32):
            setattr(r, f.name, 100 + i)
        elif f.type == f.TYPE_DOUBLE:
            setattr(r, f.name, 0.5 + i)
        else:
            continue
        want[f.name] = getattr(r, f.name)
    r.wait.p99_seconds = 0.25
    s = pb.Stats(total=r, role="active", next_cursor=b"\0\0\0\0\0\0\0\1")
    s.resources.add().CopyFrom(r)
    d = P.stats_dict(s)
    for k, v in want.items():
        assert d[k] == v and d["resources"]["db"][k] == v, k
    assert d["wait_seconds"]["p99"] == 0.25
    assert "next_cursor" not in d and "resource" not in d
    assert list(d)[-1] == "resources"


def test_status_reports_the_omitted_holders_and_waiters():
    s = pb.Status(role="active", pid=7)
    r = s.resources.add(resource="q", holders_omitted=3, waiters_omitted=5,
                        delayed_us=9)
    r.holders.add(lease_id=1, mode=pb.SHARED, pid=10, client_name="h")
    r.waiters.add(lease_id=2, pid=11)
    r.waiters.add(lease_id=3, mode=pb.SHARED, pid=12)
    q = P.status_dict(s)["resources"]["q"]
    assert q["holders_omitted"] == 3 and q["waiters_omitted"] == 5
    assert q["delayed_us"] == 9
    # Every field of Holder, by its descriptor: a field added to the
    # message appears here without a change to the client.
    assert q["holders"] == [{
        f.name: (10 if f.name == "pid" else 1 if f.name == "lease_id" else
                 "shared" if f.name == "mode" else "h"
                 if f.name == "client_name" else f.default_value)
        for f in pb.Holder.DESCRIPTOR.fields}]
    assert [(w["position"], w["lease_id"], w["mode"]) for w in
            q["waiters"]] == [(1, 2, "exclusive"), (2, 3, "shared")]


def test_live_status_carries_the_omitted_counts_like_arbiterctl(
        daemon, clients, res):
    c = clients()
    with c.lease(res):
        st = c.status(res)["resources"][res]
        ctl = json.loads(daemon.ctl("status", "--json", res).stdout)
    assert st["holders_omitted"] == 0 and st["waiters_omitted"] == 0
    assert set(ctl["resources"][res]) == set(st)
