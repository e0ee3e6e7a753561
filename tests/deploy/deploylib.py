"""Shared helpers for the deploy/ tests (fixtures are in conftest.py).

The tests read deploy/ as data (Dockerfile, YAML, the shipped arbiter.conf,
the systemd unit) and check that the pieces agree with each other and with
the daemon. Those that run the daemon take the binaries from $ARBITER_BUILD
(an absolute build folder, e.g. `make all BUILD=build-deploy` then
ARBITER_BUILD=$PWD/build-deploy).

Nothing here needs Docker, a cluster or a running systemd: the image's
runtime stage is "staged" into a temporary root folder from the Dockerfile's
own COPY lines, and its ENTRYPOINT/CMD are run from there.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CONTAINER = DEPLOY / "container"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
SHIPPED_CONF = CONTAINER / "arbiter.conf"
DOCKERFILE = CONTAINER / "Dockerfile"
UNIT = SYSTEMD / "arbiterd.service"

# Where the Dockerfile's build stage puts `make all` output (WORKDIR /src,
# default BUILD=build); COPY --from=build sources under it come from
# $ARBITER_BUILD here.
IMAGE_BUILD_DIR = "/src/build"


def _slow():
    """The suite's one slow factor (tests/lib/harness.py: ARBITER_TEST_SLOW,
    x3 for an ASan build), without importing the harness's protobuf."""
    f = float(os.environ.get("ARBITER_TEST_SLOW") or 1)
    build = os.environ.get("ARBITER_BUILD")
    try:
        with open(os.path.join(build or "", "arbiterd"), "rb") as fh:
            if b"__asan_init" in fh.read():  # the ASan runtime's entry
                f *= 3
    except OSError:
        pass
    return max(f, 1.0)


SLOW = _slow()


# ------------------------------------------------------------ config

def parse_conf(path):
    """arbiter.conf as {(section, key): value}, read the way arbiterd does:
    keys in the first column, whole-line ';' or '#' comments."""
    out = {}
    section = None
    for n, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.rstrip()
        if not line or line[0] in ";#":
            continue
        assert line[0] not in " \t", "%s:%d: indented line" % (path, n)
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, "%s:%d: not key = value" % (path, n)
        assert section, "%s:%d: key outside a section" % (path, n)
        out[(section, key.strip())] = value.strip()
    return out


def conf_value(conf, section, key, default=None):
    return conf.get((section, key), default)


def listen_port(listen):
    """Port of a metrics listen address ("0.0.0.0:9477", "[::]:9477")."""
    return int(listen.rsplit(":", 1)[1])


# ------------------------------------------------------------ Dockerfile

def dockerfile_instructions(path=DOCKERFILE):
    """[(stage_index, INSTRUCTION, arguments)], continuations joined and
    comment lines dropped, as Docker reads them."""
    out, stage, buf = [], -1, ""
    for raw in Path(path).read_text().splitlines():
        s = raw.strip()
        if s.startswith("#"):
            continue  # a comment, also inside a continuation
        if not s and not buf:
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        instr, _, rest = buf.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stage += 1
        out.append((stage, instr, rest.strip()))
        buf = ""
    return out


def exec_form(args):
    """The JSON array of an exec-form instruction, or None (shell form)."""
    try:
        v = json.loads(args)
    except ValueError:
        return None
    return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None


def last(instrs, name, stage=None):
    hits = [a for s, i, a in instrs if i == name and (stage is None or s == stage)]
    return hits[-1] if hits else None


def image_files(instrs=None):
    """{path in the runtime image: path on this machine} for every file the
    runtime stage COPYs: --from=build sources map into $ARBITER_BUILD (None
    when it is not set), the others into the repository."""
    instrs = instrs or dockerfile_instructions()
    final = max(s for s, _, _ in instrs)
    build = os.environ.get("ARBITER_BUILD")
    files = {}
    for s, i, a in instrs:
        if s != final or i != "COPY":
            continue
        words = a.split()
        opts = [w for w in words if w.startswith("--")]
        srcs, dest = [w for w in words if not w.startswith("--")][:-1], words[-1]
        from_build = any(o.startswith("--from=") for o in opts)
        for src in srcs:
            if from_build:
                assert src.startswith(IMAGE_BUILD_DIR + "/"), src
                host = (Path(build) / src[len(IMAGE_BUILD_DIR) + 1:]) if build else None
            else:
                host = REPO / src
            target = dest + os.path.basename(src) if dest.endswith("/") else dest
            files[target] = host
    return files


def entrypoint_argv(instrs=None):
    instrs = instrs or dockerfile_instructions()
    final = max(s for s, _, _ in instrs)
    ep = exec_form(last(instrs, "ENTRYPOINT", final) or "null") or []
    cmd = exec_form(last(instrs, "CMD", final) or "[]") or []
    return ep + cmd


# ------------------------------------------------------------ YAML

def load_yaml(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def yaml_files():
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))


def deployment(path):
    docs = [d for d in load_yaml(path) if d.get("kind") == "Deployment"]
    assert len(docs) == 1, path
    return docs[0]


# ------------------------------------------------------------ processes

def stage_image(root, build_dir):
    """Copy what the runtime stage COPYs into root/<image path>, with the
    folders the Dockerfile creates. Returns {image path: staged path}."""
    staged = {}
    for img, host in image_files().items():
        assert host is not None and host.exists(), "%s (for %s) is missing" % (host, img)
        dst = root / img.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(host, dst)
        staged[img] = dst
    for d in (root, *[p for p in root.rglob("*") if p.is_dir()]):
        d.chmod(0o755)
    return staged


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_log(proc, needle, timeout=None):
    """Read proc's stderr (a pipe) until a line holds needle; return it.

    Reads the file descriptor itself, so the file object stays usable for a
    later read() (which then lacks what was read here: that is kept in
    proc.log_seen).
    """
    import select
    timeout = timeout or 10 * SLOW
    fd = proc.stderr.fileno()
    seen = getattr(proc, "log_seen", "")
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError("no %r from arbiterd in %g s:\n%s"
                                 % (needle, timeout, seen))
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError("arbiterd exited (%s) before %r:\n%s"
                                 % (proc.wait(), needle, seen))
        seen += chunk.decode("utf-8", "replace")
        proc.log_seen = seen
    return next(l for l in seen.splitlines() if needle in l)


def wait_ping(arbiterctl, sock, timeout=None, proc=None):
    """The daemon answers a ping. With proc, its "arbiter ready" log line is
    awaited first, so the ping is never a guess."""
    timeout = timeout or 10 * SLOW
    if proc is not None and proc.stderr is not None:
        if not getattr(proc, "ready_seen", False):
            wait_log(proc, "arbiter ready", timeout)
            proc.ready_seen = True
        # Ready means answering: one ping, no retry loop.
        r = subprocess.run([str(arbiterctl), "-S", str(sock), "ping"],
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, "arbiterd said ready but %s: %s" % (
            sock, r.stderr)
        return r
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run([str(arbiterctl), "-S", str(sock), "ping"],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0:
            return r
        if proc is not None and proc.poll() is not None:
            raise AssertionError("arbiterd exited with %s before answering: %s"
                                 % (proc.returncode, proc.stderr.read() if proc.stderr else ""))
        if time.monotonic() > deadline:
            raise AssertionError("no answer on %s: %s" % (sock, r.stderr))
        time.sleep(0.05)


def stop(proc, sig=signal.SIGTERM, timeout=None):
    """Signal, wait, return (exit code, seconds taken)."""
    t = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=timeout or 20 * SLOW)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return rc, time.monotonic() - t


def map_args(argv, mapping):
    """Replace whole arguments, and path prefixes inside them, by mapping."""
    out = []
    for a in argv:
        for k, v in mapping.items():
            if a == k:
                a = str(v)
                break
            a = a.replace(k, str(v))
        out.append(a)
    return out


def children(pid):
    try:
        return [int(x) for x in Path("/proc/%d/task/%d/children" % (pid, pid)).read_text().split()]
    except OSError:
        return []


def rx(pattern, text, flags=re.M):
    m = re.search(pattern, text, flags)
    return m.group(1) if m else None


# ------------------------------------------------------------ image contents

_ESSENTIAL = {}


def dpkg_owner(path):
    """The Debian package that ships path, or None."""
    r = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if line.startswith("diversion by") or ": " not in line:
            continue
        return line.split(": ", 1)[0].split(",")[0].split(":")[0]
    return None


def essential_in_debian(path):
    """Is path shipped by an Essential: yes package (so it is in every
    debian:bookworm(-slim) image)? Asked of this Debian's dpkg."""
    if path in _ESSENTIAL:
        return _ESSENTIAL[path]
    ok = False
    if shutil.which("dpkg"):
        pkg = dpkg_owner(path)
        if pkg:
            q = subprocess.run(["dpkg-query", "-W", "-f=${Essential}", pkg],
                               capture_output=True, text=True)
            ok = q.stdout.strip() == "yes"
    _ESSENTIAL[path] = ok
    return ok


def in_image(cmd0, files=None):
    """Does the runtime image have this program (absolute, or on PATH)?"""
    files = files if files is not None else image_files()
    if cmd0.startswith("/"):
        return cmd0 in files or essential_in_debian(cmd0)
    for d in ("/usr/local/bin", "/usr/bin", "/bin"):
        if in_image(d + "/" + cmd0, files):
            return True
    return False


def image_user(instrs=None):
    instrs = instrs or dockerfile_instructions()
    uid, _, gid = last(instrs, "USER", max(s for s, _, _ in instrs)).partition(":")
    return int(uid), int(gid or uid)


def quantity(q):
    """Kubernetes quantity to a number (cpu cores or bytes)."""
    q = str(q)
    units = {"m": 1e-3, "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "k": 1e3, "M": 1e6, "G": 1e9}
    for u in sorted(units, key=len, reverse=True):
        if q.endswith(u):
            return float(q[:-len(u)]) * units[u]
    return float(q)


# ------------------------------------------------------------ deployments

def shipped():
    """The values the manifests must agree with, from the shipped config."""
    conf = parse_conf(SHIPPED_CONF)
    return {
        "socket": conf_value(conf, "socket", "path"),
        "storage": conf_value(conf, "storage", "path"),
        "port": listen_port(conf_value(conf, "metrics", "listen")),
        "timeout_ms": int(conf_value(conf, "shutdown", "timeout_ms", "5000")),
    }


def arbiter_container(spec, legacy):
    inits = {c["name"]: c for c in spec.get("initContainers", [])}
    conts = {c["name"]: c for c in spec["containers"]}
    if legacy:
        assert "arbiter" in conts and not inits, "legacy: arbiter is a plain container"
        c = conts["arbiter"]
        assert "restartPolicy" not in c
        return c, [x for n, x in conts.items() if n != "arbiter"]
    assert "arbiter" in inits and "arbiter" not in conts, "native: arbiter is an init container"
    c = inits["arbiter"]
    assert c.get("restartPolicy") == "Always", "native sidecar needs restartPolicy: Always"
    return c, list(conts.values())


def container_env(c):
    """A container's env as {name: value}; a valueFrom entry maps to its
    valueFrom dict."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"]
            for e in c.get("env", [])}


def probe_cmd(probe):
    assert "exec" in probe, "probes are exec probes: %r" % probe
    return probe["exec"]["command"]


def check_deployment(dep, legacy):
    """Everything a Deployment must agree on with the shipped config, the
    Dockerfile and the other variant. Raises AssertionError."""
    want = shipped()
    instrs = dockerfile_instructions()
    files = image_files(instrs)
    uid, gid = image_user(instrs)
    argv = entrypoint_argv(instrs)
    conf_in_image = argv[argv.index("-c") + 1]
    assert files[conf_in_image] == SHIPPED_CONF

    tmpl = dep["spec"]["template"]
    spec = tmpl["spec"]
    arb, apps = arbiter_container(spec, legacy)
    assert apps, "an app container next to arbiter"
    vols = {v["name"]: v for v in spec["volumes"]}
    sockdir = os.path.dirname(want["socket"])

    def mounts(c):
        return {m["mountPath"]: m for m in c.get("volumeMounts", [])}

    # arbiter: the socket folder is a pod-private emptyDir, the storage the
    # data claim, the config the ConfigMap at the path ENTRYPOINT reads. In
    # cluster mode each arbiterd has a storage folder of its own (an
    # emptyDir: on a shared volume all but one would stand by), and the
    # data claim is the app's alone.
    env = container_env(arb)
    cluster = env.get("ARBITER_CLUSTER_BACKEND", "none") == "etcd"
    storage = env.get("ARBITER_STORAGE_PATH", want["storage"])
    am = mounts(arb)
    run_vol = am[sockdir]["name"]
    data_vol = am[storage]["name"]
    assert "emptyDir" in vols[run_vol], "socket folder must be an emptyDir"
    if cluster:
        assert "emptyDir" in vols[data_vol], "cluster mode: arbiterd's own storage folder"
        assert want["storage"] not in am, "cluster mode: the shared data is the app's"
    else:
        assert "persistentVolumeClaim" in vols[data_vol]
    cfg = am[os.path.dirname(conf_in_image)]
    assert cfg.get("readOnly") is True
    assert vols[cfg["name"]]["configMap"]["name"].startswith("arbiter-config")
    assert "command" not in arb, "arbiter runs the image's ENTRYPOINT"
    for a in arb.get("args", []):
        assert a == "-o" or "=" in a, "args may only add -o overrides: %r" % a
    assert arb["image"].split(":")[0].split("/")[-1] == "arbiter"

    # The app(s): same two volumes at the same paths, and the socket path.
    for app in apps:
        m = mounts(app)
        assert m[sockdir]["name"] == run_vol, app["name"]
        if cluster:
            assert "persistentVolumeClaim" in vols[m[want["storage"]]["name"]], app["name"]
            assert data_vol not in {x["name"] for x in m.values()}, app["name"]
        else:
            assert m[want["storage"]]["name"] == data_vol, app["name"]
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env.get("ARBITER_SOCKET") == want["socket"], app["name"]
        if app["image"].split(":")[0] == "arbiter" and "command" in app:
            assert in_image(app["command"][0], files), app["command"]

    # Probes: exec arbiterctl -S <socket> ping, a program the image has;
    # never /healthz for liveness or readiness (a standby answers 503).
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        cmd = probe_cmd(arb[kind])
        assert in_image(cmd[0], files), "%s: %s is not in the image" % (kind, cmd[0])
        assert os.path.basename(cmd[0]) == "arbiterctl" and cmd[-1] == "ping", cmd
        assert cmd[cmd.index("-S") + 1] == want["socket"], cmd
        assert arb[kind]["timeoutSeconds"] >= 1
    assert arb["startupProbe"]["periodSeconds"] * arb["startupProbe"]["failureThreshold"] >= 10

    # Metrics: the container port, the scrape annotations and the config agree.
    ports = {p["name"]: p["containerPort"] for p in arb.get("ports", [])}
    assert ports.get("metrics") == want["port"]
    ann = tmpl["metadata"].get("annotations", {})
    assert ann.get("prometheus.io/scrape") == "true"
    assert ann.get("prometheus.io/port") == str(want["port"])
    assert ann.get("prometheus.io/path") == "/metrics"

    # Shutdown: the grace period covers arbiter's bound, after the app's time
    # (legacy: the preStop sleep that lets the app stop first).
    grace_ms = spec["terminationGracePeriodSeconds"] * 1000
    before_ms = 0
    if legacy:
        pre = arb["lifecycle"]["preStop"]["exec"]["command"]
        assert in_image(pre[0], files) and os.path.basename(pre[0]) == "sleep", pre
        before_ms = int(pre[1]) * 1000
        assert before_ms > 0
    assert grace_ms > before_ms + want["timeout_ms"], (grace_ms, before_ms, want)
    if not legacy:
        assert "lifecycle" not in arb, "native sidecars are stopped after the app by Kubernetes"

    # Identity: the image's numeric user, and fsGroup for the shared files.
    psc = spec["securityContext"]
    assert psc["fsGroup"] == gid and psc.get("runAsNonRoot") is True
    for c in [arb] + apps:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
    sc = arb["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"]) == (uid, gid)

    # Resources: requests and limits, limits above requests.
    r = arb["resources"]
    for res in ("cpu", "memory"):
        assert quantity(r["limits"][res]) >= quantity(r["requests"][res]) > 0, res
    assert quantity(r["limits"]["memory"]) >= 32 * 2 ** 20, "measured peak is ~23 MiB"
    return arb, apps
