"""tests/lib/testrun.py, which turns every runner's results into make
test's verdict: failures fail, unlisted skips fail under CI=true, and a
planted defect must be reported."""
import os
import subprocess
import sys

TESTRUN = os.path.join(os.path.dirname(__file__), "..", "lib", "testrun.py")

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
<testcase classname="t" name="test_ok" />
<testcase classname="t" name="test_kube">
<skipped type="pytest.skip" message="neither kubectl nor kustomize" />
</testcase>
<testcase classname="t" name="test_uid">
<skipped type="pytest.skip" message="switching uid needs root" />
</testcase>
%s
</testsuite></testsuites>
"""
FAILED = '<testcase classname="t" name="test_bad"><failure message="x"/>' \
    '</testcase>'


def run(results, *args, ci=False):
    env = dict(os.environ, TEST_RESULTS=str(results))
    env.pop("CI", None)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, TESTRUN] + list(args), env=env,
                          capture_output=True, text=True)


def allow(tmp_path, text):
    p = tmp_path / "skips.allow"
    p.write_text(text)
    return str(p)


def test_the_closing_line_counts_every_runner_and_lists_skips(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.xml").write_text(JUNIT % "")
    assert run(res, "step", "chaos", "--", "true").returncode == 0
    r = run(res, "summary")
    assert r.returncode == 0, r.stdout
    lines = r.stdout.splitlines()
    assert lines[-1] == "2 passed, 0 failed, 2 skipped"
    assert "  a::t::test_kube: neither kubectl nor kustomize" \
        "   [not on the allow-list]" in lines


def test_a_failure_anywhere_fails_the_summary(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.xml").write_text(JUNIT % FAILED)
    r = run(res, "summary")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1] == "1 passed, 1 failed, 2 skipped"
    res2 = tmp_path / "results2"
    assert run(res2, "step", "load", "--", "false").returncode == 1
    r = run(res2, "summary")
    assert r.returncode == 1 and r.stdout.splitlines()[-1] == \
        "0 passed, 1 failed"


def test_under_ci_a_skip_off_the_allow_list_fails(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "a.xml").write_text(JUNIT % "")
    only_root = allow(tmp_path, "*: *needs root*  # non-root CI\n")
    assert run(res, "summary", "--allow", only_root).returncode == 0
    r = run(res, "summary", "--allow", only_root, ci=True)
    assert r.returncode == 1 and "test_kube" in r.stdout
    both = allow(tmp_path, "*: *needs root*  # non-root CI\n"
                 "*test_kube: *  # no cluster tools\n")
    assert run(res, "summary", "--allow", both, ci=True).returncode == 0
    bare = allow(tmp_path, "*test_kube: *\n")
    r = run(res, "summary", "--allow", bare, ci=True)
    assert r.returncode != 0 and "needs a '# why' comment" in r.stderr


def test_expect_fail_needs_the_failure_and_its_report(tmp_path):
    res = tmp_path / "results"
    ok = run(res, "expect-fail", "x", "--says", "definitely lost", "--",
             "sh", "-c", "echo '64 bytes definitely lost'; exit 1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # A checker that does not notice (exit 0) fails the self-test...
    r = run(res, "expect-fail", "x", "--says", "definitely lost", "--",
            "true")
    assert r.returncode == 1 and "did not notice" in r.stderr
    # ...and so does a failure for another reason than the planted defect.
    r = run(res, "expect-fail", "x", "--says", "definitely lost", "--",
            "sh", "-c", "echo 'No rule to make target'; exit 2")
    assert r.returncode == 1 and "without saying" in r.stderr
