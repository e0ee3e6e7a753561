"""A small kustomize renderer for the features deploy/k8s uses, so the
rendered manifests are tested on a machine without kubectl or kustomize
(neither is a Debian package).

Supported, as kustomize does them: resources (files and folders with their
own kustomization.yaml, recursively), configMapGenerator with files (the
name gets kustomize's content hash, and references to the ConfigMap in pod
specs are renamed), images (newName/newTag/digest by image name), and
patches given by path as strategic merge patches (maps merge; lists of
maps with a "name" key merge by name; other lists are replaced;
"$patch: replace" and "$patch: delete" on a map). Any other kustomization
field is refused with an error, never ignored.

    python3 kustomize.py DIR     print the rendered YAML, like kustomize build
"""
import copy
import hashlib
import json
import os
import sys

import yaml

SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator",
             "images", "patches"}

# kustomize's output order (its legacy resource ordering, first kinds).
KIND_ORDER = ["Namespace", "ResourceQuota", "StorageClass",
              "CustomResourceDefinition", "ServiceAccount",
              "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
              "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints",
              "Service", "LimitRange", "PriorityClass",
              "PersistentVolume", "PersistentVolumeClaim", "Deployment",
              "StatefulSet", "CronJob", "PodDisruptionBudget"]


class KustomizeError(Exception):
    pass


def encode_hash(hexdigest):
    """kustomize's encodeHash: 10 hex digits, some letters swapped so the
    suffix never spells a word or looks like a number."""
    swap = {"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}
    return "".join(swap.get(c, c) for c in hexdigest[:10])


def configmap_hash(cm):
    """The suffix kustomize appends to a generated ConfigMap's name."""
    # kustomize 5 (kyaml's hasher) looks the name up under the literal key
    # "metadata/name", finds nothing and hashes an empty name: the suffix
    # depends on the content alone. Matched against kubectl 1.32's
    # kustomize 5.5 output.
    doc = {"kind": "ConfigMap", "name": "", "data": cm.get("data", {})}
    # Go's json.Marshal: sorted keys, no spaces, HTML characters escaped.
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e") \
        .replace("&", "\\u0026")
    return encode_hash(hashlib.sha256(text.encode()).hexdigest())


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def strategic_merge(base, patch):
    """base merged with patch, a strategic merge patch (the subset above)."""
    if isinstance(patch, dict):
        directive = patch.get("$patch")
        if directive == "delete":
            return None
        rest = {k: v for k, v in patch.items() if k != "$patch"}
        if directive == "replace":
            return copy.deepcopy(rest)
        if directive is not None:
            raise KustomizeError("unsupported $patch: %r" % directive)
        if not isinstance(base, dict):
            return copy.deepcopy(rest)
        out = copy.deepcopy(base)
        for k, v in rest.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                merged = strategic_merge(out[k], v)
                if merged is None:
                    out.pop(k)
                else:
                    out[k] = merged
            else:
                merged = strategic_merge(None, v)
                if merged is not None:
                    out[k] = merged
        return out
    if isinstance(patch, list):
        named = patch and all(isinstance(x, dict) and "name" in x
                              for x in patch)
        if named and isinstance(base, list) and all(
                isinstance(x, dict) and "name" in x for x in base):
            out = copy.deepcopy(base)
            new = []
            for item in patch:
                for i, b in enumerate(out):
                    if b["name"] == item["name"]:
                        merged = strategic_merge(b, item)
                        if merged is None:
                            del out[i]
                        else:
                            out[i] = merged
                        break
                else:
                    new.append(strategic_merge(None, item))
            # kustomize 5 puts the patch's new elements first, in the
            # patch's order (an env block added to a container's env).
            return new + out
        return [strategic_merge(None, x) for x in patch]
    return copy.deepcopy(patch)


def pod_specs(doc):
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job",
                       "ReplicaSet"):
        yield spec.get("template", {}).get("spec", {})
    elif doc["kind"] == "CronJob":
        yield spec.get("jobTemplate", {}).get("spec", {}).get(
            "template", {}).get("spec", {})
    elif doc["kind"] == "Pod":
        yield spec


def containers(podspec):
    return podspec.get("initContainers", []) + podspec.get("containers", [])


def set_images(docs, images):
    for img in images:
        name = img["name"]
        for doc in docs:
            for ps in pod_specs(doc):
                for c in containers(ps):
                    ref = c.get("image", "")
                    base = ref.split("@")[0]
                    # the name is what comes before a tag's ':' (not a port)
                    colon = base.rfind(":")
                    if colon > base.rfind("/"):
                        base, tag = base[:colon], base[colon + 1:]
                    else:
                        tag = None
                    if base != name:
                        continue
                    new = img.get("newName", base)
                    if "digest" in img:
                        c["image"] = "%s@%s" % (new, img["digest"])
                    else:
                        t = img.get("newTag", tag)
                        c["image"] = new + (":" + t if t else "")


def rename_configmaps(docs, renames):
    """Point pod specs at the generated (hashed) ConfigMap names."""
    def fix(d):
        if d is not None and d.get("name") in renames:
            d["name"] = renames[d["name"]]
    for doc in docs:
        for ps in pod_specs(doc):
            for v in ps.get("volumes", []):
                fix(v.get("configMap"))
                for src in v.get("projected", {}).get("sources", []):
                    fix(src.get("configMap"))
            for c in containers(ps):
                for e in c.get("env", []):
                    fix(e.get("valueFrom", {}).get("configMapKeyRef"))
                for e in c.get("envFrom", []):
                    fix(e.get("configMapRef"))


def render_dir(folder):
    """(documents, {generated name: hashed name}) of one kustomization;
    the renames of the folders it includes apply to it too."""
    kpath = os.path.join(folder, "kustomization.yaml")
    if not os.path.isfile(kpath):
        raise KustomizeError("%s: no kustomization.yaml" % folder)
    (k,) = load_docs(kpath)
    unknown = set(k) - SUPPORTED
    if unknown:
        raise KustomizeError(
            "%s uses %s, which tests/deploy/kustomize.py does not render: "
            "add it there" % (kpath, ", ".join(sorted(unknown))))
    docs = []
    renames = {}
    for ref in k.get("resources", []):
        p = os.path.normpath(os.path.join(folder, ref))
        if os.path.isdir(p):
            sub, sub_renames = render_dir(p)
            docs += sub
            renames.update(sub_renames)
        else:
            docs += load_docs(p)
    for g in k.get("configMapGenerator", []):
        data = {}
        for f in g.get("files", []):
            key, _, path = f.rpartition("=")
            key = key or os.path.basename(path)
            with open(os.path.join(folder, path)) as fh:
                data[key] = fh.read()
        if set(g) - {"name", "files"}:
            raise KustomizeError("%s: configMapGenerator fields %s are not "
                                 "rendered" % (kpath, set(g) - {"name",
                                                                "files"}))
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": g["name"]}, "data": data}
        hashed = "%s-%s" % (g["name"], configmap_hash(cm))
        cm["metadata"]["name"] = hashed
        renames[g["name"]] = hashed
        docs.append(cm)
    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise KustomizeError("%s: only patches given by path are "
                                 "rendered, not %s" % (kpath, p))
        for patch in load_docs(os.path.join(folder, p["path"])):
            target = [d for d in docs if d["kind"] == patch["kind"] and
                      d["metadata"]["name"] == patch["metadata"]["name"]]
            if len(target) != 1:
                raise KustomizeError("%s: patch %s matches %d resources" % (
                    kpath, p["path"], len(target)))
            i = docs.index(target[0])
            docs[i] = strategic_merge(docs[i], patch)
    set_images(docs, k.get("images", []))
    rename_configmaps(docs, renames)
    return docs, renames


def render(folder):
    """The documents kustomize build would print for folder, in its order."""
    docs, _ = render_dir(folder)

    def key(d):
        kind = d["kind"]
        rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(
            KIND_ORDER)
        return (rank, kind, d["metadata"].get("name", ""))
    return sorted(docs, key=key)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=True)
