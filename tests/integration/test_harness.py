"""The harness's own guarantees: a sanitizer or valgrind report in any
daemon's output fails the test, however the daemon ended."""
import pytest

import harness

REPORTS = [
    "==4242== Invalid read of size 4",
    "==4242== Conditional jump or move depends on uninitialised value(s)",
    "==4242==    64 bytes in 1 blocks are definitely lost in loss record 1",
    "==4242== ERROR SUMMARY: 3 errors from 3 contexts (suppressed: 0 from 0)",
    "==4242==ERROR: AddressSanitizer: heap-use-after-free on address 0x1",
    "==4242==ERROR: LeakSanitizer: detected memory leaks",
    "arbiter/conn.c:12:5: runtime error: signed integer overflow",
]


@pytest.mark.parametrize("line", REPORTS)
def test_every_kind_of_report_is_recognised(line):
    assert harness.sanitizer_reports(["ts=1 level=info msg=ok", line]) == \
        [line]
    with pytest.raises(AssertionError):
        harness.assert_no_reports(["ok", line])


def test_clean_output_is_not_a_report():
    assert not harness.sanitizer_reports([
        "==4242== ERROR SUMMARY: 0 errors from 0 contexts",
        "==4242== Memcheck, a memory error detector",
        'ts=1 level=info msg="arbiter ready"'])


def planted(tmp_path, monkeypatch, line, **kw):
    """A real arbiterd whose output starts with a planted report line."""
    monkeypatch.setattr(harness, "WRAPPER", [
        "sh", "-c", 'echo "%s" >&2; exec "$@"' % line, "sh"])
    return harness.Daemon(tmp_path, **kw)


def test_a_report_from_a_daemon_killed_with_sigkill_fails(tmp_path,
                                                          monkeypatch):
    since = len(harness.STARTED)
    d = planted(tmp_path, monkeypatch, REPORTS[0])
    d.kill9()
    with pytest.raises(AssertionError, match="Invalid read"):
        harness.scan_started(since)


def test_a_report_from_a_daemon_that_refused_to_start_fails(tmp_path,
                                                            monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".arbiter.state").write_bytes(b"")
    d = planted(tmp_path, monkeypatch, REPORTS[5], wait_ready=False)
    with pytest.raises(AssertionError, match="LeakSanitizer"):
        harness.expect_refusal(d, "empty")


def test_a_refusal_must_say_why(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".arbiter.state").write_bytes(b"")
    d = harness.Daemon(tmp_path, wait_ready=False)
    with pytest.raises(AssertionError, match="refused without saying"):
        harness.expect_refusal(d, "a sentence it never prints")
