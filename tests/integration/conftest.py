import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))

import harness  # noqa: E402


@pytest.fixture(autouse=True)
def scan_every_daemon():
    """Every daemon a test starts, however it ended (stopped, refused to
    start, killed with SIGKILL), is scanned for sanitizer and valgrind
    reports after the test; a report fails the test."""
    since = len(harness.STARTED)
    yield
    harness.scan_started(since)


@pytest.fixture
def daemon(tmp_path):
    """A running arbiterd in a private folder, stopped after the test."""
    started = []

    def start(**kw):
        d = harness.Daemon(tmp_path, **kw)
        started.append(d)
        return d

    d = start()
    d.start_another = start
    yield d
    for x in started:
        harness.check_clean_exit(x)


@pytest.fixture
def procs():
    """Processes a test starts in the background; all killed at the end."""
    ps = []
    yield ps
    for p in ps:
        harness.kill_tree(p)
