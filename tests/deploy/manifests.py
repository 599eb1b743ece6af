"""deploy/kubernetes read the way ``kubectl apply -k`` would: the kustomization rendered in Python.

Only the transformations our kustomization.yaml uses are implemented, and a field it does not
know fails loudly: ``namespace`` (set on every namespaced object), ``labels`` (added to
metadata.labels, selectors untouched: includeSelectors false) and ``images`` (newTag).

Example::

    objects = rendered()
    deployment = by_kind(objects, "Deployment")
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUSTOMIZE_DIR = REPO / "deploy" / "kubernetes"
CLUSTER_SCOPED = {"Namespace"}
KNOWN_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}


def kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KUSTOMIZE_DIR / "kustomization.yaml").read_text())
    unknown = set(data) - KNOWN_FIELDS
    if unknown:
        raise AssertionError(
            f"kustomization.yaml uses {unknown}: teach tests/deploy/manifests.py to render it"
        )
    return data


def raw_objects() -> dict[str, dict[str, Any]]:
    """file name -> the object in it, as committed (one object per file)."""
    out = {}
    for name in kustomization()["resources"]:
        docs = [d for d in yaml.safe_load_all((KUSTOMIZE_DIR / name).read_text()) if d is not None]
        assert len(docs) == 1, f"{name}: one object per file, found {len(docs)}"
        out[name] = docs[0]
    return out


def rendered() -> list[dict[str, Any]]:
    k = kustomization()
    objects = []
    for obj in raw_objects().values():
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = k["namespace"]
        for entry in k.get("labels", []):
            assert entry.get("includeSelectors") is False, "selector labels are not rendered here"
            meta.setdefault("labels", {}).update(entry["pairs"])
        for image in k.get("images", []):
            for container in _containers(obj):
                if container["image"] == image["name"]:
                    container["image"] = f"{image['name']}:{image['newTag']}"
        objects.append(obj)
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] != "Deployment":
        return []
    return list(obj["spec"]["template"]["spec"]["containers"])


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found
