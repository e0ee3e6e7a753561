"""The deploy/ pieces agree: the shipped config, the Dockerfile, the
Kubernetes variants and the daemon's own key table."""
import copy
import os
import re
import shutil
import subprocess

import pytest

from deploylib import (CONTAINER, K8S, REPO, SHIPPED_CONF, check_deployment, dpkg_owner,
                       deployment, dockerfile_instructions, entrypoint_argv, exec_form,
                       image_files, image_user, last, load_yaml, parse_conf, shipped)

NATIVE = K8S / "native" / "deployment.yaml"
INTERCEPT = K8S / "intercept"
LEGACY = K8S / "legacy" / "deployment.yaml"
# What the runtime stage installs: the daemon's libraries, and those of cluster
# mode's etcd client (libevent's OpenSSL part and the libevent_core it links,
# OpenSSL itself, jansson).
RUNTIME_PACKAGES = {"libevent-2.1-7", "libprotobuf-c1", "libmsgpackc2", "libinih1",
                    "libevent-openssl-2.1-7", "libevent-core-2.1-7", "libssl3",
                    "libjansson4"}
# The Makefile's pkg-config module lists whose libraries arbiterd links
# (CLUSTER_PKGS: the etcd client's).
MAKEFILE_PKG_VARS = ("PKGS", "CLUSTER_PKGS")


# ------------------------------------------------------------ the config

def test_configmap_source_is_the_image_config():
    assert (K8S / "base" / "arbiter.conf").read_bytes() == SHIPPED_CONF.read_bytes(), \
        "deploy/k8s/base/arbiter.conf must be a copy of deploy/container/arbiter.conf"
    gen = load_yaml(K8S / "base" / "kustomization.yaml")[0]["configMapGenerator"]
    assert gen == [{"name": "arbiter-config", "files": ["arbiter.conf"]}]


def test_shipped_config_sets_what_the_manifests_rely_on():
    want = shipped()
    assert want["socket"] == "/run/arbiter/arbiter.sock"
    assert want["storage"] == "/data"
    assert want["port"] == 9477
    assert want["timeout_ms"] > 0


def daemon_keys(build):
    r = subprocess.run([str(build / "arbiterd"), "--check-config", "-c", "/dev/null"],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    keys, section = set(), None
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and not line.startswith(";"):
            keys.add((section, line.split("=")[0].strip()))
    return keys


def test_shipped_config_keys_are_the_daemons(build):
    known = daemon_keys(build)
    for k in parse_conf(SHIPPED_CONF):
        assert k in known, "%s.%s is not a key of arbiterd" % k


def test_daemon_accepts_the_shipped_config(build):
    r = subprocess.run([str(build / "arbiterd"), "--check-config", "-c", str(SHIPPED_CONF)],
                       capture_output=True, text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    eff = {}
    section = None
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            k, _, v = line.partition(" = ")
            eff[(section, k)] = v
    for k, v in parse_conf(SHIPPED_CONF).items():
        assert eff[k] == v or (k == ("socket", "mode") and int(eff[k], 8) == int(v, 8)), k
    assert eff[("storage", "lock_file")] == "/data/.arbiter.lock"


def test_shipped_config_keys_are_documented_in_top_level_arbiter_conf():
    top = REPO / "arbiter.conf"
    assert top.is_file(), "%s, the reference config, is missing" % top
    documented = set()
    section = None
    for line in top.read_text().splitlines():
        m = re.match(r"^\[(\w+)\]", line)
        if m:
            section = m.group(1)
            continue
        # set (key = v) or shown commented out (; key = v)
        m = re.match(r"^[;#]?\s*([a-z_]+)\s*=", line)
        if m and section:
            documented.add((section, m.group(1)))
    for k in parse_conf(SHIPPED_CONF):
        assert k in documented, "%s.%s is not in the top-level arbiter.conf" % k


# ------------------------------------------------------------ Dockerfile

def test_dockerfile_stages():
    ins = dockerfile_instructions()
    args = {m.group(1): m.group(2) for _, i, a in ins if i == "ARG"
            for m in [re.match(r"(\w+)=(\S+)", a)] if m}
    froms = [a for _, i, a in ins if i == "FROM"]
    assert len(froms) == 2
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0])
        assert re.fullmatch(r"debian:bookworm(-slim)?", image), image
    assert froms[0].endswith(" AS build")
    # The build stage runs the repo's own commands, as a checkout does.
    runs = [a for s, i, a in ins if s == 0 and i == "RUN"]
    assert runs == ["sh scripts/deps.sh", "make all"]


def test_dockerfile_runtime_stage():
    ins = dockerfile_instructions()
    run = " ".join(a for s, i, a in ins if s == 1 and i == "RUN")
    m = re.search(r"apt-get install -y --no-install-recommends ([^&]+)&&", run)
    assert m, run
    assert set(m.group(1).split()) == RUNTIME_PACKAGES
    assert "rm -rf /var/lib/apt/lists/*" in run
    uid, gid = image_user(ins)
    assert uid >= 10000 and gid >= 10000, "a non-root uid outside the host's range"
    assert "--gid %d" % gid in run and "--uid %d" % uid in run
    want = shipped()
    made = re.search(r"install -d -o %d -g %d -m 0770 ([^&]+)" % (uid, gid), run)
    assert made and set(made.group(1).split()) == {os.path.dirname(want["socket"]),
                                                   want["storage"]}
    assert last(ins, "ENV") == "ARBITER_SOCKET=" + want["socket"]
    assert last(ins, "STOPSIGNAL") == "SIGTERM"
    assert last(ins, "EXPOSE") == str(want["port"])
    hc = last(ins, "HEALTHCHECK")
    cmd = exec_form(hc.split(" CMD ", 1)[1])
    assert cmd == ["/usr/local/bin/arbiterctl", "-S", want["socket"], "ping"]


def test_entrypoint_is_exec_form_arbiterd_with_shipped_config():
    ins = dockerfile_instructions()
    ep = exec_form(last(ins, "ENTRYPOINT"))
    assert ep is not None, "ENTRYPOINT must be exec form (arbiterd is PID 1)"
    files = image_files(ins)
    argv = entrypoint_argv(ins)
    assert argv[0] == "/usr/local/bin/arbiterd" and argv[0] in files
    assert argv[1:3] == ["-c", "/etc/arbiter/arbiter.conf"]
    assert files["/etc/arbiter/arbiter.conf"] == SHIPPED_CONF
    assert "/usr/local/bin/arbiterctl" in files


def test_copy_sources_exist_and_pass_the_dockerignore():
    ins = dockerfile_instructions()
    allow = [ln[1:].rstrip("/") for ln in
             (CONTAINER / "Dockerfile.dockerignore").read_text().splitlines()
             if ln.startswith("!")]
    for _, i, a in ins:
        if i != "COPY" or "--from=" in a:
            continue
        for src in a.split()[:-1]:
            src = src.rstrip("/")
            assert (REPO / src).exists(), src
            assert any(src == x or src.startswith(x + "/") for x in allow), \
                "%s is not in Dockerfile.dockerignore's allow-list" % src
    # and what make all needs is there: every top-level source folder
    for d in ("arbiter", "client", "proto"):
        assert d in allow


def test_runtime_packages_exist_in_debian():
    if not shutil.which("apt-cache"):
        pytest.skip("no apt-cache here")
    for p in sorted(RUNTIME_PACKAGES):
        r = subprocess.run(["apt-cache", "show", p], capture_output=True, text=True)
        assert r.returncode == 0 and "Package: %s" % p in r.stdout, p


def test_binaries_need_only_the_runtime_packages(build):
    if not (shutil.which("ldd") and shutil.which("dpkg")):
        pytest.skip("needs ldd and dpkg")
    needed = set()
    for img, host in image_files().items():
        if not img.startswith(("/usr/local/bin/", "/usr/local/lib/")):
            continue
        out = subprocess.run(["ldd", str(host)], capture_output=True, text=True,
                             check=True).stdout
        # A sanitizer build of the tests pulls in its runtime (and, through
        # it, libstdc++ and libgcc); the image's normal build does not, and
        # the unsanitized pass of this test checks that build.
        sanitized = "libasan" in out or "libubsan" in out
        for lib in re.findall(r"=> (/\S+)", out):
            if sanitized and re.search(r"/lib(asan|ubsan|stdc\+\+|gcc_s)\.so", lib):
                continue
            pkg = dpkg_owner(lib) or dpkg_owner(os.path.realpath(lib))
            assert pkg, "no package ships %s" % lib
            needed.add(pkg)
    needed -= {"libc6"}  # in every Debian image
    assert needed <= RUNTIME_PACKAGES, needed - RUNTIME_PACKAGES


def makefile_link_libs():
    """The -l names of every pkg-config module in MAKEFILE_PKG_VARS."""
    modules = []
    for line in (REPO / "Makefile").read_text().splitlines():
        m = re.match(r"(\w+)\s*:?=\s*(.*)$", line)
        if m and m.group(1) in MAKEFILE_PKG_VARS:
            modules += m.group(2).split()
    assert "libevent" in modules, "the Makefile no longer names its pkg-config modules " \
        "in %s: update MAKEFILE_PKG_VARS" % (MAKEFILE_PKG_VARS,)
    r = subprocess.run(["pkg-config", "--libs-only-l"] + modules, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    return [w[2:] for w in r.stdout.split()]


def test_runtime_packages_cover_what_the_makefile_links():
    """Beside ldd: every library the Makefile links through pkg-config,
    cluster mode's included, comes from a package the image installs, so a
    library added to the Makefile is caught even before a binary needs it
    (the linker's --as-needed drops one that no object uses yet)."""
    if not (shutil.which("pkg-config") and shutil.which("dpkg") and shutil.which("cc")):
        pytest.skip("needs pkg-config, dpkg and cc")
    needed = {}
    for lib in makefile_link_libs():
        if lib in ("m", "pthread", "dl", "rt"):
            continue  # libc6, in every Debian image
        dev = subprocess.run(["cc", "-print-file-name=lib%s.so" % lib], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert os.path.isabs(dev), "the linker finds no lib%s.so" % lib
        pkg = dpkg_owner(os.path.realpath(dev))
        assert pkg, "no package ships %s" % os.path.realpath(dev)
        needed[lib] = pkg
    missing = {lib: p for lib, p in needed.items() if p not in RUNTIME_PACKAGES}
    assert not missing, "the image lacks the packages of -l%s" % missing


# ------------------------------------------------------------ Kubernetes

def test_native_deployment_agrees():
    check_deployment(deployment(NATIVE), legacy=False)


def test_legacy_deployment_agrees():
    check_deployment(deployment(LEGACY), legacy=True)


def test_single_replica_variants_use_recreate():
    for p in (NATIVE, LEGACY):
        d = deployment(p)
        assert d["spec"]["replicas"] == 1
        assert d["spec"]["strategy"] == {"type": "Recreate"}
        claim = load_yaml(K8S / "base" / "pvc.yaml")[0]
        vols = d["spec"]["template"]["spec"]["volumes"]
        assert {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}} \
            in vols


def test_native_and_legacy_run_the_same_arbiter():
    n = deployment(NATIVE)["spec"]["template"]
    g = deployment(LEGACY)["spec"]["template"]
    na = copy.deepcopy(n["spec"]["initContainers"][0])
    ga = copy.deepcopy(next(c for c in g["spec"]["containers"] if c["name"] == "arbiter"))
    na.pop("restartPolicy")
    ga.pop("lifecycle")
    assert na == ga
    assert n["metadata"] == g["metadata"]
    assert n["spec"]["volumes"] == g["spec"]["volumes"]
    assert n["spec"]["securityContext"] == g["spec"]["securityContext"]
    napp = next(c for c in n["spec"]["containers"] if c["name"] == "app")
    gapp = next(c for c in g["spec"]["containers"] if c["name"] == "app")
    # The legacy app only adds the wait for arbiter in front of the same loop.
    assert gapp["args"][0].endswith(napp["args"][0].split("\n", 1)[1])
    assert "arbiterctl -S /run/arbiter/arbiter.sock ping" in gapp["args"][0]
    for k in ("env", "volumeMounts", "securityContext", "resources", "image"):
        assert napp[k] == gapp[k], k


def test_active_standby_patches():
    d = load_yaml(K8S / "active-standby" / "deployment-patch.yaml")[0]
    assert d["spec"]["replicas"] == 2
    assert d["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pvc = load_yaml(K8S / "active-standby" / "pvc-patch.yaml")[0]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    k = load_yaml(K8S / "active-standby" / "kustomization.yaml")[0]
    assert k["resources"][0] == "../native"


def test_app_shell_scripts_parse():
    for p in (NATIVE, LEGACY):
        for c in deployment(p)["spec"]["template"]["spec"]["containers"]:
            if c.get("command", [])[:2] == ["/bin/sh", "-c"]:
                r = subprocess.run(["sh", "-n", "-c", c["args"][0]], capture_output=True,
                                   text=True)
                assert r.returncode == 0, "%s %s: %s" % (p, c["name"], r.stderr)


def test_intercept_variant_wraps_the_app_by_environment_alone():
    """deploy/k8s/intercept: the native variant, with only the app's lock
    program and its env changed: the shim the image ships is preloaded and
    the lock file is on the shared storage; the program itself never calls
    arbiterctl."""
    import kustomize as kustomize_py
    (dep,) = [d for d in kustomize_py.render(str(INTERCEPT))
              if d["kind"] == "Deployment"]
    check_deployment(dep, legacy=False)
    (ndep,) = [d for d in kustomize_py.render(str(K8S / "native"))
               if d["kind"] == "Deployment"]
    native = ndep["spec"]["template"]["spec"]
    spec = dep["spec"]["template"]["spec"]
    assert spec["initContainers"] == native["initContainers"]
    (app,) = spec["containers"]
    (napp,) = native["containers"]
    env = {e["name"]: e.get("value") for e in app["env"]}
    files = image_files()
    assert env["LD_PRELOAD"] in files, "the image must ship the shim"
    assert os.path.basename(env["LD_PRELOAD"]) == "libarbiter-intercept.so"
    want = shipped()
    for f in env["ARBITER_INTERCEPT_FILES"].split(":"):
        assert f.startswith(want["storage"] + "/"), f
    float(env["ARBITER_INTERCEPT_WAIT"])
    assert "arbiterctl" not in app["args"][0]
    assert "flock -n " + env["ARBITER_INTERCEPT_FILES"] in app["args"][0]
    r = subprocess.run(["sh", "-n", "-c", app["args"][0]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for k in ("image", "command", "volumeMounts", "securityContext", "resources"):
        assert app[k] == napp[k], k
    nenv = {e["name"]: e.get("value") for e in napp["env"]}
    assert {k: env[k] for k in nenv} == nenv
