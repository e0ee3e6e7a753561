"""A cluster lease's deadline in the Python client, sync and asyncio,
against a fake cluster-mode daemon (the repository's
tests/lib/fake_cluster.py, run as a process of its own): valid() until the
deadline the daemon gave, False past it even though the daemon says
nothing, moved later by each Extended; UNAVAILABLE raises Unavailable;
QueueInfo.hosts_ahead; the cluster parts of stats() and status().

The deadline tests wait for the clock to pass the deadline they were
given, which is what they test; everything else is read from sockets.
"""
import asyncio
import os
import sys
import tempfile
import threading
import time

import pytest

import arbiter_client as ac
from arbiter_client._proto import pb

from conftest import WAIT

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(REPO, "tests", "lib"))
from fake_cluster import FakeCluster  # noqa: E402

PB_DIR = os.path.dirname(os.path.abspath(pb.__file__))


def boottime():
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def sleep_past(t):
    """Let the clock (CLOCK_BOOTTIME) pass t: a deadline, not an event."""
    while boottime() <= t:
        time.sleep(t - boottime() + 0.005)


async def asleep_past(t):
    while boottime() <= t:
        await asyncio.sleep(t - boottime() + 0.005)


@pytest.fixture
def fake():
    started = []
    folder = tempfile.mkdtemp(prefix="arbiter-fake-")

    def start(*args):
        f = FakeCluster(folder, PB_DIR, *args)
        started.append(f)
        return f

    yield start
    for f in started:
        f.stop()
    for name in os.listdir(folder):
        os.unlink(os.path.join(folder, name))
    os.rmdir(folder)


def deadline_of(line):
    return int(line.split()[2]) / 1e9


def test_a_silent_daemons_lease_turns_invalid_at_its_deadline(fake):
    f = fake("--valid-ms", 400)
    with ac.Client(socket_path=f.path) as arb:
        lease = arb.acquire("db")
        until = deadline_of(f.expect("granted"))
        assert lease.valid_until == pytest.approx(until, abs=1e-6)
        assert lease.valid() and 0 < lease.remaining() <= 0.4
        lease.check()
        sleep_past(until)
        assert lease.held             # the daemon said nothing...
        assert not lease.valid()      # ... but the deadline passed
        assert lease.remaining() == 0.0
        with pytest.raises(ac.LeaseRevoked) as e:
            lease.check()
        assert e.value.reason == "CLUSTER_LOST"
        assert "deadline passed" in str(e.value)


def test_extended_keeps_the_lease_valid_past_its_first_deadline(fake):
    f = fake("--valid-ms", 400, "--extend-ms", 100, "--extends", 8)
    with ac.Client(socket_path=f.path) as arb:
        lease = arb.acquire("db")
        first = deadline_of(f.expect("granted"))
        sent = deadline_of(f.expect("extended 6"))
        arb.ping()      # its answer comes after the Extended frames
        assert boottime() > first
        assert lease.valid_until >= sent
        assert lease.valid(), (lease.valid_until, boottime())
        f.expect("silent")
        last = deadline_of([l for l in f.lines
                            if l.startswith("extended")][-1])
        arb.ping()
        assert lease.valid_until == pytest.approx(last, abs=1e-6)
        sleep_past(last)
        assert not lease.valid()
        lease.release()


def test_a_cluster_lost_revocation_reaches_the_holder(fake):
    f = fake("--valid-ms", 60000, "--revoke-ms", 50)
    told = []
    seen = threading.Event()

    def on_revoked(rev):
        told.append(rev)
        seen.set()

    with ac.Client(socket_path=f.path) as arb:
        lease = arb.acquire("db", on_revoked=on_revoked)
        f.expect("revoked")
        assert seen.wait(WAIT)
        assert told[0].reason == "CLUSTER_LOST"
        assert "not renewed" in told[0].message
        assert not lease.valid() and lease.revoked is told[0]
        with pytest.raises(ac.LeaseRevoked) as e:
            lease.check()
        assert e.value.reason == "CLUSTER_LOST"


def test_a_local_lease_is_valid_without_deadline(daemon, res):
    with ac.Client(socket_path=daemon.socket) as arb:
        lease = arb.acquire(res)
        assert lease.valid_until is None and lease.remaining() is None
        assert lease.valid()
        lease.release()
        assert not lease.valid()


def test_unavailable_is_raised(fake):
    f = fake("--fail", "UNAVAILABLE")
    with ac.Client(socket_path=f.path) as arb:
        with pytest.raises(ac.Unavailable) as e:
            arb.acquire("db", timeout=0)
    assert e.value.code == "UNAVAILABLE"
    assert "http://127.0.0.1:1" in str(e.value)


def test_queued_tells_hosts_ahead(fake):
    f = fake("--hosts-ahead", 2, "--valid-ms", 60000)
    told = []
    seen = threading.Event()

    def on_queued(info):
        told.append(info)
        seen.set()

    with ac.Client(socket_path=f.path) as arb:
        lease = arb.acquire("db", on_queued=on_queued)
        assert seen.wait(WAIT)
        assert told[0].hosts_ahead == 2 and told[0].position == 1
        lease.release()


def test_stats_and_status_carry_the_cluster_parts(fake):
    f = fake()
    with ac.Client(socket_path=f.path) as arb:
        st = arb.stats()
        assert st["cluster"]["state"] == "active"
        assert st["cluster"]["host_id"] == "node-a"
        assert st["cluster"]["keepalive_rtt_seconds"]["count"] == 9
        assert "state" not in st and "host_id" not in st
        assert st["revoked_cluster_lost"] == 3
        assert st["resources"]["db"]["cluster_wait_seconds"]["count"] == 4
        s = arb.status()
        assert s["cluster"]["endpoint"] == "http://127.0.0.1:2379"
        db = s["resources"]["db"]
        assert db["cluster_state"] == "owned"
        assert [(h["host_id"], h["holding"]) for h in db["hosts"]] == [
            ("node-a", True), ("node-b", True), ("node-c", False),
            ("node-d", False)]
        assert db["hosts"][2]["create_revision"] == 57


def test_async_deadline_extended_and_unavailable(fake):
    f = fake("--valid-ms", 400, "--extend-ms", 100, "--extends", 8)

    async def main():
        async with ac.AsyncClient(socket_path=f.path) as arb:
            lease = await arb.acquire("db")
            first = deadline_of(f.expect("granted"))
            assert lease.valid_until == pytest.approx(first, abs=1e-6)
            assert lease.valid()
            sent = deadline_of(f.expect("extended 6"))
            await arb.ping()
            assert boottime() > first and lease.valid_until >= sent
            assert lease.valid()
            f.expect("silent")
            last = deadline_of([l for l in f.lines
                                if l.startswith("extended")][-1])
            await arb.ping()
            assert lease.valid_until == pytest.approx(last, abs=1e-6)
            await asleep_past(last)
            assert not lease.valid() and lease.remaining() == 0.0
            with pytest.raises(ac.LeaseRevoked):
                lease.check()
            await lease.release()

    asyncio.run(asyncio.wait_for(main(), WAIT * 3))

    g = fake("--fail", "UNAVAILABLE")

    async def refused():
        async with ac.AsyncClient(socket_path=g.path) as arb:
            with pytest.raises(ac.Unavailable):
                await arb.acquire("db", timeout=0)

    asyncio.run(asyncio.wait_for(refused(), WAIT * 3))
