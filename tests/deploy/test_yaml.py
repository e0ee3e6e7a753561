"""Every YAML file under deploy/ lints clean and parses; every kustomize
variant renders (with tests/deploy/kustomize.py, checked against kubectl
or kustomize where one is installed)."""
import importlib.util
import shutil
import subprocess
import sys

import pytest
import yaml

import kustomize as kustomize_py
from deploylib import DEPLOY, K8S, load_yaml, yaml_files

VARIANTS = [".", "native", "legacy", "active-standby", "cluster",
            "intercept"]


def yamllint_cmd():
    if shutil.which("yamllint"):
        return ["yamllint"]
    if importlib.util.find_spec("yamllint") is None:
        pytest.fail("yamllint is missing: apt-get install yamllint "
                    "(sh scripts/deps.sh test installs it)")
    return [sys.executable, "-m", "yamllint"]


def test_yamllint_strict_on_deploy():
    r = subprocess.run(yamllint_cmd() + ["--strict", "-f", "parsable", "-c",
                                         str(DEPLOY / ".yamllint"), str(DEPLOY)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_yaml_files_exist_and_parse():
    files = yaml_files()
    assert len(files) >= 9, files
    for p in files:
        docs = load_yaml(p)
        assert docs, "%s is empty" % p
        for d in docs:
            assert isinstance(d, dict), p
            if p.name != "kustomization.yaml":
                assert "apiVersion" in d and "kind" in d, p


def test_every_kustomization_lists_files_that_exist():
    for k in K8S.rglob("kustomization.yaml"):
        doc = load_yaml(k)[0]
        for ref in doc.get("resources", []):
            assert (k.parent / ref).exists(), "%s: %s" % (k, ref)
        for p in doc.get("patches", []):
            assert (k.parent / p["path"]).is_file(), "%s: %s" % (k, p)
        for g in doc.get("configMapGenerator", []):
            for f in g.get("files", []):
                assert (k.parent / f.split("=")[-1]).is_file(), "%s: %s" % (k, f)


def kustomize():
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.fixture(scope="module")
def rendered():
    """Every variant rendered by tests/deploy/kustomize.py (no kubectl
    needed, so these tests run on a fresh machine)."""
    return {v: kustomize_py.render(str(K8S / v)) for v in VARIANTS}


def test_the_renderer_agrees_with_kustomize_where_it_is_installed(rendered):
    """Where kubectl or kustomize exists, its output must equal ours, so the
    small renderer cannot drift from the real one unnoticed."""
    cmd = kustomize()
    if cmd is None:
        return  # nothing to compare against; the renderer's own tests ran
    for v in VARIANTS:
        r = subprocess.run(cmd + [str(K8S / v)], capture_output=True,
                           text=True)
        assert r.returncode == 0, "%s: %s" % (v, r.stderr)
        theirs = [d for d in yaml.safe_load_all(r.stdout) if d]
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(theirs, key=key) == sorted(rendered[v], key=key), v


def test_the_renderer_merges_like_strategic_merge_patch():
    base = {"spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                     "containers": [{"name": "a", "image": "x"},
                                    {"name": "b", "image": "y"}],
                     "accessModes": ["ReadWriteOnce"]}}
    patch = {"spec": {"replicas": 2,
                      "strategy": {"$patch": "replace",
                                   "type": "RollingUpdate"},
                      "containers": [{"name": "b", "image": "z"}],
                      "accessModes": ["ReadWriteMany"]}}
    assert kustomize_py.strategic_merge(base, patch) == {"spec": {
        "replicas": 2, "strategy": {"type": "RollingUpdate"},
        "containers": [{"name": "a", "image": "x"},
                       {"name": "b", "image": "z"}],
        "accessModes": ["ReadWriteMany"]}}


def test_the_renderer_refuses_what_it_does_not_render(tmp_path):
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nnamePrefix: x-\n")
    with pytest.raises(kustomize_py.KustomizeError, match="namePrefix"):
        kustomize_py.render(str(tmp_path))


def test_the_configmap_hash_follows_its_content():
    cm = {"metadata": {"name": "c"}, "data": {"a": "1"}}
    h = kustomize_py.configmap_hash(cm)
    assert len(h) == 10 and not set(h) & set("013ae")
    # kubectl kustomize (kustomize 5.5) names this ConfigMap, made with
    # "literals: [a=1]", c-h29d89cmmt.
    assert h == "h29d89cmmt"
    assert kustomize_py.configmap_hash(
        {"metadata": {"name": "c"}, "data": {"a": "2"}}) != h


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("variant", VARIANTS)
def test_kustomize_renders(rendered, variant):
    docs = rendered[variant]
    kinds = sorted(d["kind"] for d in docs)
    expect = ["ConfigMap", "Deployment", "PersistentVolumeClaim"]
    if variant == "active-standby":
        expect.append("PodDisruptionBudget")
    if variant == "cluster":  # + etcd: its two Services, its members, a PDB
        expect += ["NetworkPolicy", "PodDisruptionBudget", "Service", "Service",
                   "StatefulSet"]
    assert kinds == sorted(expect)
    (cm,) = by_kind(docs, "ConfigMap")
    (dep,) = by_kind(docs, "Deployment")
    # The generated, hashed ConfigMap name is the one the pod mounts.
    assert cm["metadata"]["name"].startswith("arbiter-config-")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["arbiter-config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert cm["data"]["arbiter.conf"] == (DEPLOY / "container" / "arbiter.conf").read_text()
    spec = dep["spec"]["template"]["spec"]
    images = {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert images == {"arbiter:0.1.0"}


def test_kustomize_active_standby_is_two_replicas_on_rwx(rendered):
    docs = rendered["active-standby"]
    (dep,) = by_kind(docs, "Deployment")
    (pvc,) = by_kind(docs, "PersistentVolumeClaim")
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    native = by_kind(rendered["native"], "Deployment")[0]
    assert native["spec"]["replicas"] == 1
    assert native["spec"]["strategy"] == {"type": "Recreate"}
    # Everything but replicas, strategy and affinity is the native variant.
    a = dict(dep["spec"]["template"]["spec"])
    a.pop("affinity")
    assert a == native["spec"]["template"]["spec"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_deployment_agrees_with_config_and_image(rendered, variant):
    from deploylib import check_deployment
    (dep,) = by_kind(rendered[variant], "Deployment")
    check_deployment(dep, legacy=(variant == "legacy"))
