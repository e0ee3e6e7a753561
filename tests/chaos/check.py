#!/usr/bin/python3
"""Checker of the mutual-exclusion chaos run (see README.md).

    check.py WORKDIR        re-check a kept run (reads WORKDIR/run.json)

Reads every worker log, the counter journals and the driver's record of
daemon incarnations and kills, and verifies per resource:

  exclusion       within one daemon incarnation, no two exclusive sections
                  overlap and no shared section overlaps an exclusive one
  token-order     within one incarnation, tokens are unique and a section
                  that ended before another started has the smaller token
  token-restart   every token of incarnation k+1 > every token of k
  journal         the counter's history has values 1, 2, 3, ... and strictly
                  increasing tokens (no write with a lower token after a
                  higher one; no two writers incremented the same value)
  no-lost-update  every logged increment is in the journal with its value
                  and writer; journal records with no log line come only
                  from workers we SIGKILLed (at most one each); the counter
                  equals the logged increments plus those
  fencing         a section was refused by the storage only after its own
                  daemon incarnation had been killed
  fencing exercised  when the daemon was killed, some sections outlived
                  their incarnation and were fenced (the path ran)

and globally: no unexpected errors or events in the worker logs, no process
died by itself, the last daemon stopped cleanly, every incarnation granted
leases. The last line is "... N passed, M failed"; the exit status is 0 only
when nothing failed.
"""
import heapq
import json
import os
import re
import sys
from collections import Counter, defaultdict

SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "UndefinedBehaviorSanitizer",
                   "Invalid read", "Invalid write",
                   "definitely lost", "Conditional jump", "uninitialised")
# valgrind's error reports (its lines start with ==PID==); as in
# tests/lib/harness.py.
VALGRIND_ERROR = re.compile(
    r"^==\d+== +(Invalid |Conditional jump|Use of uninitialised|"
    r"Syscall param|Mismatched free|Source and destination overlap|"
    r"Process terminating|Argument '|.*(definitely|indirectly) lost in|"
    r"ERROR SUMMARY: [1-9])")


def is_report(line):
    """True when a daemon's output line belongs to a sanitizer report."""
    return any(m in line for m in SANITIZER_MARKS) or \
        VALGRIND_ERROR.match(line) is not None
REC = 64
SHOW = 5  # examples printed per failed check
REVOKE_CLUSTER_LOST = 6  # proto RevokeReason: the host's session expired


class Section:
    __slots__ = ("res", "token", "excl", "t0", "t1", "outcome", "dpid",
                 "value", "revoked", "pid", "log", "line", "vu", "tr", "tw",
                 "host")
    logs = []  # log file names, indexed by Section.log

    def __init__(self):
        # vu: the lease's deadline (CLOCK_MONOTONIC; 0: a local lease);
        # tr, tw: when the storage took the read / the write (0: none);
        # host: the host whose arbiterd granted it (multi-host runs).
        self.vu = self.tr = self.tw = 0
        self.host = None

    def __str__(self):
        return ("%sres=%d token=%d %s t0=%d t1=%d (%.3f ms) %s dpid=%d "
                "value=%d revoked=%d%s worker=%d [%s]" % (
                    "" if self.host is None else "host=%s " % self.host,
                    self.res, self.token, "E" if self.excl else "S", self.t0,
                    self.t1, (self.t1 - self.t0) / 1e6, self.outcome,
                    self.dpid, self.value, self.revoked,
                    " deadline=t0%+.3fms" % ((self.vu - self.t0) / 1e6)
                    if self.vu else "", self.pid,
                    "%s:%d" % (Section.logs[self.log]
                               if self.log < len(Section.logs) else "?",
                               self.line)))


class Result:
    def __init__(self, out):
        self.out = out
        self.passed = 0
        self.failed = 0
        self.violations = 0

    def report(self, name, problems, note=""):
        if problems:
            self.failed += 1
            self.violations += len(problems)
            print("FAIL %-26s %d violation(s)%s" % (name, len(problems),
                                                    note), file=self.out)
            for p in problems[:SHOW]:
                print("     " + p.replace("\n", "\n     "), file=self.out)
            if len(problems) > SHOW:
                print("     ... and %d more" % (len(problems) - SHOW),
                      file=self.out)
        else:
            self.passed += 1
            print("ok   %-26s%s" % (name, note), file=self.out)


def read_logs(run, revokes_expected=False):
    """Parse every worker log. Returns (sections by resource, stats, bad
    lines, unexpected lines). revokes_expected: a multi-host run, where a
    cluster lease may be revoked when its host loses its etcd session."""
    sections = defaultdict(list)
    stats = Counter()
    bad, unexpected = [], []
    for w in run["worker_runs"]:
        path, pid, host = w["log"], w["pid"], w.get("host")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue  # killed before it wrote anything
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        elif lines:
            lines.pop()  # a last line without "\n": cut by SIGKILL
            stats["cut lines"] += 1
        base = os.path.basename(path)
        Section.logs.append(base)
        li = len(Section.logs) - 1
        for n, raw in enumerate(lines, 1):
            f = raw.decode("utf-8", "replace").split(" ")
            kind = f[0]
            try:
                if kind == "S":
                    s = Section()
                    s.res = int(f[1])
                    s.token = int(f[2])
                    s.excl = f[3] == "E"
                    s.t0, s.t1 = int(f[4]), int(f[5])
                    s.outcome = sys.intern(f[6])
                    s.dpid = int(f[7])
                    s.value = int(f[8])
                    s.revoked = int(f[9])
                    if len(f) > 10:
                        s.vu, s.tr, s.tw = int(f[10]), int(f[11]), int(f[12])
                    s.pid = pid
                    s.host = host
                    s.log, s.line = li, n
                    if f[3] not in ("E", "S") or s.outcome not in (
                            "inc", "read", "fenced") or s.t1 < s.t0 or \
                            len(f) not in (10, 13):
                        raise ValueError("bad section")
                    sections[s.res].append(s)
                    stats["sections"] += 1
                    stats["exclusive" if s.excl else "shared"] += 1
                    stats[s.outcome] += 1
                    if s.revoked:
                        stats["revoked sections"] += 1
                        if not revokes_expected or s.revoked != \
                                REVOKE_CLUSTER_LOST:
                            unexpected.append("revoked while held: %s" % s)
                elif kind == "R":
                    stats["revoked before release"] += 1
                    if not revokes_expected or int(f[2]) != \
                            REVOKE_CLUSTER_LOST:
                        unexpected.append("%s:%d: revoked before the "
                                          "release: %s" % (
                                              base, n, raw.decode(
                                                  "utf-8", "replace")))
                elif kind == "T":
                    stats["timeouts"] += 1
                elif kind == "U":
                    if f[2] not in ("upgraded", "deadlock", "timeout",
                                    "wouldblock"):
                        raise ValueError("bad upgrade")
                    stats["upgrade " + f[2]] += 1
                elif kind == "C":
                    stats["connects"] += 1
                elif kind == "P":
                    stats["long sections"] += 1
                elif kind == "L":
                    stats["connections lost"] += 1
                elif kind == "Q":
                    stats["clean exits"] += 1
                elif kind in ("E", "X"):
                    unexpected.append("%s:%d: %s" % (
                        base, n, raw.decode("utf-8", "replace")))
                else:
                    raise ValueError("unknown line")
            except (ValueError, IndexError):
                bad.append("%s:%d: %r" % (base, n, raw[:200]))
    return sections, stats, bad, unexpected


def read_journal(path):
    """The counter's history: [(value, token, pid)], or an error string."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], None
    if len(data) % REC:
        return None, "%s: %d bytes, not a multiple of %d" % (path, len(data),
                                                            REC)
    out = []
    for i in range(0, len(data), REC):
        r = data[i:i + REC]
        try:
            out.append((int(r[0:20]), int(r[21:41]), int(r[42:52])))
        except ValueError:
            return None, "%s: record %d unreadable: %r" % (path, i // REC, r)
    return out, None


def check_exclusion(secs):
    """secs: one resource, one incarnation. Overlapping pairs with an
    exclusive side."""
    problems = []
    secs = sorted(secs, key=lambda s: s.t0)
    end_all = end_ex = -1
    by_all = by_ex = None
    for s in secs:
        if s.excl and s.t0 < end_all:
            problems.append("overlap:\n  %s\n  %s" % (by_all, s))
        elif not s.excl and s.t0 < end_ex:
            problems.append("overlap:\n  %s\n  %s" % (by_ex, s))
        if s.t1 > end_all:
            end_all, by_all = s.t1, s
        if s.excl and s.t1 > end_ex:
            end_ex, by_ex = s.t1, s
    return problems


def check_token_order(secs):
    problems = []
    dup = [t for t, n in Counter(s.token for s in secs).items() if n > 1]
    for t in dup[:SHOW]:
        problems.append("token %d granted twice:\n  %s" % (t, "\n  ".join(
            str(s) for s in secs if s.token == t)))
    problems += ["token %d granted twice" % t for t in dup[SHOW:]]
    # A section that ended before another started was granted first, so it
    # has the smaller token -- unless both are shared: two readers granted
    # together may start in either order.
    done = []  # heap of (t1, n, section) started earlier
    best = best_ex = None  # finished sections with the highest token
    for n, s in enumerate(sorted(secs, key=lambda s: s.t0)):
        while done and done[0][0] < s.t0:
            _, _, p = heapq.heappop(done)
            if best is None or p.token > best.token:
                best = p
            if p.excl and (best_ex is None or p.token > best_ex.token):
                best_ex = p
        prev = best if s.excl else best_ex
        if prev is not None and prev.token >= s.token:
            problems.append("token went back: an earlier section had a "
                            "higher token:\n  %s\n  %s" % (prev, s))
        heapq.heappush(done, (s.t1, n, s))
    return problems


def check_storage(res, run, r, secs, killed, stats):
    """The journal and no-lost-update checks of resource r: the counter's
    history against the logged sections secs (every host's)."""
    # journal
    path = os.path.join(run["counters"], "r%d.counter" % r)
    journal, err = read_journal(path)
    problems = [err] if err else []
    journal = journal or []
    for i, (v, t, p) in enumerate(journal):
        if v != i + 1:
            problems.append(
                "record %d holds value %d (expected %d): an update was "
                "lost or doubled; writer pid %d token %d" % (i, v, i + 1,
                                                             p, t))
            break
    for i in range(1, len(journal)):
        if journal[i][1] <= journal[i - 1][1]:
            problems.append(
                "record %d written with token %d after record %d with "
                "token %d (writer pids %d, %d)" % (
                    i, journal[i][1], i - 1, journal[i - 1][1],
                    journal[i][2], journal[i - 1][2]))
    counter = journal[-1][0] if journal else 0
    res.report("journal chaos-%d" % r, problems,
               " (counter %d, %d writes)" % (counter, len(journal)))
    # no lost update: log <-> journal
    problems = []
    jt = {t: (v, p) for v, t, p in journal}
    matched = set()
    logged = 0
    for s in secs:
        if s.outcome != "inc":
            continue
        logged += 1
        j = jt.get(s.token)
        if j is None:
            problems.append("logged increment missing from the "
                            "journal: %s" % s)
        elif j != (s.value, s.pid):
            problems.append("logged increment %s but the journal has "
                            "value %d by pid %d" % (s, j[0], j[1]))
        else:
            matched.add(s.token)
    unlogged = Counter()
    for v, t, p in journal:
        if t not in matched:
            unlogged[p] += 1
    for p, n in unlogged.items():
        if n > killed.get(p, 0):
            problems.append(
                "%d journal write(s) by pid %d with no log line, and "
                "that worker was %s" % (
                    n, p, "killed %d time(s)" % killed[p]
                    if killed.get(p) else "never killed"))
    nun = sum(unlogged.values())
    if counter != logged + nun and not problems:
        problems.append("counter %d != %d logged increments + %d "
                        "unlogged" % (counter, logged, nun))
    res.report("no-lost-update chaos-%d" % r, problems,
               " (counter %d %s %d logged increments + %d cut by "
               "SIGKILL)" % (counter, "!=" if counter != logged + nun
                             else "=", logged, nun))
    stats["increments in journals"] += counter
    stats["unlogged increments (killed workers)"] += nun


def check(run, out=sys.stdout):
    if run.get("hosts"):
        # A multi-host run: its own properties (check_cluster.py).
        import check_cluster
        return check_cluster.check(run, out)
    res = Result(out)
    daemons = run["daemons"]
    inc_of = {d["pid"]: i for i, d in enumerate(daemons)}
    killed = Counter(run["killed"])
    sections, stats, bad, unexpected = read_logs(run)

    # Sections per resource and incarnation.
    by = defaultdict(lambda: defaultdict(list))
    stray = []
    for r, secs in sections.items():
        for s in secs:
            k = inc_of.get(s.dpid)
            if k is None:
                stray.append("section on an unknown daemon pid: %s" % s)
                continue
            by[r][k].append(s)

    outlived = fenced_outlived = 0
    for r in range(run["resources"]):
        incs = by.get(r, {})
        # exclusion
        problems = []
        for k, secs in sorted(incs.items()):
            problems += check_exclusion(secs)
        res.report("exclusion chaos-%d" % r, problems,
                   " (%d sections)" % sum(len(v) for v in incs.values()))
        # token order within an incarnation
        problems = []
        for k, secs in sorted(incs.items()):
            problems += check_token_order(secs)
        res.report("token-order chaos-%d" % r, problems)
        # tokens across restarts
        problems = []
        prev = None
        for k in range(len(daemons)):
            secs = incs.get(k)
            if not secs:
                continue
            lo = min(secs, key=lambda s: s.token)
            hi = max(secs, key=lambda s: s.token)
            if prev is not None and lo.token <= prev[1].token:
                problems.append(
                    "incarnation %d (pid %d) granted token %d, not above "
                    "incarnation %d's highest %d:\n  %s\n  %s" % (
                        k, daemons[k]["pid"], lo.token, prev[0],
                        prev[1].token, prev[1], lo))
            prev = (k, hi)
        ranges = ", ".join(
            "%d..%d" % (min(s.token for s in incs[k]),
                        max(s.token for s in incs[k]))
            for k in sorted(incs))
        res.report("token-restart chaos-%d" % r, problems,
                   " (tokens per incarnation: %s)" % ranges)
        check_storage(res, run, r, sections.get(r, ()), killed, stats)
        # fencing
        problems = []
        for k, secs in sorted(incs.items()):
            kill_ns = daemons[k]["kill_ns"]
            for s in secs:
                if kill_ns is not None and s.t1 > kill_ns:
                    outlived += 1
                    fenced_outlived += s.outcome == "fenced"
                if s.outcome != "fenced" or s.revoked:
                    continue
                if kill_ns is None or s.t1 <= kill_ns:
                    problems.append("fenced while its daemon (pid %d) was "
                                    "alive: %s" % (s.dpid, s))
        res.report("fencing chaos-%d" % r, problems)

    res.report("logs well-formed", bad + stray)
    res.report("no unexpected errors", unexpected)
    problems = list(run.get("driver_failures", []))
    if run.get("final_daemon_exit") != 0:
        problems.append("the last arbiterd exited %s on SIGTERM (log %s)" % (
            run.get("final_daemon_exit"), daemons[-1]["log"]))
    for d in daemons:
        for m in d.get("sanitizer", []):
            problems.append("arbiterd pid %d: %s" % (d["pid"], m.strip()))
    res.report("processes", problems)
    # The daemon may warn (a client it dropped, say) but must not log errors.
    levels = Counter()
    problems = []
    for d in daemons:
        levels.update(d.get("levels", {}))
        problems += ["arbiterd pid %d: %s" % (d["pid"], l.strip())
                     for l in d.get("notable", []) if "level=error" in l]
    warns = [l.strip() for d in daemons for l in d.get("notable", [])
             if "level=warn" in l]
    res.report("daemon logs", problems, " (%s)" % ", ".join(
        "%d %s" % (n, lv) for lv, n in sorted(levels.items())))
    for l in warns[:SHOW]:
        print("     warn: " + l, file=out)
    # The fencing path is proven only if it ran: after a daemon kill -9,
    # sections must have outlived their incarnation (their writes are what
    # the journal, no-lost-update and fencing checks judge).
    problems = []
    killed_incs = sum(1 for d in daemons[:-1] if d.get("kill_ns"))
    if killed_incs and (outlived == 0 or fenced_outlived == 0):
        problems.append(
            "%d daemon kill(s) but %s: the fencing path never ran (were "
            "the workers sent SIGUSR1 before the kill?)" % (
                killed_incs, "no section outlived its daemon"
                if outlived == 0 else "no section that outlived its "
                "daemon was fenced"))
    res.report("fencing exercised", problems,
               " (%d sections outlived their daemon, %d fenced)" % (
                   outlived, fenced_outlived))
    problems = []
    for k, d in enumerate(daemons):
        n = sum(len(by[r].get(k, ())) for r in by)
        if n == 0:
            problems.append("incarnation %d (pid %d) granted nothing"
                            % (k, d["pid"]))
    res.report("liveness", problems)

    print("chaos: %d sections (%d exclusive, %d shared), %d increments "
          "logged (+%d written by workers killed before logging), %d fenced, "
          "%d timeouts, %d reconnects; %d sections outlived their daemon "
          "(%d of them fenced)" % (
              stats["sections"], stats["exclusive"], stats["shared"],
              stats["inc"], stats["unlogged increments (killed workers)"],
              stats["fenced"], stats["timeouts"],
              max(0, stats["connects"] - len(run["worker_runs"])),
              outlived, fenced_outlived), file=out)
    print("chaos: %d upgrades (%d refused as deadlock, %d timed out, %d "
          "would block)" % (
              stats["upgrade upgraded"], stats["upgrade deadlock"],
              stats["upgrade timeout"], stats["upgrade wouldblock"]),
          file=out)
    print("chaos: %d grants checked, %d worker kills, %d daemon restarts, "
          "%d violations; %d passed, %d failed" % (
              stats["sections"], len(run["killed"]), len(daemons) - 1,
              res.violations, res.passed, res.failed), file=out)
    return res.failed == 0


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(os.path.join(sys.argv[1], "run.json")) as f:
        run = json.load(f)
    sys.exit(0 if check(run) else 1)


if __name__ == "__main__":
    main()
