"""The README's walkthrough and its Python example, run as written, so the
README cannot drift from what the programs do.

The walkthrough ("One minute with arbiter") runs against a private daemon:
its `make run` is the daemon this test starts, the socket reaches the
commands through ARBITER_SOCKET, `build/` is this build, and PATH holds
nothing but a shell and sed (both in every Debian system) besides the
commands' own `sleep`: the walkthrough must need nothing `make run` does not
install. Its terminals run on pseudo-terminals, as a user's would, so the
waiting message the README shows is the one printed.

The Python example runs verbatim with the client from the source tree; it
needs qdrant-client, which cannot be installed here, so a stand-in module
of that name records what the example does with it.

The cluster-mode config examples ("Several hosts") go through
`arbiterd --check-config`, so a renamed key or a refused value shows.
"""
import os
import pty
import re
import shutil
import subprocess
import sys

import pytest

import harness
from harness import BUILD, WAIT, LineReader, Wire

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
README = os.path.join(REPO, "README.md")


def section(title):
    text = open(README, encoding="utf-8").read()
    start = text.index("\n## %s\n" % title)
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def blocks(text):
    """(language, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)


def pattern(line):
    """A README output line as a regex: its numbers stand for any."""
    return re.sub(r"\d+", r"\\d+", re.escape(line.strip()))


def only_shell_bin(tmp):
    """A PATH of sh, sed and sleep alone."""
    d = os.path.join(tmp, "bin")
    os.mkdir(d)
    for name in ("sh", "sed", "sleep"):
        os.symlink(shutil.which(name), os.path.join(d, name))
    return d


def on_pty(cmd, **kw):
    """Start cmd with a pseudo-terminal as stderr; its lines readable."""
    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=slave,
                         start_new_session=True, **kw)
    os.close(slave)
    p.err = LineReader(os.fdopen(master, "rb", buffering=0))
    p.out = LineReader(p.stdout, p)
    return p


def test_the_walkthrough_runs_as_written(daemon, procs, tmp_path):
    sec = section("One minute with arbiter")
    bs = blocks(sec)
    assert [lang for lang, _ in bs] == ["sh", "sh", "sh", "sh", ""], bs
    (_, start), (_, hold), (_, wait), (_, kill), (_, result) = bs
    assert start.strip() == "make run"
    assert "pkill" not in sec and "socat" not in sec

    work = str(tmp_path / "clone")
    os.mkdir(work)
    os.symlink(BUILD, os.path.join(work, "build"))
    env = daemon.env()
    env["PATH"] = only_shell_bin(str(tmp_path))
    kw = dict(cwd=work, env=env)

    # Hold 'db' first, so that terminal 3 is queued before terminal 2's
    # grant and reports the holder when its position changes to 1.
    first = Wire(daemon.socket, "first")
    first.lock("db")
    term2 = on_pty(["sh", "-c", hold], **kw)
    procs.append(term2)
    term2.err.wait_for("waiting for 'db': position 1")
    wait_cmd = [l for l in wait.splitlines() if not l.startswith("#")]
    said = [l[2:] for l in wait.splitlines() if l.startswith("# ")]
    assert len(said) == 1, wait
    term3 = on_pty(["sh", "-c", "\n".join(wait_cmd)], **kw)
    procs.append(term3)
    term3.err.wait_for("waiting for 'db': position 2")
    first.close()
    line = term3.err.wait_for("waiting for 'db': position 1")
    assert re.fullmatch(pattern(said[0]), line.strip()), (said[0], line)
    # Terminal 2's arbiterctl has handed the lease to its sleep once the
    # sleep runs; the README's kill needs that pid.
    daemon.log.wait_for("connection handed over")

    r = subprocess.run(["sh", "-c", kill], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=WAIT, **kw)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert term3.wait(WAIT) == 0, term3.err.drain()
    got = [l for l in term3.out.drain() if l]
    want = [l for l in result.splitlines() if l]
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert re.fullmatch(pattern(w), g), (g, w)
    # Exactly the holder was killed: its arbiterctl lived to report
    # CMD's death by SIGKILL (128 + 9) rather than being killed itself.
    assert term2.wait(WAIT) == 128 + 9, term2.err.drain()


def test_the_python_example_runs_as_written(daemon, tmp_path):
    bs = [body for lang, body in blocks(section("Python"))
          if lang == "python"]
    example = bs[0]
    assert "QdrantClient(" in example

    pkg = tmp_path / "site"
    shutil.copytree(os.path.join(REPO, "client", "python", "arbiter_client"),
                    str(pkg / "arbiter_client"),
                    ignore=shutil.ignore_patterns("__pycache__",
                                                  "arbiter_pb2.py"))
    shutil.copy(os.path.join(BUILD, "gen", "python", "arbiter_pb2.py"),
                str(pkg / "arbiter_client"))
    log = tmp_path / "qdrant.log"
    (pkg / "qdrant_client.py").write_text(
        "import json, os\n"
        "def _note(*what):\n"
        "    with open(os.environ['QDRANT_STUB_LOG'], 'a') as f:\n"
        "        f.write(json.dumps(what) + '\\n')\n"
        "class QdrantClient:\n"
        "    def __init__(self, path):\n"
        "        _note('open', path)\n"
        "    def close(self):\n"
        "        _note('close')\n")
    env = daemon.env()
    env["PYTHONPATH"] = str(pkg)
    env["QDRANT_STUB_LOG"] = str(log)
    r = subprocess.run([sys.executable, "-c", example],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=WAIT, env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert log.read_text().splitlines() == ['["open", "/data/qdrant"]',
                                            '["close"]']


def check_config(args, env=None):
    """arbiterd --check-config with args; {"section.key": value}."""
    r = subprocess.run([os.path.join(BUILD, "arbiterd"), "--check-config"] + args,
                       capture_output=True, text=True,
                       env=dict(env or {}, PATH=os.environ["PATH"]))
    assert r.returncode == 0, r.stderr
    out, section = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            k, _, v = line.partition(" = ")
            out["%s.%s" % (section, k)] = v
    return out


def test_the_several_hosts_config_examples_are_accepted(tmp_path):
    """The [cluster] example, in the file form and in the environment and
    -o form, is accepted by --check-config as the README says it is."""
    (_, ini), (_, sh) = blocks(section("Several hosts"))[:2]
    conf = tmp_path / "cluster.conf"
    conf.write_text(ini)
    eff = check_config(["-c", str(conf)])
    for line in ini.splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            value = value.split(";")[0].strip()
            assert eff["cluster." + key.strip()] == value, line

    # ENV=... ENV=... arbiterd -c FILE -o ...: the reference config stands
    # in for the file, which is the installed copy of it.
    words = sh.replace("\\\n", " ").split()
    env = dict(w.split("=", 1) for w in words if re.match(r"ARBITER_\w+=", w))
    args = words[words.index("arbiterd") + 1:]
    args[args.index("-c") + 1] = os.path.join(REPO, "arbiter.conf")
    eff = check_config(args, env)
    assert eff["cluster.backend"] == env["ARBITER_CLUSTER_BACKEND"] == "etcd"
    assert eff["cluster.endpoints"] == env["ARBITER_CLUSTER_ENDPOINTS"]
    assert eff["cluster.host_id"] == args[args.index("-o") + 1].split("=", 1)[1]
