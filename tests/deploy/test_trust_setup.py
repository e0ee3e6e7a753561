"""The shipped set-ups pass the clients' trust check with no extra step.

The clients talk only to a server run by the caller's uid, root, a uid in
ARBITER_TRUST_UID, or the owner of a socket folder only root can have
handed over (README.md, Access). In the pod the app runs under its own uid,
so the manifests and the image must say which uid to trust; the systemd unit
relies on its RuntimeDirectory."""
import re

import pytest

from deploylib import (DEPLOY, K8S, arbiter_container, deployment, dockerfile_instructions,
                       image_user)


@pytest.mark.parametrize("variant", ["native", "legacy", "cluster"])
def test_app_runs_as_its_own_uid_and_trusts_arbiterd(variant):
    spec = deployment(K8S / variant / "deployment.yaml")["spec"]["template"]["spec"]
    arb, apps = arbiter_container(spec, variant == "legacy")
    daemon_uid = arb["securityContext"]["runAsUser"]
    assert apps
    for app in apps:
        sc = app["securityContext"]
        assert sc["runAsUser"] not in (0, daemon_uid), \
            "the demo shows the case that needs trust: another uid than arbiterd's"
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        trusted = [v.strip() for v in env.get("ARBITER_TRUST_UID", "").split(",")]
        assert str(daemon_uid) in trusted, "%s: the app must trust uid %d" % (
            app["name"], daemon_uid)
    # The 0660 socket is reached through the pod's fsGroup, the daemon's gid.
    assert spec["securityContext"]["fsGroup"] == arb["securityContext"]["runAsGroup"]


def test_image_trusts_its_own_uid():
    ins = dockerfile_instructions()
    final = max(s for s, _, _ in ins)
    env = dict(a.partition("=")[::2] for s, i, a in ins if s == final and i == "ENV")
    uid, _ = image_user(ins)
    assert env.get("ARBITER_TRUST_UID") == str(uid)


def test_systemd_unit_hands_over_a_closed_runtime_directory():
    unit = (DEPLOY / "systemd" / "arbiterd.service").read_text()
    assert re.search(r"^RuntimeDirectory=arbiter$", unit, re.M)
    mode = re.search(r"^RuntimeDirectoryMode=(\d+)$", unit, re.M)
    assert mode and int(mode.group(1), 8) & 0o022 == 0, \
        "the clients trust the daemon's uid only in a folder closed to others"
