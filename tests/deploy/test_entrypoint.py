"""The container's ENTRYPOINT + CMD, run here without Docker.

Docker cannot run on the build machines, so the runtime stage's files are
staged into a temporary root from the Dockerfile's own COPY lines, and the
exact ENTRYPOINT + CMD argv is run from there with the shipped config. Only
the socket and storage paths move, through the ARBITER_<SECTION>_<KEY>
environment overrides (the argv stays the image's). Then the probe commands
of the Kubernetes manifests and the Docker HEALTHCHECK are run against it,
and SIGTERM must stop it with exit 0 within shutdown.timeout_ms.

The PID-1 test adds what a container adds: arbiterd as PID 1 of its own PID
namespace, running as the image's non-root uid.
"""
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploylib import (K8S, children, deployment, dockerfile_instructions, entrypoint_argv,
                       exec_form, free_port, image_user, last, map_args, shipped, stage_image,
                       SLOW, stop, wait_log, wait_ping)


@pytest.fixture
def image(build):
    """A staged runtime image and a private socket folder and storage, laid
    out like the image (uid 10001 owns them when we can chown)."""
    top = Path(tempfile.mkdtemp(prefix="deploytest-"))
    top.chmod(0o755)
    root = top / "rootfs"
    staged = stage_image(root, build)
    run = top / "run"
    data = top / "data"
    uid, gid = image_user()
    for d in (run, data):
        d.mkdir(mode=0o770)
        d.chmod(0o770)
        if os.geteuid() == 0:
            os.chown(d, uid, gid)
    want = shipped()
    sock = run / os.path.basename(want["socket"])
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "ARBITER_SOCKET_PATH": str(sock),
        "ARBITER_STORAGE_PATH": str(data),
        "ARBITER_METRICS_LISTEN": "127.0.0.1:%d" % free_port(),
    }
    mapping = {img: path for img, path in staged.items()}
    mapping[want["socket"]] = sock
    # The image's ENV, with its paths moved like the rest.
    instrs = dockerfile_instructions()
    final = max(s for s, _, _ in instrs)
    for st, i, a in instrs:
        if st == final and i == "ENV":
            k, _, v = a.partition("=")
            env[k] = map_args([v], mapping)[0]
    yield {"top": top, "root": root, "staged": staged, "sock": sock, "data": data,
           "env": env, "mapping": mapping, "argv": map_args(entrypoint_argv(), mapping),
           "arbiterctl": staged["/usr/local/bin/arbiterctl"], "want": want}
    shutil.rmtree(top, ignore_errors=True)




def probe_commands():
    """Every exec probe / hook command of the manifests, and HEALTHCHECK."""
    cmds = []
    for p in (K8S / "native" / "deployment.yaml", K8S / "legacy" / "deployment.yaml"):
        spec = deployment(p)["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c:
                    cmds.append(("%s %s %s" % (p.parent.name, c["name"], kind),
                                 c[kind]["exec"]["command"]))
    hc = last(dockerfile_instructions(), "HEALTHCHECK")
    cmds.append(("Dockerfile HEALTHCHECK", exec_form(hc.split(" CMD ", 1)[1])))
    return cmds


def start(img, prefix=()):
    return subprocess.Popen(list(prefix) + img["argv"], env=img["env"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def check_running(img, proc):
    ctl = img["arbiterctl"]
    r = wait_ping(ctl, img["sock"], proc=proc)
    assert r.stdout.startswith("pong")
    # `kubectl exec POD -c arbiter -- arbiterctl ping`: the image's ENV finds it.
    r = subprocess.run([str(ctl), "ping"], env=img["env"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for what, cmd in probe_commands():
        r = subprocess.run(map_args(cmd, img["mapping"]), env=img["env"],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, "%s: %s" % (what, r.stderr)
    # The socket's mode is the shipped 0660.
    assert (img["sock"].stat().st_mode & 0o777) == 0o660
    assert (img["data"] / ".arbiter.lock").exists()


def test_entrypoint_starts_answers_probes_and_stops_on_sigterm(image):
    proc = start(image)
    try:
        check_running(image, proc)
        # A holder connected at SIGTERM: it is revoked and the daemon still
        # exits 0 within the bound.
        holder = subprocess.Popen(
            [str(image["arbiterctl"]), "-S", str(image["sock"]), "run", "res", "--",
             "sh", "-c", "echo held; exec sleep 60"], env=image["env"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The command prints once it holds the lease: no polling.
        assert holder.stdout.readline() == "held\n", holder.stderr.read()
        assert "1 holding" in subprocess.run(
            [str(image["arbiterctl"]), "-S", str(image["sock"]), "stats"],
            capture_output=True, text=True, env=image["env"]).stdout
    finally:
        rc, took = stop(proc)
    holder_rc = holder.wait(timeout=20 * SLOW)
    err = proc.stderr.read()
    assert rc == 0, err
    assert took < image["want"]["timeout_ms"] / 1000 + 2 * SLOW, took
    assert not image["sock"].exists(), "the socket is removed on exit"
    assert holder_rc == 75, holder.stderr.read()  # arbiterctl: lease revoked


def test_entrypoint_reloads_on_sighup(image):
    proc = start(image)
    try:
        wait_ping(image["arbiterctl"], image["sock"], proc=proc)
        proc.send_signal(signal.SIGHUP)
        wait_ping(image["arbiterctl"], image["sock"], proc=proc)
    finally:
        rc, _ = stop(proc)
    err = proc.stderr.read()
    assert rc == 0, err
    assert "config reloaded" in err


def test_entrypoint_as_pid1_non_root(image, monkeypatch):
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        pytest.skip("needs root, unshare and setpriv to run as PID 1 under the image's uid")
    uid, gid = image_user()
    # The pings below run as root, not as the daemon's uid: trust it, as the
    # image's ENV ARBITER_TRUST_UID does for its users.
    monkeypatch.setenv("ARBITER_TRUST_UID", str(uid))
    prefix = ["unshare", "--pid", "--fork", "--kill-child", "--",
              "setpriv", "--reuid", str(uid), "--regid", str(gid), "--clear-groups", "--"]
    proc = start(image, prefix)
    try:
        wait_ping(image["arbiterctl"], image["sock"], proc=proc)
        (pid,) = children(proc.pid)
        status = Path("/proc/%d/status" % pid).read_text()
        nspid = [ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid:")][0]
        assert nspid[-1] == "1", "arbiterd is PID 1 in its namespace: %s" % nspid
        uids = [ln.split()[1:] for ln in status.splitlines() if ln.startswith("Uid:")][0]
        assert set(uids) == {str(uid)}
        assert os.stat(image["sock"]).st_uid == uid
        check_running(image, proc)
        # SIGTERM to PID 1 works only because arbiterd handles it: the kernel
        # drops signals that would take their default action on PID 1.
        t = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        rc = proc.wait(timeout=20 * SLOW)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, proc.stderr.read()
    assert took < image["want"]["timeout_ms"] / 1000 + 2 * SLOW


def test_metrics_listener_serves_healthz_and_metrics(image, build):
    proc = start(image)
    try:
        # The listener logs before the daemon says it is ready.
        wait_log(proc, "metrics listening")
        wait_ping(image["arbiterctl"], image["sock"], proc=proc)
        base = "http://" + image["env"]["ARBITER_METRICS_LISTEN"]
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.status == 200  # active, the lock is held
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            assert r.status == 200
            assert r.read()
    finally:
        rc, _ = stop(proc)
    assert rc == 0, proc.stderr.read()


def test_legacy_app_waits_for_arbiter(image):
    """The legacy app's wait loop returns once arbiterctl ping answers."""
    app = next(c for c in deployment(K8S / "legacy" / "deployment.yaml")
               ["spec"]["template"]["spec"]["containers"] if c["name"] == "app")
    script = app["args"][0]
    wait = script[:script.index("done\n") + 5]
    assert wait.count("until") == 1
    # arbiterctl in the loop is a wrapper that reports each attempt on a
    # FIFO, so the test sees the loop try, fail and try again (an event, not
    # a sleep) before the daemon starts.
    fifo = image["top"] / "attempts"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # a reader from now on: writers never block
    shim = image["top"] / "arbiterctl-shim"
    shim.write_text('#!/bin/sh\necho attempt >%s\nexec %s "$@"\n' % (
        fifo, image["arbiterctl"]))
    shim.chmod(0o755)
    mapping = dict(image["mapping"])
    mapping["/usr/local/bin/arbiterctl"] = shim
    wait = map_args([wait], mapping)[0]
    assert str(shim) in wait

    def attempt():
        assert select.select([fd], [], [], 30)[0], "the loop never tried"
        return os.read(fd, 8)

    waiter = subprocess.Popen(["sh", "-c", wait], env=image["env"])
    proc = None
    try:
        assert attempt() == b"attempt\n"
        assert attempt() == b"attempt\n"  # the first one failed: it looped
        assert waiter.poll() is None, "returned before arbiter was up"
        proc = start(image)
        assert waiter.wait(timeout=10 * SLOW) == 0
    finally:
        if waiter.poll() is None:
            waiter.kill()
        os.close(fd)
        rc = stop(proc)[0] if proc is not None else 0
    assert rc == 0


def waiters(ctl, img, resource):
    r = subprocess.run([ctl, "-S", str(img["sock"]), "status", "--json", resource],
                       capture_output=True, text=True, env=img["env"])
    if r.returncode != 0:
        return None
    res = json.loads(r.stdout).get("resources", {}).get(resource)
    return len(res["waiters"]) if res else 0


def test_two_replicas_on_one_volume_active_and_standby(image, build):
    """deploy/k8s/active-standby in one machine: two entrypoints on one
    storage, each with its own socket folder (its pod's emptyDir). The second
    is a standby that passes every probe, /healthz tells them apart, and it
    takes over, granting its queued app, when the active one gets SIGTERM."""
    run_b = image["top"] / "run-b"
    run_b.mkdir()
    env_b = dict(image["env"], ARBITER_SOCKET_PATH=str(run_b / image["sock"].name),
                 ARBITER_SOCKET=str(run_b / image["sock"].name),
                 ARBITER_METRICS_LISTEN="127.0.0.1:%d" % free_port())
    img_b = dict(image, env=env_b, sock=run_b / image["sock"].name,
                 mapping=dict(image["mapping"]))
    img_b["mapping"][image["want"]["socket"]] = img_b["sock"]
    ctl = str(image["arbiterctl"])

    def healthz(img):
        url = "http://%s/healthz" % img["env"]["ARBITER_METRICS_LISTEN"]
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    a = start(image)
    b = None
    app = None
    try:
        wait_ping(ctl, image["sock"], proc=a)
        b = start(img_b)
        r = wait_ping(ctl, img_b["sock"], proc=b)
        assert r.stdout.split() == ["pong", "standby"]
        check_running(img_b, b)  # every probe passes on the standby
        # Both answered ping after their ready lines: the roles are settled.
        assert healthz(img_b) == 503 and healthz(image) == 200
        # The standby's app queues (arbiterctl says so on stderr); it is
        # granted after the takeover.
        app = subprocess.Popen([ctl, "-S", str(img_b["sock"]), "run", "-v", "-w", "30", "demo",
                                "--", "true"], env=env_b, stderr=subprocess.PIPE, text=True)
        wait_log(app, "waiting for 'demo'")
        assert waiters(ctl, img_b, "demo") == 1  # queued on the standby
        assert app.poll() is None, "granted by a standby"
        rc_a, _ = stop(a)
        assert rc_a == 0, a.stderr.read()
        assert app.wait(timeout=20 * SLOW) == 0, app.stderr.read()
        assert healthz(img_b) == 200
        assert subprocess.run([ctl, "-S", str(img_b["sock"]), "ping"], capture_output=True,
                              text=True).stdout.split() == ["pong", "active"]
    finally:
        for p in (app, a, b):
            if p is not None and p.poll() is None:
                stop(p)
    assert b.returncode == 0, b.stderr.read()


def intercept_app():
    import kustomize as kustomize_py
    (dep,) = [d for d in kustomize_py.render(str(K8S / "intercept"))
              if d["kind"] == "Deployment"]
    return dep["spec"]["template"]["spec"]["containers"][0]


def test_intercept_app_takes_turns_by_environment_alone(image):
    """The intercept variant's app env on the image's files: flock -n on
    the lock file, which fails while another process holds it, waits for
    its turn instead and runs once the holder lets go."""
    app = intercept_app()
    mapping = dict(image["mapping"])
    mapping[shipped()["storage"]] = image["data"]
    env = dict(image["env"])
    for e in app["env"]:
        env[e["name"]] = map_args([e["value"]], mapping)[0]
    lib = env["LD_PRELOAD"]
    assert lib == str(image["staged"]["/usr/local/lib/libarbiter-intercept.so"])
    with open(lib, "rb") as f:
        if b"__asan_init" in f.read():
            # An ASan build (make asan): the runtime must come first.
            asan = subprocess.run([os.environ.get("CC", "cc"),
                                   "-print-file-name=libasan.so"],
                                  capture_output=True, text=True).stdout.strip()
            env["LD_PRELOAD"] = os.path.realpath(asan) + ":" + lib
            env["ASAN_OPTIONS"] = "detect_leaks=0"
    env["ARBITER_INTERCEPT_VERBOSE"] = "1"
    lock = env["ARBITER_INTERCEPT_FILES"]
    plain = dict(env)
    del plain["LD_PRELOAD"]
    proc = start(image)
    holder = None
    try:
        wait_ping(image["arbiterctl"], image["sock"], proc=proc)
        holder = subprocess.Popen(["flock", "-n", lock, "-c", "echo held; read x"],
                                  env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        assert holder.stdout.readline() == "held\n"
        # Without the environment, the app's lock fails at once.
        r = subprocess.run(["flock", "-n", lock, "-c", "true"], env=plain,
                           capture_output=True, text=True, timeout=10 * SLOW)
        assert r.returncode == 1, r
        # With it, the same command waits for its turn.
        second = subprocess.Popen(["flock", "-n", lock, "-c", "echo second"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        assert "waiting for" in second.stderr.readline()
        assert second.poll() is None
        holder.stdin.write("\n")
        holder.stdin.close()
        assert holder.wait(10 * SLOW) == 0
        out, err = second.communicate(timeout=10 * SLOW)
        assert second.returncode == 0 and out == "second\n", err
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
        rc, _ = stop(proc)
    assert rc == 0
