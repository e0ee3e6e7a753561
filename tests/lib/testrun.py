#!/usr/bin/env python3
"""Run the test runners so that their verdict is an exit status, and count.

    testrun.py unit [--valgrind] BIN [CRITERION ARGS...]
        Run a criterion test binary. Criterion runs every test in a worker
        process and ignores the worker's exit status once the test has
        reported, so a leak found at the worker's exit (LeakSanitizer, or
        valgrind's leak check) never reaches the runner's status. Here every
        worker's report is written to a file of its own (ASan/UBSan/LSan
        log_path; valgrind --log-file=%p with --trace-children) and any report
        fails the run, as does a valgrind log without a clean ERROR SUMMARY
        (valgrind killed before it could judge).
    testrun.py step NAME -- CMD...
        Run CMD and record it as one test named NAME (chaos, load, fuzz replay).
    testrun.py expect-fail NAME --says TEXT [--says TEXT...] -- CMD...
        Run CMD, which must FAIL and print every TEXT: proves that a checker
        catches a defect planted on purpose (and failed for that reason, not
        for a missing file).
    testrun.py summary [--allow FILE]
        Read every result recorded under $TEST_RESULTS (this script's records
        and pytest's --junitxml files), list every skipped test with its
        reason and every failure, and print one closing line
        "N passed, F failed, K skipped". Fails if anything failed, or, with
        CI=true, if a skip matches no line of the allow-list FILE.

Results are recorded only when $TEST_RESULTS names a folder.
"""
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

RESULTS = os.environ.get("TEST_RESULTS")

VALGRIND = ["valgrind", "--error-exitcode=99", "--leak-check=full",
            "--show-leak-kinds=definite,indirect",
            "--errors-for-leak-kinds=definite,indirect",
            "--trace-children=yes"]


def record(name, tests):
    """tests: list of (id, status, reason); status passed/failed/skipped."""
    if not RESULTS:
        return
    os.makedirs(RESULTS, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    with open(os.path.join(RESULTS, safe + ".json"), "w") as f:
        json.dump({"runner": name, "tests": [
            {"id": i, "status": s, "reason": r} for i, s, r in tests]}, f)


def add_env_option(env, var, opt):
    env[var] = (env.get(var, "") + ":" + opt).lstrip(":")


def criterion_results(path, binary):
    """(id, status, reason) for every test in criterion's --json report."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return []
    out = []
    for suite in doc.get("test_suites", []):
        for t in suite.get("tests", []):
            st = {"PASSED": "passed", "SKIPPED": "skipped"}.get(
                t.get("status"), "failed")
            tid = "%s::%s::%s" % (binary, suite.get("name"), t.get("name"))
            out.append((tid, st, "; ".join(t.get("messages", []))))
    return out


def valgrind_verdicts(logdir):
    """Text of every valgrind log that is not clean."""
    bad = []
    for log in sorted(glob.glob(os.path.join(logdir, "*.log"))):
        with open(log, errors="replace") as f:
            text = f.read()
        m = re.search(r"ERROR SUMMARY: (\d+) errors", text)
        if m is None:
            bad.append("%s: no ERROR SUMMARY (valgrind was killed?)\n%s" %
                       (log, text[-3000:]))
        elif m.group(1) != "0":
            bad.append("%s:\n%s" % (log, text[-6000:]))
    return bad


def cmd_unit(args):
    use_valgrind = args[0] == "--valgrind"
    if use_valgrind:
        args = args[1:]
    binary, extra = args[0], args[1:]
    name = os.path.relpath(binary)
    label = name + (" (valgrind)" if use_valgrind else "")
    tmp = tempfile.mkdtemp(prefix="testrun-")
    try:
        env = dict(os.environ)
        # Sanitizer reports of the runner and of every worker go to files:
        # one per process, present only when there is something to report.
        add_env_option(env, "ASAN_OPTIONS",
                       "log_path=%s/asan" % tmp)
        add_env_option(env, "UBSAN_OPTIONS",
                       "log_path=%s/ubsan:print_stacktrace=1" % tmp)
        add_env_option(env, "LSAN_OPTIONS", "log_path=%s/lsan" % tmp)
        report = os.path.join(tmp, "report.json")
        cmd = [binary, "--json=" + report] + extra
        if use_valgrind:
            vdir = os.path.join(tmp, "valgrind")
            os.mkdir(vdir)
            cmd = VALGRIND + ["--log-file=%s/%%p.log" % vdir] + cmd
        print("== " + label, flush=True)
        rc = subprocess.call(cmd, env=env)
        tests = criterion_results(report, name)
        problems = []
        if rc != 0:
            problems.append("%s exited with status %d" % (label, rc))
        if not tests:
            problems.append("%s wrote no test report" % label)
        for f in sorted(glob.glob(os.path.join(tmp, "[aul]*san*"))):
            with open(f, errors="replace") as fh:
                problems.append("sanitizer report %s:\n%s" %
                                (os.path.basename(f), fh.read()[-6000:]))
        if use_valgrind:
            problems += valgrind_verdicts(vdir)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            # The worker's leak or memory error cannot be pinned on one
            # criterion test once it ran: the binary's run is what failed.
            tests.append((label + "::memory-and-exit-status", "failed",
                          problems[0].splitlines()[0]))
            print("FAILED: %s (see the reports above)" % label,
                  file=sys.stderr)
        record("unit-" + label + "-" + str(os.getpid()), tests)
        return 1 if problems else 0
    finally:
        shutil.rmtree(tmp, True)


def split_cmd(args):
    if "--" not in args:
        sys.exit("testrun.py: missing -- before the command")
    i = args.index("--")
    return args[:i], args[i + 1:]


def cmd_step(args):
    opts, cmd = split_cmd(args)
    name = opts[0]
    rc = subprocess.call(cmd)
    record("step-" + name, [(name, "passed" if rc == 0 else "failed",
                             "" if rc == 0 else "exit status %d" % rc)])
    return rc


def cmd_expect_fail(args):
    opts, cmd = split_cmd(args)
    name, says = opts[0], []
    i = 1
    while i < len(opts):
        if opts[i] == "--says":
            says.append(opts[i + 1])
            i += 2
        else:
            sys.exit("testrun.py expect-fail: unknown option %s" % opts[i])
    # The planted failures are the point: keep them out of the results.
    env = {k: v for k, v in os.environ.items() if k != "TEST_RESULTS"}
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, errors="replace", env=env)
    missing = [s for s in says if s not in p.stdout]
    if p.returncode == 0 or missing:
        sys.stdout.write(p.stdout[-8000:])
        why = ("exited 0: the checker did not notice the planted defect"
               if p.returncode == 0 else
               "failed without saying %s" % ", ".join(map(repr, missing)))
        print("FAILED: %s %s" % (name, why), file=sys.stderr)
        record("expect-fail-" + name, [(name, "failed", why)])
        return 1
    print("ok: %s failed as it must (status %d, said %s)" %
          (name, p.returncode, ", ".join(map(repr, says))))
    record("expect-fail-" + name, [(name, "passed", "")])
    return 0


def junit_results(path):
    out = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        return [(os.path.basename(path), "failed", "unreadable: %s" % e)]
    runner = os.path.splitext(os.path.basename(path))[0]
    for tc in root.iter("testcase"):
        tid = "%s::%s::%s" % (runner, tc.get("classname", ""),
                              tc.get("name", ""))
        st, reason = "passed", ""
        for child in tc:
            if child.tag == "skipped":
                st, reason = "skipped", child.get("message", "")
            elif child.tag in ("failure", "error"):
                st, reason = "failed", (child.get("message") or "")[:200]
        out.append((tid, st, reason))
    return out


def load_allow(path):
    """(glob, why) per line: 'GLOB  # why it is allowed'; a bare line is an
    error, so that every allowed skip says why."""
    rules = []
    if not path or not os.path.exists(path):
        return rules
    with open(path) as f:
        for n, line in enumerate(f, 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            if "#" not in s:
                sys.exit("%s:%d: every allowed skip needs a '# why' comment"
                         % (path, n))
            pat, why = s.split("#", 1)
            rules.append((pat.strip(), why.strip()))
    return rules


def cmd_summary(args):
    allow = args[args.index("--allow") + 1] if "--allow" in args else None
    if not RESULTS or not os.path.isdir(RESULTS):
        print("no test results under %r" % RESULTS)
        return 1
    tests = []
    for f in sorted(glob.glob(os.path.join(RESULTS, "*"))):
        if f.endswith(".json"):
            with open(f) as fh:
                tests += [(t["id"], t["status"], t["reason"])
                          for t in json.load(fh)["tests"]]
        elif f.endswith(".xml"):
            tests += junit_results(f)
    passed = [t for t in tests if t[1] == "passed"]
    failed = [t for t in tests if t[1] == "failed"]
    skipped = [t for t in tests if t[1] == "skipped"]
    rules = load_allow(allow)
    unallowed = []
    if skipped:
        print("\nskipped tests:")
        for tid, _, reason in skipped:
            text = "%s: %s" % (tid, reason)
            ok = any(fnmatch.fnmatchcase(text, p) for p, _ in rules)
            if not ok:
                unallowed.append(text)
            print("  %s%s" % (text, "" if ok else "   [not on the allow-list]"))
    if failed:
        print("\nfailed tests:")
        for tid, _, reason in failed:
            print("  %s: %s" % (tid, reason))
    ci = os.environ.get("CI", "").lower() == "true"
    if unallowed and ci:
        print("\nCI=true: %d skip(s) not on %s; allow them there with a "
              "reason, or make the test run" % (len(unallowed), allow))
    line = "%d passed, %d failed" % (len(passed), len(failed))
    if skipped:
        line += ", %d skipped" % len(skipped)
    print(line)
    return 1 if failed or (unallowed and ci) else 0


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"unit": cmd_unit, "step": cmd_step, "expect-fail": cmd_expect_fail,
          "summary": cmd_summary}.get(cmd)
    if fn is None:
        sys.exit(__doc__)
    sys.exit(fn(args))


if __name__ == "__main__":
    main()
