"""The README's recipes that can run here, run verbatim: the code blocks
are extracted from README.md, so the README cannot drift from what is
tested."""
import http.client
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from conftest import PYDIR, WAIT, client_env

README = os.path.join(PYDIR, "README.md")


def recipe(name):
    text = open(README, encoding="utf-8").read()
    m = re.search(r"<!-- recipe: %s -->\s*```python\n(.*?)```" % name, text,
                  re.S)
    assert m, "README.md has no recipe %r" % name
    return m.group(1)


@pytest.fixture
def recipe_dir(tmp_path, daemon):
    (tmp_path / "app_db.py").write_text(recipe("sqlite"))
    (tmp_path / "server.py").write_text(recipe("prefork"))
    env = client_env()
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env["PYTHONPATH"]
    env["ARBITER_SOCKET"] = daemon.socket
    env["APP_DB"] = str(tmp_path / "app.db")
    return tmp_path, env


def test_sqlite_recipe_from_many_processes(recipe_dir, procs):
    tmp, env = recipe_dir
    code = ("import app_db\n"
            "for _ in range(25):\n"
            "    app_db.add_visit('/home')\n")
    ps = [subprocess.Popen([sys.executable, "-c", code], env=env,
                           stderr=subprocess.PIPE, text=True)
          for _ in range(6)]
    procs.extend(ps)
    for p in ps:
        _, err = p.communicate(timeout=WAIT * 3)
        assert p.returncode == 0, err
    out = subprocess.run([sys.executable, "-c",
                          "import app_db; print(app_db.visits('/home'))"],
                         env=env, capture_output=True, text=True,
                         timeout=WAIT)
    assert out.stdout.strip() == "150", out.stderr


def test_prefork_server_recipe(recipe_dir, procs):
    tmp, env = recipe_dir
    env["PORT"] = "0"
    p = subprocess.Popen([sys.executable, str(tmp / "server.py")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    procs.append(p)
    try:
        line = p.stdout.readline()
        assert line.startswith("listening on port"), p.stderr.read()
        port = int(line.split()[-1])
        statuses = []
        errors = []

        def post(n):
            try:
                for _ in range(n):
                    c = http.client.HTTPConnection("127.0.0.1", port,
                                                   timeout=WAIT)
                    c.request("POST", "/page")
                    r = c.getresponse()
                    statuses.append((r.status, r.read()))
                    c.close()
            except Exception as exc:         # pragma: no cover
                errors.append(exc)
        ts = [threading.Thread(target=post, args=(10,)) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(WAIT * 3)
        assert errors == []
        assert len(statuses) == 80
        assert all(s == 200 for s, _ in statuses)
        counts = sorted(int(body) for _, body in statuses)
        assert counts[-1] == 80              # no lost update
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(WAIT)
