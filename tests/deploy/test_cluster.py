"""The cluster variant (deploy/k8s/cluster) holds together: its arbiter
sidecars are configured for cluster mode with real config keys, point at
every member of the etcd it ships, keep the native sidecar's security, and
leave room for etcd's elections in the session TTL (CLUSTER.md's timing
rule: TTL >= 3 x election timeout + safety margin)."""
import copy
import os
import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

import kustomize as kustomize_py
from deploylib import K8S, SHIPPED_CONF, container_env

CLUSTER = K8S / "cluster"
# etcd's defaults, for a flag the manifest leaves out.
ETCD_DEFAULTS = {"election-timeout": "1000", "heartbeat-interval": "100"}
POD_NAME = "app-5d8f7c9b4-x7k2p"  # what fieldRef metadata.name gives a pod


@pytest.fixture(scope="module")
def docs():
    return kustomize_py.render(str(CLUSTER))


def one(docs, kind, name=None):
    hits = [d for d in docs if d["kind"] == kind and
            (name is None or d["metadata"]["name"] == name)]
    assert len(hits) == 1, "%d %s %s in %s" % (len(hits), kind, name or "", CLUSTER)
    return hits[0]


def sidecar(docs):
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    (arb,) = [c for c in spec["initContainers"] if c["name"] == "arbiter"]
    return arb


def etcd_parts(docs):
    """(StatefulSet, its etcd container, headless Service, client Service)."""
    sts = one(docs, "StatefulSet")
    headless = one(docs, "Service", sts["spec"]["serviceName"])
    others = [d for d in docs if d["kind"] == "Service" and d is not headless]
    assert len(others) == 1, "one client Service besides the headless one"
    (etcd,) = sts["spec"]["template"]["spec"]["containers"]
    return sts, etcd, headless, others[0]


def etcd_flags(etcd):
    """The etcd container's --flag=value arguments, as {flag: value}."""
    flags = {}
    for a in etcd.get("command", [])[1:] + etcd.get("args", []):
        m = re.fullmatch(r"--([a-z0-9-]+)=(.*)", a)
        assert m, "etcd argument %r is not --flag=value" % a
        assert m.group(1) not in flags, "etcd flag --%s given twice" % m.group(1)
        flags[m.group(1)] = m.group(2)
    return flags


def port_named(container, name):
    (p,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return p


def service_port(svc, name):
    (p,) = [p for p in svc["spec"]["ports"] if p["name"] == name]
    return p


def help_config_keys(build):
    """{ENV NAME: "section.key"} for every key of arbiterd --help-config."""
    r = subprocess.run([str(build / "arbiterd"), "--help-config"], capture_output=True,
                       text=True, env={"PATH": os.environ["PATH"]})
    assert r.returncode == 0, r.stderr
    keys = {}
    for line in r.stdout.splitlines():
        m = re.match(r"([a-z_]+)\.([a-z_0-9]+) = ", line)
        if m:
            keys[("ARBITER_%s_%s" % m.groups()).upper()] = "%s.%s" % m.groups()
    assert "ARBITER_CLUSTER_BACKEND" in keys, "no [cluster] keys in --help-config"
    return keys


def resolve(v):
    """An env value as a pod would see it (fieldRef metadata.name: the pod
    name); other valueFrom sources are refused."""
    if isinstance(v, str):
        return v
    assert v == {"fieldRef": {"fieldPath": "metadata.name"}}, v
    return POD_NAME


def effective_config(build, env):
    """arbiterd --check-config on the shipped config with env, as
    {"section.key": value}."""
    r = subprocess.run([str(build / "arbiterd"), "--check-config", "-c", str(SHIPPED_CONF)],
                       capture_output=True, text=True,
                       env=dict(env, PATH=os.environ["PATH"]))
    assert r.returncode == 0, "arbiterd refuses the sidecar's config: " + r.stderr
    out, section = {}, None
    for line in r.stdout.splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif " = " in line:
            k, _, v = line.partition(" = ")
            out["%s.%s" % (section, k)] = v
    return out


def sidecar_env(docs):
    return {k: resolve(v) for k, v in container_env(sidecar(docs)).items()}


# ------------------------------------------------------------ arbiter

def test_sidecar_env_names_are_config_keys(docs, build):
    """Every ARBITER_* variable of the sidecar is ARBITER_<SECTION>_<KEY> of
    a key arbiterd has: arbiterd ignores unknown names, so a renamed key
    would otherwise silently leave cluster mode off."""
    keys = help_config_keys(build)
    env = container_env(sidecar(docs))
    assert env, "the sidecar configures cluster mode by environment"
    for name in env:
        assert name in keys, "%s is no arbiterd key (arbiterd --help-config)" % name
    for name in ("ARBITER_CLUSTER_BACKEND", "ARBITER_CLUSTER_ENDPOINTS",
                 "ARBITER_CLUSTER_HOST_ID", "ARBITER_CLUSTER_SESSION_TTL_MS",
                 "ARBITER_STORAGE_PATH"):
        assert name in env, name
    assert env["ARBITER_CLUSTER_BACKEND"] == "etcd"
    assert env["ARBITER_CLUSTER_HOST_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}, \
        "host_id is the pod name"


def test_daemon_runs_the_sidecars_config(docs, build):
    """The shipped config with the sidecar's environment passes
    --check-config (cluster.* checked together), and every variable shows
    in the effective config as its key's value."""
    keys = help_config_keys(build)
    env = sidecar_env(docs)
    eff = effective_config(build, env)
    for name, value in env.items():
        assert eff[keys[name]] == value, (name, eff[keys[name]], value)
    assert eff["cluster.host_id"] == POD_NAME
    assert eff["storage.hold"] == "always"


def test_endpoints_are_every_member_of_the_shipped_etcd(docs):
    sts, etcd, headless, client = etcd_parts(docs)
    port = service_port(headless, "client")["port"]
    assert service_port(client, "client")["port"] == port
    want = {"http://%s-%d.%s:%d" % (sts["metadata"]["name"], i, headless["metadata"]["name"],
                                    port)
            for i in range(sts["spec"]["replicas"])}
    got = sidecar_env(docs)["ARBITER_CLUSTER_ENDPOINTS"].split(",")
    assert len(got) == len(set(got))
    assert set(got) == want, "list every etcd member through the headless Service"


def test_session_ttl_leaves_room_for_etcd_elections(docs, build):
    """CLUSTER.md's timing rule, from the etcd flags and the sidecar's
    effective config: TTL >= 3 x election timeout + safety margin."""
    _, etcd, _, _ = etcd_parts(docs)
    flags = dict(ETCD_DEFAULTS, **etcd_flags(etcd))
    election = int(flags["election-timeout"])
    # etcd itself refuses an election timeout under 5 heartbeats.
    assert election >= 5 * int(flags["heartbeat-interval"])
    eff = effective_config(build, sidecar_env(docs))
    ttl = int(eff["cluster.session_ttl_ms"])
    margin = int(eff["cluster.safety_margin_ms"])
    assert ttl >= 3 * election + margin, \
        "session_ttl_ms %d < 3 x --election-timeout %d + safety_margin_ms %d" % (
            ttl, election, margin)


def test_sidecar_is_the_native_one_but_for_cluster_mode(docs):
    """Same image, probes, resources, uids and hardening as ../native; only
    the environment and arbiterd's own storage folder differ."""
    native = kustomize_py.render(str(K8S / "native"))
    ntmpl = one(native, "Deployment")["spec"]["template"]
    ctmpl = one(docs, "Deployment")["spec"]["template"]
    n, c = copy.deepcopy(sidecar(native)), copy.deepcopy(sidecar(docs))
    assert "env" not in n
    c.pop("env")
    nm = {m["mountPath"]: m for m in n.pop("volumeMounts")}
    cm = {m["mountPath"]: m for m in c.pop("volumeMounts")}
    assert n == c
    for path in ("/run/arbiter", "/etc/arbiter"):
        assert nm[path] == cm[path], path
    assert set(cm) - set(nm) == {sidecar_env(docs)["ARBITER_STORAGE_PATH"]}
    assert ntmpl["metadata"] == ctmpl["metadata"]
    for k in ("securityContext", "terminationGracePeriodSeconds",
              "automountServiceAccountToken", "enableServiceLinks"):
        assert ntmpl["spec"][k] == ctmpl["spec"][k], k
    (napp,) = ntmpl["spec"]["containers"]
    (capp,) = ctmpl["spec"]["containers"]
    assert napp == capp, "the app container is the native demo's"


def test_probes_do_not_depend_on_etcd(docs):
    """An etcd outage must not restart the pods: arbiter's probes ask the
    daemon alone (ping over the socket), never an HTTP endpoint."""
    arb = sidecar(docs)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert list(arb[kind]) and "exec" in arb[kind], kind
        assert arb[kind]["exec"]["command"][-1] == "ping", kind


def test_app_pods_spread_across_nodes(docs):
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] > 1
    labels = dep["spec"]["template"]["metadata"]["labels"]
    tsc = dep["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and t["maxSkew"] == 1 and
               t["labelSelector"]["matchLabels"].items() <= labels.items() for t in tsc), tsc
    # The shared dataset is on a volume every node can mount read-write.
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]


# ------------------------------------------------------------ etcd

def test_etcd_services_select_the_members(docs):
    sts, etcd, headless, client = etcd_parts(docs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True, \
        "members must resolve each other before a quorum makes them Ready"
    assert client["spec"].get("clusterIP") != "None"
    for svc in (headless, client):
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert port_named(etcd, p["targetPort"]) == p["port"], p
    assert {p["name"] for p in headless["spec"]["ports"]} == {"client", "peer"}
    assert sts["spec"]["podManagementPolicy"] == "Parallel"


def test_etcd_flags_agree_with_the_services(docs):
    sts, etcd, headless, _ = etcd_parts(docs)
    f = etcd_flags(etcd)
    name, svc = sts["metadata"]["name"], headless["metadata"]["name"]
    env = container_env(etcd)
    assert f["name"] == "$(POD_NAME)"
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    client, peer = port_named(etcd, "client"), port_named(etcd, "peer")
    assert urlsplit(f["listen-client-urls"]).port == client
    assert urlsplit(f["listen-peer-urls"]).port == peer
    assert f["advertise-client-urls"] == "http://$(POD_NAME).%s:%d" % (svc, client)
    assert f["initial-advertise-peer-urls"] == "http://$(POD_NAME).%s:%d" % (svc, peer)
    members = dict(m.split("=", 1) for m in f["initial-cluster"].split(","))
    assert members == {"%s-%d" % (name, i): "http://%s-%d.%s:%d" % (name, i, svc, peer)
                       for i in range(sts["spec"]["replicas"])}
    assert f["initial-cluster-state"] == "new"
    metrics = port_named(etcd, "metrics")
    assert urlsplit(f["listen-metrics-urls"]).port == metrics
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert etcd[kind]["httpGet"]["port"] == "metrics", kind
        assert etcd[kind]["httpGet"]["path"].startswith("/health"), kind
    # The data directory is on the member's own claim.
    (mount,) = [m for m in etcd["volumeMounts"] if f["data-dir"].startswith(m["mountPath"])]
    assert mount["name"] in {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}


def test_etcd_flags_are_etcds():
    """Every flag is one etcd knows (Debian's etcd 3.4 here; every flag
    used is in 3.4 and 3.5)."""
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (sh scripts/deps.sh test installs etcd-server)")
    r = subprocess.run(["etcd", "--help"], capture_output=True, text=True)
    known = set(re.findall(r"--([a-z0-9-]+)", r.stdout + r.stderr))
    _, etcd, _, _ = etcd_parts(kustomize_py.render(str(CLUSTER)))
    for flag in etcd_flags(etcd):
        assert flag in known, "--%s is not an etcd flag" % flag


def test_etcd_is_a_release_arbiter_is_safe_on(docs):
    """etcd >= 3.5.13 or >= 3.4.31 (leases revoked by an old leader, watch
    loss after compaction); a tag, not latest."""
    _, etcd, _, _ = etcd_parts(docs)
    m = re.fullmatch(r"(quay\.io/coreos/etcd|gcr\.io/etcd-development/etcd)"
                     r":v(\d+)\.(\d+)\.(\d+)(@sha256:[0-9a-f]{64})?", etcd["image"])
    assert m, "an upstream etcd image with a version tag: %s" % etcd["image"]
    v = tuple(int(x) for x in m.group(2, 3, 4))
    assert v >= (3, 5, 13) or (3, 4, 31) <= v < (3, 5, 0), v


def test_etcd_members_on_separate_nodes_with_a_budget(docs):
    sts, etcd, _, _ = etcd_parts(docs)
    n = sts["spec"]["replicas"]
    assert n >= 3 and n % 2 == 1
    labels = sts["spec"]["template"]["metadata"]["labels"]
    terms = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and
               t["labelSelector"]["matchLabels"].items() <= labels.items() for t in terms)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] <= (n - 1) // 2, "a drain must keep the quorum"
    sc = etcd["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "cpu" not in etcd["resources"].get("limits", {}), \
        "a throttled member misses heartbeats and forces elections"


def test_only_the_app_and_the_members_reach_etcd(docs):
    sts, etcd, _, _ = etcd_parts(docs)
    labels = sts["spec"]["template"]["metadata"]["labels"]
    app = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    allowed = {}
    for rule in np["spec"]["ingress"]:
        for p in rule["ports"]:
            for src in rule.get("from", [{"podSelector": {"matchLabels": {}}}]):
                allowed.setdefault(p["port"], []).append(src["podSelector"]["matchLabels"])
    client, peer = port_named(etcd, "client"), port_named(etcd, "peer")
    assert any(sel.items() <= app.items() and sel for sel in allowed[client])
    assert all(sel and (sel.items() <= app.items() or sel.items() <= labels.items())
               for sel in allowed[client])
    assert all(sel and sel.items() <= labels.items() for sel in allowed[peer])


# ------------------------------------------------------------ end to end

def etcdlib():
    """tests/cluster's etcd test bed (Debian's etcd on loopback)."""
    import importlib.util
    path = K8S.parents[1] / "tests" / "cluster" / "etcdlib.py"
    spec = importlib.util.spec_from_file_location("cluster_etcdlib", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_sidecar_runs_in_cluster_mode_on_a_real_etcd(docs, build, tmp_path):
    """The image's entrypoint with the sidecar's environment, as the pod
    runs it, against a real etcd member: it grants a cluster token through
    etcd, shows its pod name as host, and when etcd goes away its probes
    and /healthz still pass (they must not restart the pod). Only what
    cannot exist here moves: the endpoints (the member on loopback), the
    socket, the storage folder and the metrics port."""
    import urllib.request
    from deploylib import (SLOW, dockerfile_instructions, entrypoint_argv, free_port,
                           map_args, shipped, stage_image, stop, wait_log)
    lib = etcdlib()
    if not lib.have_etcd():
        pytest.skip("etcd is not installed (sh scripts/deps.sh test installs etcd-server)")
    staged = stage_image(tmp_path / "rootfs", build)
    want = shipped()
    sock = tmp_path / "run" / os.path.basename(want["socket"])
    sock.parent.mkdir(mode=0o770)
    mapping = dict(staged)
    mapping[want["socket"]] = sock
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    instrs = dockerfile_instructions()
    for st, i, a in instrs:
        if st == max(s for s, _, _ in instrs) and i == "ENV":
            k, _, v = a.partition("=")
            env[k] = map_args([v], mapping)[0]
    env.update(sidecar_env(docs))
    port = free_port()
    cl = lib.Cluster(n=1).start()
    proc = None
    try:
        env.update({
            "ARBITER_CLUSTER_ENDPOINTS": cl.endpoints(),
            "ARBITER_STORAGE_PATH": str(tmp_path / "state"),
            "ARBITER_SOCKET_PATH": str(sock),
            "ARBITER_METRICS_LISTEN": "127.0.0.1:%d" % port,
        })
        proc = subprocess.Popen(map_args(entrypoint_argv(), mapping), env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_log(proc, "cluster session active")
        ctl = str(staged["/usr/local/bin/arbiterctl"])
        r = subprocess.run([ctl, "run", "-w", "30", "demo", "--", "sh", "-c",
                            'echo "$ARBITER_TOKEN"'], env=env, capture_output=True,
                           text=True, timeout=60 * SLOW)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) >= 2 ** 62, "a cluster token: %s" % r.stdout
        r = subprocess.run([ctl, "status"], env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        assert "cluster: active as host %s" % POD_NAME in r.stdout, r.stdout

        # etcd gone: the session is lost, the pod must stay Ready and alive.
        cl.stop()
        wait_log(proc, "cluster session jeopardy", timeout=30 * SLOW)
        arb = sidecar(docs)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            r = subprocess.run(map_args(arb[kind]["exec"]["command"], mapping), env=env,
                               capture_output=True, text=True, timeout=10)
            assert r.returncode == 0, "%s with etcd gone: %s" % (kind, r.stderr)
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=10) as h:
            assert h.status == 200
        rc, _ = stop(proc)
        assert rc == 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cl.stop()
