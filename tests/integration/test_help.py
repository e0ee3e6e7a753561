"""arbiterctl's usage: every way of asking for it prints it and exits 0,
and its synopsis names every option."""
import subprocess

import pytest

from harness import ARBITERCTL, WAIT


def ctl(*args):
    return subprocess.run([ARBITERCTL] + list(args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=WAIT)


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["help"],
                                  ["run", "--help"], ["run", "-h"]],
                         ids=" ".join)
def test_asking_for_help_prints_the_usage(args):
    r = ctl(*args)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.startswith("usage: arbiterctl"), r.stdout
    assert "run [-x|-s]" in r.stdout
    assert "invalid option" not in r.stderr + r.stdout
    assert "unrecognized option" not in r.stderr + r.stdout
    assert r.stderr == ""


def test_the_synopsis_shows_every_option():
    out = ctl("--help").stdout
    head = out[:out.index("Commands:")]
    for opt in ("-S SOCKET", "-c CONFIG", "-t SECS", "--trust-uid UID"):
        assert opt in head, (opt, head)
    run = out[out.index("  run "):out.index("  ping")]
    for opt in ("-x|-s", "-n | -w SECS", "-E CODE", "-v", "--ttl SECS",
                "--grace SECS", "--fail-fast"):
        assert opt in run, (opt, run)


def test_help_says_when_the_waiting_message_shows():
    out = " ".join(ctl("run", "--help").stdout.split())
    assert "waiting for 'db': position 1, held by pid" in out
    assert "only when stderr is a terminal, or with -v" in out
