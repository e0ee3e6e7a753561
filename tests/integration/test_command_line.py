"""arbiterd's command line: help, version, usage errors (exit 2 with the
usage on stderr), --help-config and the -S/-s shorthands."""
import harness


def test_help_prints_the_usage_on_stdout_and_exits_0():
    r = harness.run_arbiterd(["--help"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: arbiterd [-c FILE]"), r.stdout
    for flag in ("--check-config", "--help-config", "--reset-state",
                 "--version", "-o SECTION.KEY=VALUE"):
        assert flag in r.stdout
    assert "usage" not in r.stderr, "the help goes to stdout"
    assert harness.run_arbiterd(["-h"]).stdout == r.stdout


def test_version_names_the_version_and_the_protocol():
    r = harness.run_arbiterd(["--version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("arbiterd 0.") and "(protocol " in r.stdout, \
        r.stdout
    assert harness.run_arbiterd(["-V"]).stdout == r.stdout


def test_an_unknown_option_is_a_usage_error():
    r = harness.run_arbiterd(["--no-such-option"])
    assert r.returncode == 2
    assert "no-such-option" in r.stderr
    assert "usage: arbiterd" in r.stderr
    assert r.stdout == ""


def test_an_extra_argument_is_named_and_refused():
    r = harness.run_arbiterd(["-c", "/dev/null", "stray"])
    assert r.returncode == 2
    assert "arbiterd: unexpected argument 'stray'" in r.stderr, r.stderr
    assert "usage: arbiterd" in r.stderr


def test_help_config_lists_keys_with_defaults_and_exits_0():
    r = harness.run_arbiterd(["--help-config"])
    assert r.returncode == 0, r.stderr
    for key in ("socket.path", "storage.path", "storage.hold",
                "limits.max_connections", "log.level", "log.format"):
        assert key in r.stdout, key


def test_socket_and_storage_flags_are_overrides(tmp_path):
    r = harness.run_arbiterd(["-c", "/dev/null", "--check-config",
                              "-S", str(tmp_path / "s.sock"),
                              "--storage", str(tmp_path / "st")])
    assert r.returncode == 0, r.stderr
    assert str(tmp_path / "s.sock") in r.stdout
    assert str(tmp_path / "st") in r.stdout


def test_a_missing_config_file_is_named():
    r = harness.run_arbiterd(["-c", "/nonexistent/arbiter.conf",
                              "--check-config"])
    assert r.returncode == 2
    assert "/nonexistent/arbiter.conf" in r.stderr, r.stderr
