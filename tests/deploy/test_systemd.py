"""deploy/systemd/arbiterd.service: systemd-analyze verify and security, the
unit against the daemon's defaults, the sandbox against what arbiterd really
does (strace), and the sd_notify protocol played through $NOTIFY_SOCKET.

systemd is not PID 1 on the build machines, so the unit cannot be started
here. What stands in: `systemd-analyze verify` on a copy whose ExecStart
points at the built binary, `systemd-analyze security --offline=yes`, and a
traced run of the daemon whose system calls, socket families and written
paths are checked against SystemCallFilter=, RestrictAddressFamilies= and
ProtectSystem=strict (and the container's readOnlyRootFilesystem).
"""
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from deploylib import SLOW, UNIT, children, free_port, parse_conf, stop, wait_ping

REPO_CONF = Path(__file__).resolve().parents[2] / "arbiter.conf"


def unit_settings(path=UNIT):
    """[(key, value)] of the [Service] section (and the others), in order."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line and line[0] not in "#;[" and "=" in line:
            k, _, v = line.partition("=")
            out.append((k, v))
    return out


def one(key):
    vals = [v for k, v in unit_settings() if k == key]
    assert len(vals) == 1, (key, vals)
    return vals[0]


def seconds(v):
    m = re.fullmatch(r"(\d+)(s|min|ms)?", v)
    n = int(m.group(1))
    return {"s": n, None: n, "min": 60 * n, "ms": n / 1000}[m.group(2)]


@pytest.fixture(scope="module")
def unit_copy(build, tmp_path_factory):
    """The unit with ExecStart pointing at the built arbiterd (verify wants
    the binary to exist)."""
    d = tmp_path_factory.mktemp("unit")
    text = UNIT.read_text().replace("/usr/local/bin/arbiterd", str(build / "arbiterd"))
    p = d / UNIT.name
    p.write_text(text)
    return p


def need(tool):
    if not shutil.which(tool):
        pytest.skip("%s is not installed (Debian package %s)" %
                    (tool, {"systemd-analyze": "systemd", "strace": "strace"}[tool]))


def test_systemd_analyze_verify(unit_copy):
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_copy)],
                       capture_output=True, text=True, cwd=unit_copy.parent)
    mine = [ln for ln in r.stderr.splitlines() if UNIT.name in ln]
    assert r.returncode == 0 and not mine, r.stderr


def test_systemd_analyze_security_score(unit_copy, record_property):
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                        str(unit_copy)], capture_output=True, text=True,
                       cwd=unit_copy.parent)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout + r.stderr
    score = float(m.group(1))
    record_property("exposure", score)
    print("\nsystemd-analyze security --offline=yes: %s %s" % (score, m.group(2)))
    assert score <= 2.0, "hardening regressed:\n" + r.stdout


def daemon_defaults(build):
    r = subprocess.run([str(build / "arbiterd"), "--check-config", "-c", "/dev/null"],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0
    eff, section = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            k, _, v = line.partition(" = ")
            eff[(section, k)] = v
    return eff


def test_unit_agrees_with_the_daemon(build):
    assert one("Type") == "notify"
    assert one("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("User") == "arbiter" and "DynamicUser" not in dict(unit_settings())
    start = one("ExecStart").split()
    assert start[0] == "/usr/local/bin/arbiterd"
    sock = start[start.index("--socket") + 1]
    assert sock == "/run/%s/arbiter.sock" % one("RuntimeDirectory")
    # No -c: arbiterd reads /etc/arbiter/arbiter.conf when it exists, and its
    # built-in storage.path is the StateDirectory.
    eff = daemon_defaults(build)
    assert eff[("storage", "path")] == "/var/lib/%s" % one("StateDirectory")
    timeouts = [int(eff[("shutdown", "timeout_ms")])]
    if REPO_CONF.exists():
        timeouts.append(int(parse_conf(REPO_CONF).get(("shutdown", "timeout_ms"), 0)))
    assert seconds(one("TimeoutStopSec")) * 1000 > max(timeouts) + 1000
    assert int(one("LimitNOFILE")) > int(eff[("limits", "max_connections")])
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert one("ProtectSystem") == "strict" and one("NoNewPrivileges") == "yes"
    assert one("CapabilityBoundingSet") == ""


def test_sysusers_file():
    text = (UNIT.parent / "arbiter.sysusers").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines and lines[0].split()[:2] == ["u", one("User")]
    if shutil.which("systemd-sysusers"):
        r = subprocess.run(["systemd-sysusers", "--dry-run", str(UNIT.parent / "arbiter.sysusers")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


# ------------------------------------------------------------ the sandbox vs strace

def syscall_groups():
    """{"@group": [members]} from systemd-analyze syscall-filter."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"],
                         capture_output=True, text=True, check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not line.startswith(" "):
            cur = s
            groups[cur] = []
        elif cur:
            groups[cur].append(s)
    return groups


def expand(name, groups):
    if not name.startswith("@"):
        return {name}
    out = set()
    for m in groups[name]:
        out |= expand(m, groups)
    return out


def unit_allowed_syscalls():
    groups = syscall_groups()
    allowed = None
    for k, v in unit_settings():
        if k != "SystemCallFilter":
            continue
        deny = v.startswith("~")
        names = set()
        for n in v.lstrip("~").split():
            names |= expand(n, groups)
        if allowed is None:
            assert not deny, "the first SystemCallFilter= is an allow list"
            allowed = names
        elif deny:
            allowed -= names
        else:
            allowed |= names
    return allowed


@pytest.fixture(scope="module")
def trace(build):
    """strace of arbiterd through start, clients, SIGHUP and SIGTERM."""
    need("strace")
    top = Path(tempfile.mkdtemp(prefix="deploytest-"))
    run, data = top / "run", top / "data"
    out = top / "trace"
    env = {"PATH": os.environ["PATH"], "ARBITER_SOCKET_PATH": str(run / "arbiter.sock"),
           "ARBITER_STORAGE_PATH": str(data),
           # LeakSanitizer cannot run under ptrace; the other checks still do.
           "ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"),
                                                  "detect_leaks=0"]))}
    ctl = [str(build / "arbiterctl"), "-S", str(run / "arbiter.sock")]
    holder, ok = None, False
    p = subprocess.Popen(["strace", "-f", "-qq", "-o", str(out), str(build / "arbiterd"),
                          "-o", "metrics.listen=127.0.0.1:%d" % free_port()],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ping(build / "arbiterctl", run / "arbiter.sock", timeout=20 * SLOW, proc=p)
        subprocess.run(ctl + ["run", "r", "--", "true"], check=True, env=env)
        subprocess.run(ctl + ["stats"], check=True, env=env, capture_output=True)
        subprocess.run(ctl + ["who"], env=env, capture_output=True)
        holder = subprocess.Popen(ctl + ["run", "--ttl", "1", "x", "--", "sh", "-c",
                                         "echo held; exec sleep 30"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert holder.stdout.readline() == "held\n"  # the lease is granted
        (daemon,) = children(p.pid)  # signals go to arbiterd, not to strace
        os.kill(daemon, signal.SIGHUP)
        wait_ping(build / "arbiterctl", run / "arbiter.sock", proc=p)
        os.kill(daemon, signal.SIGTERM)
        rc = p.wait(timeout=20 * SLOW)  # strace exits with arbiterd's status
        ok = True
    finally:
        if not ok:  # failed half-way: leave nothing behind
            for pid in children(p.pid):
                os.kill(pid, signal.SIGKILL)
            p.kill()
            p.wait()
        if holder is not None:  # revoked at shutdown: arbiterctl exits 75
            try:
                holder.wait(timeout=10 * SLOW)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()
    text = out.read_text()
    shutil.rmtree(top, ignore_errors=True)
    assert rc == 0, p.stderr.read()
    assert "SIGHUP" in text and "SIGTERM" in text
    return {"text": text, "top": str(top)}


def traced_calls(text):
    calls = []
    for line in text.splitlines():
        m = re.match(r"^\d+\s+([a-z0-9_]+)\((.*)", line)
        if m:
            calls.append((m.group(1), m.group(2)))
    return calls


def test_every_syscall_is_allowed_by_the_unit(trace):
    need("systemd-analyze")
    allowed = unit_allowed_syscalls()
    used = {name for name, _ in traced_calls(trace["text"])}
    assert used, "strace saw nothing"
    assert used - allowed == set(), "SystemCallFilter= would refuse these"


def test_socket_families_are_the_units(trace):
    fams = {m for name, args in traced_calls(trace["text"]) if name == "socket"
            for m in [args.split(",")[0]]}
    # AF_NETLINK: glibc's getaddrinfo(AI_ADDRCONFIG) for the metrics address
    # asks the kernel which families have addresses, and falls back when it
    # may not; test_daemon_works_without_netlink checks that fallback.
    assert fams - {"AF_NETLINK"} <= set(one("RestrictAddressFamilies").split()), fams


@pytest.fixture(scope="module")
def restrict_af(tmp_path_factory):
    """tests/deploy/restrict_af.c built: RestrictAddressFamilies= without
    systemd (a seccomp filter on socket()'s family)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    out = tmp_path_factory.mktemp("raf") / "restrict_af"
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-o", str(out),
                    str(Path(__file__).with_name("restrict_af.c"))], check=True)
    return out


def test_daemon_works_without_netlink(build, restrict_af):
    """Inside RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6: the socket
    answers, the metrics listener binds and /healthz says 200, exit 0."""
    import urllib.request
    top = Path(tempfile.mkdtemp(prefix="deploytest-"))
    port = free_port()
    env = {"PATH": os.environ["PATH"], "ARBITER_SOCKET_PATH": str(top / "a.sock"),
           "ARBITER_STORAGE_PATH": str(top / "data"),
           "ARBITER_METRICS_LISTEN": "0.0.0.0:%d" % port}
    p = subprocess.Popen([str(restrict_af), str(build / "arbiterd")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ping(build / "arbiterctl", top / "a.sock", proc=p)
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=5) as r:
            assert r.status == 200
    finally:
        rc, _ = stop(p)
        shutil.rmtree(top, ignore_errors=True)
    assert rc == 0, p.stderr.read()


def test_writes_only_to_socket_folder_and_storage(trace, build):
    """ProtectSystem=strict / readOnlyRootFilesystem: arbiterd writes only
    its socket folder and the storage."""
    bad = []
    for name, args in traced_calls(trace["text"]):
        paths = re.findall(r'"(/[^"]*)"', args)
        writes = (
            (name in ("open", "openat", "openat2", "creat") and
             re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args)) or
            name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rename", "renameat",
                     "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod",
                     "fchmodat", "chown", "fchownat", "lchown", "truncate", "mknod",
                     "mknodat", "bind")
        )
        if not writes:
            continue
        for path in paths:
            if path == "/dev/null":
                continue
            # A --coverage build (make coverage) writes its .gcda counters
            # beside its objects at exit: gcov's, not the daemon's.
            if path.startswith(str(build) + "/") and path.endswith(".gcda"):
                continue
            if not path.startswith(trace["top"] + "/") and path != trace["top"]:
                bad.append((name, path))
    # mkdir -p of the storage walks its parents (EEXIST); that is not a write.
    bad = [(n, p) for n, p in bad if not (n.startswith("mkdir") and
                                           trace["top"].startswith(p.rstrip("/") + "/"))]
    assert bad == []


# ------------------------------------------------------------ sd_notify

@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_notify_ready_after_lock_and_listen_stopping_on_sigterm(build, abstract):
    """Type=notify: READY=1 only once the lock is held and the socket answers;
    STOPPING=1 after SIGTERM, before exit. systemd's side played here."""
    top = Path(tempfile.mkdtemp(prefix="deploytest-"))
    try:
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = "@arbiter-notify-test-%d" % os.getpid()
            ns.bind("\0" + name[1:])
        else:
            name = str(top / "notify")
            ns.bind(name)
        ns.settimeout(20)
        sock, data = top / "arbiter.sock", top / "data"
        env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": name}
        p = subprocess.Popen([str(build / "arbiterd"), "--socket", str(sock),
                              "--storage", str(data)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
        try:
            got = []
            while "READY=1" not in got:
                got += ns.recv(4096).decode().split("\n")
            # At READY=1 the socket answers and the storage lock is held.
            r = subprocess.run([str(build / "arbiterctl"), "-S", str(sock), "ping"],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            with open(data / ".arbiter.lock", "rb") as f:
                with pytest.raises(OSError):
                    fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            p.send_signal(signal.SIGTERM)
            while "STOPPING=1" not in got:
                got += ns.recv(4096).decode().split("\n")
        finally:
            rc, _ = stop(p)
        assert rc == 0, p.stderr.read()
    finally:
        shutil.rmtree(top, ignore_errors=True)
