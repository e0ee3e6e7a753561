"""The multi-host checker (check_cluster.py) on hand-made runs.

Each test builds a small run in a temporary folder -- worker logs in the
worker's own format, the storage journal, the driver's record -- around one
scenario: two hosts taking turns on chaos-0, then host-0's arbiterd paused
for 4.5 s while one of its holders runs long, as a correct cluster-mode
daemon behaves (the holder is revoked, fenced, and host-1 is granted only
after etcd expired host-0's key). The clean scenario must pass; each test
then plants one defect and expects the check that guards it to fail.
Runs in well under a second: part of make test (make chaos-check-unit).
"""
import io
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import check  # noqa: E402

BASE = 10 ** 12  # CLOCK_MONOTONIC of the run's start, in ns
TOKEN = 1 << 62
HOSTS = ("host-0", "host-1")


def T(msec):
    return BASE + int(msec * 1e6)


class Bed:
    """A run being made: sections per host, then run() writes the files."""

    def __init__(self, folder):
        self.dir = str(folder)
        self.counters = os.path.join(self.dir, "counters")
        os.makedirs(self.counters)
        self.daemons = [{"pid": 1000 + i, "host": h, "kill_ns": None,
                         "pauses": [], "final": True, "exit": 0,
                         "log": "arbiterd-%s.log" % h, "levels": {},
                         "notable": [], "sanitizer": []}
                        for i, h in enumerate(HOSTS)]
        self.secs = []
        self.faults = []
        self.keys_left = []
        self.then = []  # called once every section has its token

    def daemon(self, host):
        return next(d for d in self.daemons if d["host"] == host)

    def sec(self, host, t0, t1, excl=True, outcome=None, vu=None, revoked=0,
            tr=None, tw=None):
        """A section (times in ms from the start); returns its dict. Tokens
        grow with t0 (run() gives them; self.then may change them)."""
        s = {"host": host, "t0": T(t0), "t1": T(t1), "excl": excl,
             "outcome": outcome or ("inc" if excl else "read"),
             "vu": T(vu) if vu is not None else T(t0 + 2500),
             "revoked": revoked,
             "tr": T(tr) if tr is not None else T(t0) + 1000,
             "tw": T(tw) if tw is not None else (T(t1) - 1000 if excl else 0)}
        self.secs.append(s)
        return s

    def traffic(self, a, b, hosts=HOSTS, step=10):
        """Hosts taking turns every step ms from a to b, 2 ms sections."""
        t, i = a, 0
        while t < b:
            self.sec(hosts[i % len(hosts)], t, t + 2)
            t += step
            i += 1

    def paused_host0(self, revoked=6, fenced=True):
        """host-0 paused at 5 s for 4.5 s with a long holder; host-1 granted
        once etcd expired host-0's key (last keepalive at 4.8 s)."""
        self.traffic(0, 4990)
        self.long = self.sec("host-0", 4990, 10500, vu=7300,
                             revoked=revoked,
                             outcome="fenced" if fenced else "inc")
        self.traffic(8100, 9600, hosts=("host-1",))
        self.traffic(9600, 20000)
        self.daemon("host-0")["pauses"].append([T(5000), T(9500)])
        self.faults.append({"kind": "stop-arbiterd", "t_ns": T(5000),
                            "heal_ns": T(9500), "host": "host-0"})

    def run(self):
        """Write logs and the journal; the run record check() reads."""
        pid = {h: 2000 + i for i, h in enumerate(HOSTS)}
        for i, s in enumerate(sorted(self.secs, key=lambda s: s["t0"])):
            s["token"] = TOKEN + ((100 + i) << 20)
        for f in self.then:
            f()
        writes = sorted((s for s in self.secs if s["outcome"] == "inc"),
                        key=lambda s: s["tw"])
        for i, s in enumerate(writes):
            s["value"] = i + 1
        with open(os.path.join(self.counters, "r0.counter"), "w") as f:
            for s in writes:
                rec = "%020d %020d %010d" % (s["value"], s["token"],
                                             pid[s["host"]])
                f.write(rec.ljust(63) + "\n")
        runs = []
        for h in HOSTS:
            path = os.path.join(self.dir, "w-%s.log" % h)
            with open(path, "w") as f:
                f.write("C %d %d\n" % (self.daemon(h)["pid"], BASE))
                for s in sorted(self.secs, key=lambda s: s["t1"]):
                    if s["host"] != h:
                        continue
                    f.write("S 0 %d %s %d %d %s %d %d %d %d %d %d\n" % (
                        s["token"], "E" if s["excl"] else "S", s["t0"],
                        s["t1"], s["outcome"],
                        s.get("dpid", self.daemon(h)["pid"]),
                        s.get("value", 0), s["revoked"], s["vu"], s["tr"],
                        s["tw"]))
            runs.append({"slot": len(runs), "pid": pid[h], "log": path,
                         "host": h})
        return {"hosts": list(HOSTS), "daemons": self.daemons,
                "worker_runs": runs, "killed": [], "driver_failures": [],
                "faults": self.faults, "ttl_ms": 3000, "margin_ms": 500,
                "election_ms": 1000, "etcd_keys_left": self.keys_left,
                "prefix": "test/", "counters": self.counters,
                "resources": 1, "t_start_ns": BASE, "t_end_ns": T(20000)}


def verdict(bed):
    """(passed, the names of the failed checks, the output)."""
    out = io.StringIO()
    ok = check.check(bed.run(), out=out)
    text = out.getvalue()
    failed = [l.split()[1] + " " + l.split()[2] for l in text.splitlines()
              if l.startswith("FAIL")]
    return ok, failed, text


@pytest.fixture
def bed(tmp_path):
    return Bed(tmp_path)


def test_a_correct_pause_passes(bed):
    bed.paused_host0()
    ok, failed, text = verdict(bed)
    assert ok, text
    assert "0 failed" in text.splitlines()[-1]
    # The fault's line says what host-1 waited for the key: 8.1 - 5.0 s.
    assert "others waited chaos-0 3.100 s" in text, text
    assert "min slack 3118.000 ms" in text, text


def test_overlap_of_two_valid_leases_across_hosts(bed):
    bed.paused_host0()
    bed.sec("host-0", 3003, 3009)  # between the turns at 3000 and 3010
    bed.sec("host-1", 3004, 3008)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p1 exclusion" in failed, text
    assert "overlap across hosts" in text


def test_a_stale_write_that_the_storage_took(bed):
    bed.paused_host0(fenced=False)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p1 exclusion" in failed, text
    assert "instead of refusing it" in text
    assert "journal chaos-0" in failed  # its token went back


def test_token_inversion_across_hosts(bed):
    bed.paused_host0()
    a = bed.sec("host-0", 2001, 2003)
    b = bed.sec("host-1", 2004, 2006)

    def swap():
        a["token"], b["token"] = b["token"], a["token"]
    bed.then.append(swap)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p2 token-order" in failed, text
    assert "token went back" in text


def test_a_holder_not_revoked_at_its_deadline(bed):
    bed.paused_host0(revoked=0)
    ok, failed, text = verdict(bed)
    assert not ok
    assert failed == ["p4 revoke-before-move"], text
    assert "no Revoked came" in text


def test_a_late_revoke_lets_another_host_in_within_the_margin(bed):
    # host-0's daemon, paused at 5 s, had a holder that stopped at 5.4 s
    # (before its deadline); host-1 got the key at 5.6 s: only 200 ms
    # after it, though only an expiry could move the key.
    bed.paused_host0()
    bed.sec("host-0", 4995, 5400, vu=7300)
    bed.sec("host-1", 5600, 5602)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p4 expiry" in failed, text
    assert "under the safety margin" in text


def test_a_grant_after_its_deadline(bed):
    bed.paused_host0()
    bed.sec("host-0", 9501, 9502, vu=7300)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p4 revoke-before-move" in failed, text
    assert "after its deadline" in text


def test_a_stale_key_granting_after_the_move(bed):
    # What a daemon that skips the revoke could do: resumed, it grants
    # again under its old key (a lower token) while host-1 holds.
    bed.paused_host0()
    s = bed.sec("host-0", 9505, 9507, vu=12000)
    bed.then.append(lambda: s.update(token=bed.long["token"] + 1))
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p4 revoke-before-move" in failed, text
    assert "the resource moved before it was done" in text
    assert "p2 token-order" in failed  # and it went back in real time


def test_a_host_left_waiting_after_healing(bed):
    bed.traffic(0, 4990)
    bed.traffic(5000, 20000, hosts=("host-0",))
    bed.faults.append({"kind": "partition", "t_ns": T(5000),
                       "heal_ns": T(6000), "host": "host-1"})
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p5 granted" in failed, text
    assert "host-1 was not granted chaos-0" in text


def test_a_key_left_in_etcd(bed):
    bed.paused_host0()
    bed.keys_left.append("test/r/63686173732d30/1a2b")
    ok, failed, text = verdict(bed)
    assert not ok
    assert failed == ["p5 no"], text


def test_an_unexpected_revoke_reason(bed):
    bed.paused_host0(revoked=4)  # SHUTDOWN, not CLUSTER_LOST
    ok, failed, text = verdict(bed)
    assert not ok
    assert "no unexpected" in failed, text


def test_readers_on_two_hosts_at_once_pass(bed):
    bed.paused_host0()
    bed.sec("host-0", 3003, 3009, excl=False)
    bed.sec("host-1", 3004, 3008, excl=False)
    ok, failed, text = verdict(bed)
    assert ok, text


def killed_host1(bed, fenced=True):
    """host-1's arbiterd killed at 5 s while one of its holders runs on;
    its successor (another pid) and host-0 go on at once."""
    bed.traffic(0, 4990)
    bed.sec("host-1", 4995, 5800, outcome="fenced" if fenced else "inc")
    d = bed.daemon("host-1")
    d["kill_ns"] = T(5000)
    d["final"] = False
    bed.daemons.append(dict(d, pid=1100, kill_ns=None, final=True))
    bed.traffic(5010, 20000, hosts=("host-0",))
    bed.faults.append({"kind": "kill-arbiterd", "t_ns": T(5000),
                       "heal_ns": T(5005), "host": "host-1"})


def test_a_holder_of_a_killed_daemon_fenced_passes(bed):
    killed_host1(bed)
    # The successor grants too (p5 wants host-1 served after the heal).
    bed.traffic(6005, 6100, hosts=("host-1",))
    for s in bed.secs:
        if s["host"] == "host-1" and s["t0"] >= T(6005):
            s["dpid"] = 1100
    ok, failed, text = verdict(bed)
    assert ok, text
    assert "others waited chaos-0 0.010 s" in text


def test_a_holder_of_a_killed_daemon_that_wrote_late(bed):
    killed_host1(bed, fenced=False)
    ok, failed, text = verdict(bed)
    assert not ok
    assert "p1 exclusion" in failed, text
    assert "its daemon was killed" in text
