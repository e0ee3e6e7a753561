"""arbiterctl's help is generated from its command table, so it cannot
leave a command out: every entry of the table in client/arbiterctl.c is in
`--help` with its synopsis and one-line help, `help COMMAND` prints its
paragraph, an unknown command lists every command, and the synopsis block
of README.md lists exactly the commands `--help` does, line for line.

The table is read from the source, as the README is: both live in the
clone these tests run from.
"""
import os
import re
import subprocess

import harness

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
SOURCE = os.path.join(ROOT, "client", "arbiterctl.c")
README = os.path.join(ROOT, "README.md")
LITERALS = r'((?:"(?:[^"\\]|\\.)*"\s*)+)'


def ctl(*args):
    env = dict(os.environ)
    env.pop("ARBITER_SOCKET", None)
    return subprocess.run([harness.ARBITERCTL] + list(args),
                          stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=harness.WAIT, env=env)


def c_string(literals):
    """The value of adjacent C string literals, with the escapes used in
    help texts (\\n, \\", \\\\) undone."""
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"', literals)
    s = "".join(parts)
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1),
                                                      m.group(1)), s)


def words(s):
    return " ".join(s.split())


def function_text(name):
    """The string literals a help function of client/*.c prints."""
    folder = os.path.join(ROOT, "client")
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".c"):
            continue
        with open(os.path.join(folder, f)) as fh:
            src = fh.read()
        m = re.search(r"\n%s\(FILE \*out\)\n\{(.*?)\n\}" % re.escape(name),
                      src, re.S)
        if m:
            return c_string(" ".join(re.findall(LITERALS, m.group(1))))
    raise AssertionError("no function %s(FILE *out) in client/*.c" % name)


def table():
    """The entries of arbiterctl.c's command table, in order."""
    with open(SOURCE) as f:
        src = f.read()
    m = re.search(r"struct ctl_cmd cmds\[\] = \{\n(.*?)\n\};", src, re.S)
    assert m, "no command table (struct ctl_cmd cmds[]) in arbiterctl.c"
    entries = []
    for block in re.split(r"\n\s*\{\n", "\n" + m.group(1))[1:]:
        e = {k: c_string(v) for k, v in
             re.findall(r"\.(\w+)\s*=\s*" + LITERALS, block)}
        fn = re.search(r"\.more_fn\s*=\s*(\w+)", block)
        e["more_fn"] = fn.group(1) if fn else None
        flags = re.search(r"\.flags\s*=\s*([^,]*),", block)
        e["flags"] = flags.group(1) if flags else ""
        assert "name" in e and "help" in e, block
        entries.append(e)
    assert len(entries) >= 8, entries
    return entries


def help_listing(out):
    """--help's Commands section: its lines, and the name each entry
    starts with."""
    lines = out.split("Commands:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    names = [ln.split()[0] for ln in lines if re.match(r"  \S", ln)]
    return lines, names


def entry_text(lines, name):
    """The words of one command's entry in the listing."""
    out, inside = [], False
    for ln in lines:
        if re.match(r"  \S", ln):
            inside = ln.split()[0] == name
        if inside:
            out.append(ln)
    return words(" ".join(out))


def test_every_command_of_the_table_is_in_help():
    r = ctl("--help")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    lines, names = help_listing(r.stdout)
    cmds = table()
    assert names == [e["name"] for e in cmds]
    for e in cmds:
        want = words(" ".join(
            [e["name"], e.get("args", ""), e["help"]]))
        if "CMD_ADMIN" in e["flags"]:
            want += " (admins only)"
        assert entry_text(lines, e["name"]) == want
    assert max(len(ln) for ln in r.stdout.splitlines()) <= 78


def test_help_command_prints_its_paragraph():
    for e in table():
        r = ctl("help", e["name"])
        assert r.returncode == 0 and r.stderr == "", (e["name"], r.stderr)
        out = words(r.stdout)
        synopsis = words("%s %s" % (e["name"], e.get("args", "")))
        assert out.startswith("usage: arbiterctl "), r.stdout
        assert synopsis in out, (synopsis, r.stdout)
        if e["more_fn"]:
            paragraph = function_text(e["more_fn"])
        else:
            paragraph = e.get("more", e["help"])
        assert words(paragraph) in out, (e["name"], r.stdout)
        assert ("Admins only" in out) == ("CMD_ADMIN" in e["flags"])
        assert ("[OPTIONS]" in out) == ("CMD_CONNECTS" in e["flags"])
        if "alias" in e:
            assert ctl("help", e["alias"]).stdout == r.stdout
            assert "Also answers to '%s'" % e["alias"] in out


def test_run_dash_dash_help_is_help_run():
    want = ctl("help", "run")
    for args in (["run", "--help"], ["run", "-h"]):
        r = ctl(*args)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert r.stdout == want.stdout


def test_help_alone_and_dash_dash_help_print_the_same():
    a, b, c = ctl("help"), ctl("--help"), ctl("-h")
    assert a.returncode == b.returncode == c.returncode == 0
    assert a.stdout == b.stdout == c.stdout
    assert "'arbiterctl help COMMAND'" in b.stdout


def test_an_unknown_command_lists_every_command_and_exits_64():
    names = ", ".join(e["name"] for e in table())
    for args in (["nonsense"], ["help", "nonsense"]):
        r = ctl(*args)
        assert r.returncode == 64, r
        assert r.stdout == ""
        assert r.stderr == ("arbiterctl: unknown command 'nonsense'; "
                            "commands: %s\n" % names)
    r = ctl("help", "run", "extra")
    assert r.returncode == 64 and "unexpected 'extra'" in r.stderr


def test_commands_and_their_alias_are_dispatched_from_the_table(tmp_path):
    gone = str(tmp_path / "none.sock")
    for name in ("ping", "health", "who", "stats", "status"):
        r = ctl("-S", gone, name)
        assert r.returncode == 69, (name, r.stderr)
        assert gone in r.stderr, r.stderr


def test_readme_synopsis_block_is_what_help_prints():
    with open(README) as f:
        readme = f.read()
    m = re.search(r"\n## arbiterctl\n\n```\n(.*?)```\n", readme, re.S)
    assert m, "README.md has no arbiterctl synopsis block"
    first, listing = m.group(1).split("\n\n", 1)
    out = ctl("--help").stdout
    lines, names = help_listing(out)
    usage = out.split("\n\n", 1)[0]
    assert words(first) == words(usage[len("usage: "):])
    readme_names = [ln.split()[0] for ln in listing.splitlines()
                    if re.match(r"  \S", ln)]
    assert readme_names == names, "README.md lists other commands"
    assert listing.splitlines() == lines, (
        "README.md's synopsis block differs from arbiterctl --help: paste "
        "in the Commands lines that build/arbiterctl --help prints")
