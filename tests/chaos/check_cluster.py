#!/usr/bin/python3
"""Checker of the multi-host chaos run (see README.md, "Several hosts").

    check_cluster.py WORKDIR    re-check a kept run (reads WORKDIR/run.json)

Every host is an arbiterd in cluster mode on one etcd; the workers of all
hosts share one storage (the counters folder, like a volume every host
mounts). All processes run on one machine, so every time is one
CLOCK_MONOTONIC and overlaps are exact. Per resource:

  p1 exclusion     no two conflicting sections overlap, on any hosts, unless
                   the older one (lower token, granted first) outlived its
                   lease: its daemon was killed, or its deadline passed while
                   it ran (a paused or partitioned host). Such an overlap
                   must not reach the storage: the older section's access
                   after the newer one's first access must have been refused
                   by the token check ("fenced")
  p2 token-order   tokens unique, cluster tokens (>= 2^62), and a section
                   that ended before a conflicting one started has the
                   smaller token, across hosts and incarnations
  p3 journal, no-lost-update   as in the single-host checker
  p4 revoke-before-move  in token order, every section starts after the
                   conflicting sections of the other hosts ended (those
                   that outlived their lease aside); no grant at or after
                   its own deadline; a holder whose deadline passed while
                   its daemon ran for a margin was told (Revoked); after a
                   pause or partition of a host, the first grant elsewhere
                   that could only come from the key's expiry comes at
                   least the safety margin after that host's last section
  p5 liveness      after each fault heals, every host is granted every
                   resource within TTL + election + margin; no key is left
                   in etcd under the prefix once every arbiterd stopped

and, as in the single-host checker: fencing only of sections that outlived
their lease, fencing exercised when faults should have made it run, logs
well-formed, no unexpected errors, no process died by itself, every daemon
stopped cleanly. Each fault gets a line with what the others waited. The
last line is "... N passed, M failed".
"""
import bisect
import json
import os
import sys
from collections import Counter, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import check as single  # noqa: E402  (the single-host checker)
from check import SHOW, Result  # noqa: E402

CLUSTER_TOKEN = 1 << 62
# Faults that stop one host from renewing its etcd session: a key it held
# can then move only when etcd expires it.
HOST_SILENCED = ("stop-arbiterd", "partition")
HOST_FAULTS = ("kill-worker", "kill-arbiterd") + HOST_SILENCED
OUTLIVED = "holders that outlived their lease and met a newer one"
# Faults whose holders run long (SIGUSR2) so they outlive their lease.
LONG_FAULTS = ("kill-arbiterd",) + HOST_SILENCED


def ms(ns):
    return "%.3f ms" % (ns / 1e6)


def secs(ns):
    return "%.3f s" % (ns / 1e9)


class Daemons:
    """The daemon incarnations of every host, by pid."""

    def __init__(self, daemons):
        self.list = daemons
        self.by_pid = {d["pid"]: d for d in daemons}
        for d in daemons:
            d.setdefault("pauses", [])
            d.setdefault("kill_ns", None)

    def of(self, s):
        return self.by_pid.get(s.dpid)

    def excuse(self, s):
        """Why s may still run while a newer holder runs: it outlived its
        lease. None when it did not."""
        d = self.of(s)
        k = d["kill_ns"] if d else None
        if k is not None and s.t1 > k:
            return "its daemon was killed %s into it" % ms(k - s.t0)
        if s.vu and s.t0 < s.vu <= s.t1:
            return "its deadline passed %s into it" % ms(s.vu - s.t0)
        return None

    def running_from(self, d, t):
        """The first instant >= t at which daemon d was not stopped."""
        for a, b in d["pauses"]:
            if a <= t < (b if b is not None else float("inf")):
                return b if b is not None else float("inf")
        return t


def conflicting(a, b):
    return a.excl or b.excl


def last_access(s):
    """When the storage last took (or refused) an access of s."""
    return s.tw or s.tr


def first_access(s):
    return s.tr or s.tw


def check_overlaps(secs, daemons, counts):
    """p1: conflicting overlaps among one resource's sections, on any hosts.
    counts gets the holders that outlived their lease and met a newer one,
    how the storage met them, and the overlapping pairs."""
    problems = []
    active = []
    met = {}  # id(old section) -> (old, where, refused or harmless)
    for s in sorted(secs, key=lambda x: x.t0):
        active = [p for p in active if p.t1 > s.t0]
        for p in active:
            if not conflicting(p, s):
                continue
            old, new = (p, s) if p.token < s.token else (s, p)
            why = daemons.excuse(old)
            where = ("on one daemon" if p.dpid == s.dpid else
                     "on one host" if p.host == s.host else "across hosts")
            if why is None or old.t0 > new.t0:
                problems.append(
                    "conflicting sections overlap %s for %s (the older "
                    "holder %s):\n  %s\n  %s" % (
                        where, ms(min(p.t1, s.t1) - s.t0),
                        "started later" if why else "held a valid lease",
                        old, new))
                continue
            counts["overlapping pairs with such a holder"] += 1
            if old.outcome == "fenced":
                how = "  it was fenced"
            elif first_access(new) and last_access(old) > first_access(new):
                problems.append(
                    "the storage took an access of a holder that outlived "
                    "its lease (%s) %s after a newer holder's first access, "
                    "instead of refusing it:\n  %s\n  %s" % (
                        why, ms(last_access(old) - first_access(new)), old,
                        new))
                how = None
            else:
                how = "  it was done with the storage first"
            prev = met.get(id(old))
            if prev is None or prev[1] != "across hosts":
                met[id(old)] = (old, where, how)
        active.append(s)
    for old, where, how in met.values():
        counts[OUTLIVED] += 1
        counts["  " + where] += 1
        if how:
            counts[how] += 1
    return problems


def check_tokens(secs):
    """p2: cluster tokens, unique and growing in real-time order."""
    problems = ["not a cluster token (below 2^62): %s" % s
                for s in secs if s.token < CLUSTER_TOKEN][:SHOW]
    return problems + single.check_token_order(secs)


def check_moves(secs, daemons, slack):
    """p4, in token order: each section starts after every conflicting
    section of another host with a lower token ended (those that outlived
    their lease aside). slack gets (t0 - end of the other host's last
    section) of each move, a section whose previous conflicting section in
    token order is on another host."""
    problems = []
    told = set()  # the lower-token sections already reported
    end_all, end_ex = {}, {}  # host -> latest-ending section so far
    prev_all = prev_ex = None  # previous section, exclusive, in token order
    for s in sorted(secs, key=lambda x: x.token):
        ends = end_all if s.excl else end_ex
        before = [p for h, p in ends.items() if h != s.host]
        last = max(before, key=lambda p: p.t1) if before else None
        if last is not None and last.t1 > s.t0 and id(last) not in told:
            told.add(id(last))  # once, with the first grant it outlasted
            problems.append(
                "a section with a lower token ended %s after another "
                "host's grant (the resource moved before it was done):"
                "\n  %s\n  %s" % (ms(last.t1 - s.t0), last, s))
        prev = prev_all if s.excl else prev_ex
        if prev is not None and prev.host != s.host and last is not None:
            slack.append((s.t0 - last.t1, last, s))
        if daemons.excuse(s) is None:
            for table in (end_all, end_ex) if s.excl else (end_all,):
                p = table.get(s.host)
                if p is None or s.t1 > p.t1:
                    table[s.host] = s
        prev_all = s
        if s.excl:
            prev_ex = s
    return problems


def check_deadlines(secs, daemons, margin_ns, counts):
    """p4: no section starts at or after its own deadline, and one whose
    deadline passed while its daemon ran for a margin was revoked."""
    problems = []
    for s in secs:
        if not s.vu:
            counts["sections without a deadline (local leases)"] += 1
            continue
        if s.t0 >= s.vu:
            problems.append("granted %s after its deadline: %s" % (
                ms(s.t0 - s.vu), s))
            continue
        if s.t1 < s.vu:
            continue
        counts["sections that ran past their deadline"] += 1
        d = daemons.of(s)
        if d is None:
            continue
        run = daemons.running_from(d, s.vu)
        k = d["kill_ns"]
        if k is not None and k < run + margin_ns:
            continue
        if s.t1 > run + margin_ns and not s.revoked:
            problems.append(
                "its deadline passed and its daemon ran %s more while it "
                "held the lease, but no Revoked came: %s" % (
                    ms(s.t1 - run), s))
        elif s.revoked:
            counts["  revoked"] += 1
    return problems


def first_after(times, t):
    """Index of the first of the sorted times at or after t."""
    return bisect.bisect_left(times, t)


class Timeline:
    """Section starts of one resource, per host, for the fault tables."""

    def __init__(self, secs):
        self.all = sorted(secs, key=lambda s: s.t0)
        self.t0s = [s.t0 for s in self.all]
        self.host = defaultdict(list)
        for s in self.all:
            self.host[s.host].append(s.t0)

    def holder_at(self, t):
        """The host of the last section that started at or before t."""
        i = first_after(self.t0s, t + 1) - 1
        return self.all[i].host if i >= 0 else None

    def next_elsewhere(self, host, t):
        for s in self.all[first_after(self.t0s, t):]:
            if s.host != host:
                return s
        return None

    def next_on(self, host, t):
        ts = self.host.get(host, [])
        i = first_after(ts, t)
        return ts[i] if i < len(ts) else None

    def longest_gap(self, a, b):
        i, j = first_after(self.t0s, a), first_after(self.t0s, b)
        pts = [a] + self.t0s[i:j] + [b]
        gaps = [(y - x, x) for x, y in zip(pts, pts[1:])]
        return max(gaps) if gaps else (0, a)


def fault_table(run, timelines, daemons, margin_ns, bound_ns, slack_forced,
                out):
    """One line per fault with what the others waited; p4's expiry moves
    and p5's liveness after healing. Returns (p4 problems, p5 problems,
    waits by kind)."""
    p4, p5 = [], []
    waits = defaultdict(list)
    faults = sorted(run["faults"], key=lambda f: f["t_ns"])
    t_start, t_end = run["t_start_ns"], run["t_end_ns"]
    hosts = run["hosts"]
    for n, f in enumerate(faults):
        tf, th, h = f["t_ns"], f.get("heal_ns"), f.get("host")
        nxt = faults[n + 1]["t_ns"] if n + 1 < len(faults) else t_end
        words = []
        worst = None
        for r, tl in sorted(timelines.items()):
            if f["kind"] in HOST_FAULTS:
                if tl.holder_at(tf) != h:
                    continue
                s = tl.next_elsewhere(h, tf)
                if s is None:
                    words.append("chaos-%d never" % r)
                    continue
                wait = s.t0 - tf
                words.append("chaos-%d %s" % (r, secs(wait)))
                worst = max(worst or 0, wait)
                if f["kind"] in HOST_SILENCED and s.t0 >= tf + margin_ns:
                    # Only etcd's expiry of the host's key could let s in.
                    last = [p for p in tl.all if p.host == h and
                            p.token < s.token and conflicting(p, s) and
                            daemons.excuse(p) is None and p.t0 <= tf]
                    if last:
                        p = max(last, key=lambda x: x.t1)
                        sl = s.t0 - p.t1
                        slack_forced.append((sl, p, s))
                        if sl < margin_ns:
                            p4.append(
                                "after %s of %s, another host was granted "
                                "%s after the last section there, under the "
                                "safety margin:\n  %s\n  %s" % (
                                    f["kind"], h, ms(sl), p, s))
            else:
                gap, at = tl.longest_gap(tf, min(nxt, (th or tf) + bound_ns))
                words.append("chaos-%d %s" % (r, secs(gap)))
                worst = max(worst or 0, gap)
        if worst is not None:
            waits[f["kind"]].append(worst)
        what = ("others waited" if f["kind"] in HOST_FAULTS else
                "longest pause in grants")
        print("fault %7.2f s %-16s %-8s%s: %s %s" % (
            (tf - t_start) / 1e9, f["kind"], h or f.get("member", ""),
            " (healed after %s)" % secs(th - tf) if th else "",
            what, ", ".join(words) or "(held nothing)"), file=out)
        # p5: every host gets every resource within the bound once healed.
        if th is None or nxt < th + bound_ns:
            continue
        for r, tl in sorted(timelines.items()):
            for host in hosts:
                t = tl.next_on(host, th)
                if t is None or t > th + bound_ns:
                    p5.append(
                        "after %s (%s) healed at %.2f s, %s was not granted "
                        "chaos-%d within %s (%s)" % (
                            f["kind"], h or f.get("member", "etcd"),
                            (th - t_start) / 1e9, host, r, secs(bound_ns),
                            "next grant %s later" % secs(t - th)
                            if t is not None else "never again"))
    return p4, p5, waits


def check(run, out=sys.stdout):
    res = Result(out)
    daemons = Daemons(run["daemons"])
    killed = Counter(run["killed"])
    margin_ns = run["margin_ms"] * 1000000
    bound_ns = (run["ttl_ms"] + run["election_ms"] + run["margin_ms"]) * \
        1000000
    sections, stats, bad, unexpected = single.read_logs(
        run, revokes_expected=True)
    stray = []
    for r, ss in sections.items():
        keep = []
        for s in ss:
            d = daemons.of(s)
            if d is None:
                stray.append("section on an unknown daemon pid: %s" % s)
            elif s.host is not None and s.host != d["host"]:
                stray.append("section of a worker of %s granted by %s's "
                             "daemon: %s" % (s.host, d["host"], s))
            else:
                s.host = d["host"]
                keep.append(s)
        sections[r] = keep

    counts = Counter()
    slack, slack_forced = [], []
    timelines = {}
    excused_fenced = 0
    for r in range(run["resources"]):
        ss = sections.get(r, [])
        timelines[r] = Timeline(ss)
        res.report("p1 exclusion chaos-%d" % r,
                   check_overlaps(ss, daemons, counts),
                   " (%d sections)" % len(ss))
        res.report("p2 token-order chaos-%d" % r, check_tokens(ss))
        single.check_storage(res, run, r, ss, killed, stats)
        res.report("p4 revoke-before-move chaos-%d" % r,
                   check_moves(ss, daemons, slack) +
                   check_deadlines(ss, daemons, margin_ns, counts))
        # Fencing: only of a holder that outlived its lease.
        problems = []
        for s in ss:
            if s.outcome != "fenced":
                continue
            if daemons.excuse(s) is None:
                problems.append("fenced while its lease was valid: %s" % s)
            else:
                excused_fenced += 1
        res.report("fencing chaos-%d" % r, problems)

    p4, p5, waits = fault_table(run, timelines, daemons, margin_ns, bound_ns,
                                slack_forced, out)
    res.report("p4 expiry moves keep the margin", p4,
               " (%d moves after a pause or partition, min slack %s)" % (
                   len(slack_forced), ms(min(slack_forced,
                                             key=lambda x: x[0])[0])
                   if slack_forced else "-"))
    res.report("p5 granted after healing", p5,
               " (every host, every resource, within %s)" % secs(bound_ns))
    keys = run.get("etcd_keys_left")
    res.report("p5 no keys left in etcd",
               ["could not range the prefix: %s" % run.get("etcd_error")]
               if keys is None else
               ["key left under the prefix: %s" % k for k in keys],
               " (prefix %s)" % run.get("prefix"))

    res.report("logs well-formed", bad + stray)
    res.report("no unexpected errors", unexpected)
    problems = list(run.get("driver_failures", []))
    for d in daemons.list:
        if d.get("final") and d.get("exit") != 0:
            problems.append("the last arbiterd of %s exited %s on SIGTERM "
                            "(log %s)" % (d["host"], d.get("exit"),
                                          d["log"]))
        for m in d.get("sanitizer", []):
            problems.append("arbiterd pid %d: %s" % (d["pid"], m.strip()))
    res.report("processes", problems)
    levels = Counter()
    problems = []
    for d in daemons.list:
        levels.update(d.get("levels", {}))
        problems += ["arbiterd pid %d (%s): %s" % (d["pid"], d["host"],
                                                   l.strip())
                     for l in d.get("notable", []) if "level=error" in l]
    res.report("daemon logs", problems, " (%s)" % ", ".join(
        "%d %s" % (n, lv) for lv, n in sorted(levels.items())))
    kinds = Counter(f["kind"] for f in run["faults"])
    problems = []
    nlong = sum(kinds[k] for k in LONG_FAULTS)
    outlived = counts[OUTLIVED]
    if nlong and (outlived == 0 or excused_fenced == 0):
        problems.append(
            "%d fault(s) that should make holders outlive their lease, but "
            "%s" % (nlong, "no such holder overlapped a newer one"
                    if outlived == 0 else "none of them was fenced"))
    res.report("fencing exercised", problems,
               " (%d holders that outlived their lease met a newer one; %d "
               "fenced sections)" % (outlived, excused_fenced))
    problems = []
    for d in daemons.list:
        if not any(s.dpid == d["pid"] for ss in sections.values()
                   for s in ss):
            problems.append("%s's arbiterd pid %d granted nothing" % (
                d["host"], d["pid"]))
    res.report("liveness", problems)

    for k in (OUTLIVED, "  across hosts", "  on one host", "  on one daemon",
              "  it was fenced", "  it was done with the storage first",
              "overlapping pairs with such a holder",
              "sections that ran past their deadline", "  revoked"):
        print("chaos: %-56s %d" % (k, counts[k]), file=out)
    moves = sorted(x[0] for x in slack)
    print("chaos: %d moves between hosts; slack (next host's grant after "
          "the last section of the previous one): min %s, median %s; after "
          "a pause or partition: min %s" % (
              len(moves), ms(moves[0]) if moves else "-",
              ms(moves[len(moves) // 2]) if moves else "-",
              ms(min(x[0] for x in slack_forced)) if slack_forced else "-"),
          file=out)
    print("chaos: others waited, worst per fault kind: %s" % (", ".join(
        "%s %s (%d)" % (k, secs(max(v)), len(v))
        for k, v in sorted(waits.items())) or "-"), file=out)
    print("chaos: %d sections (%d exclusive, %d shared), %d increments "
          "logged (+%d written by workers killed before logging), %d fenced, "
          "%d timeouts, %d revoked (+%d after their section), %d "
          "reconnects" % (
              stats["sections"], stats["exclusive"], stats["shared"],
              stats["inc"], stats["unlogged increments (killed workers)"],
              stats["fenced"], stats["timeouts"], stats["revoked sections"],
              stats["revoked before release"],
              max(0, stats["connects"] - len(run["worker_runs"]))),
          file=out)
    print("chaos: %d upgrades (%d refused as deadlock, %d timed out, %d "
          "would block)" % (
              stats["upgrade upgraded"], stats["upgrade deadlock"],
              stats["upgrade timeout"], stats["upgrade wouldblock"]),
          file=out)
    print("chaos: %d hosts, %d grants checked, faults: %s; %d fenced "
          "writes, %d violations; %d passed, %d failed" % (
              len(run["hosts"]), stats["sections"], ", ".join(
                  "%d %s" % (n, k) for k, n in sorted(kinds.items()))
              or "none", stats["fenced"], res.violations, res.passed,
              res.failed), file=out)
    return res.failed == 0


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(os.path.join(sys.argv[1], "run.json")) as f:
        run = json.load(f)
    sys.exit(0 if check(run) else 1)


if __name__ == "__main__":
    main()
