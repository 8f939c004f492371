"""Strict offline validation of rendered objects: unknown fields are errors, not silently pruned.

- KEDA and Karpenter objects: the `openAPIV3Schema` of the served version in the real CRD files (folder
  `../shared/crds` next to the project, or $SDLAB_CRDS_DIR), made strict by setting `additionalProperties: false`
  wherever a schema lists `properties` without `additionalProperties` or `x-kubernetes-preserve-unknown-fields`,
  then checked with jsonschema. The API server would prune such fields silently; that is how the upstream guidance
  shipped a `scaleOnInFlight` that KEDA never read.
  Not checked: the CRDs' `x-kubernetes-validations` (CEL rules, e.g. "In needs values", "min <= max"), OpenAPI
  `format`s, defaults. Those need a real API server (`kubectl apply --dry-run=server`).
- Built-in kinds (Deployment, ServiceAccount, PersistentVolume(Claim), PodDisruptionBudget, Namespace...):
  Kubernetes' own OpenAPI schemas in strict form, shipped inside the `kubernetes-validate` package (no network),
  for Kubernetes K8S_VERSION. That package reports the first problem per object.
- Every object: metadata strictly against ObjectMeta, DNS names, label syntax, namespace present exactly for
  namespaced kinds. `validate_all` also checks that names referenced between the objects exist.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from sdlab import envvars
from sdlab.errors import SdlabError

log = logging.getLogger(__name__)
CRDS_DIR_ENV = envvars.CRDS_DIR  # folder of the upstream CRD YAML files (default: ../shared/crds from the project)
K8S_VERSION = "1.33"  # oldest Kubernetes the manifests target (native sidecars are GA from 1.33)
CLUSTER_SCOPED_BUILTINS = frozenset(
    {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "Node"}
)
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL_KINDS = frozenset({"Namespace", "NodePool"})  # NodePool names become node label values


def crds_dir() -> Path:
    """$SDLAB_CRDS_DIR, else `shared/crds` beside the project folder."""
    override = os.environ.get(CRDS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "crds"


@dataclass(frozen=True)
class CrdSchema:
    """The strict schema of one served version of a CRD."""

    api_version: str
    kind: str
    namespaced: bool
    schema: dict[str, Any]


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Copy of an OpenAPI v3 schema that rejects unknown fields wherever the CRD lists the known ones."""
    out = copy.deepcopy(schema)
    _close(out)
    return out


def _close(node: Any) -> None:
    if isinstance(node, list):
        for item in node:
            _close(item)
        return
    if not isinstance(node, dict):
        return
    if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        node["additionalProperties"] = False
    for key in ("properties", "patternProperties"):
        for child in (node.get(key) or {}).values():
            _close(child)
    for key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
        _close(node.get(key))


@lru_cache(maxsize=4)
def load_crds(directory: str) -> dict[tuple[str, str], CrdSchema]:
    """Strict schemas of every served CRD version in a folder, keyed by (apiVersion, kind)."""
    folder = Path(directory)
    if not folder.is_dir():
        raise SdlabError(f"CRD folder {folder} not found; set ${CRDS_DIR_ENV} to the folder of the KEDA/Karpenter CRDs")
    out: dict[tuple[str, str], CrdSchema] = {}
    for file in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec["versions"]:
                if not version.get("served", False):
                    continue
                api_version = f"{spec['group']}/{version['name']}"
                raw = version["schema"]["openAPIV3Schema"]
                out[(api_version, spec["names"]["kind"])] = CrdSchema(
                    api_version, spec["names"]["kind"], spec.get("scope") == "Namespaced", strict_schema(raw)
                )
    return out


def _where(error_path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in error_path) or "(root)"


def _kv() -> Any:
    try:
        import kubernetes_validate
    except ImportError as err:  # an optional dependency of the light core
        raise SdlabError("validating built-in kinds needs the `kubernetes-validate` package; pip install it") from err
    return kubernetes_validate


def _builtin_problems(obj: dict[str, Any]) -> list[str]:
    kv = _kv()
    try:
        kv.validate(obj, K8S_VERSION, strict=True)
    except kv.ValidationError as err:
        return [f"{_where(err.path)}: {err.message}"]
    except kv.SchemaNotFoundError as err:
        return [f"(root): {err.message}; not a built-in kind and no CRD in {crds_dir()} describes it"]
    return []


def _crd_problems(obj: dict[str, Any], crd: CrdSchema) -> list[str]:
    validator = Draft202012Validator(crd.schema)
    errors = sorted(validator.iter_errors(obj), key=lambda e: (_where(e.absolute_path), e.message))
    problems = [f"{_where(e.absolute_path)}: {e.message}" for e in errors]
    # The CRD leaves metadata open; check it as the API server would, against ObjectMeta.
    meta_probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj.get("metadata", {})}
    problems += [p for p in _builtin_problems(meta_probe) if p.startswith("metadata")]
    return problems


def _metadata_problems(obj: dict[str, Any], namespaced: bool) -> list[str]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return ["metadata: missing; every object needs metadata.name"]
    problems = []
    kind, name = obj.get("kind"), meta.get("name")
    if not isinstance(name, str) or not _SUBDOMAIN_RE.match(name) or len(name) > 253:
        problems.append(f"metadata.name: {name!r} is not a DNS subdomain (lowercase letters, digits, '-', '.')")
    elif kind in _DNS_LABEL_KINDS and (len(name) > 63 or not _DNS_LABEL_RE.match(name)):
        problems.append(f"metadata.name: {name!r} must be a DNS label of at most 63 characters for a {kind}")
    if namespaced and not meta.get("namespace"):
        problems.append(f"metadata.namespace: missing; {kind} is namespaced")
    if not namespaced and "namespace" in meta:
        problems.append(f"metadata.namespace: {kind} is cluster-scoped; remove the namespace")
    for key, value in (meta.get("labels") or {}).items():
        prefix, _, label = str(key).rpartition("/")
        if (prefix and not _SUBDOMAIN_RE.match(prefix)) or len(label) > 63 or not _LABEL_NAME_RE.match(label):
            problems.append(f"metadata.labels: key {key!r} is not a valid label name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE_RE.match(value):
            problems.append(f"metadata.labels[{key}]: value {value!r} is not a valid label value (<= 63 characters)")
    return problems


def validate_object(obj: dict[str, Any], crds: str | os.PathLike[str] | None = None) -> list[str]:
    """Problems of one object (empty list = valid), each prefixed with `Kind/name:`."""
    if not isinstance(obj, dict) or not obj.get("apiVersion") or not obj.get("kind"):
        return ["(object): needs apiVersion and kind"]
    api_version, kind = str(obj["apiVersion"]), str(obj["kind"])
    folder = Path(crds) if crds is not None else crds_dir()
    is_custom = "." in api_version.split("/")[0] and not api_version.split("/")[0].endswith(".k8s.io")
    if is_custom:
        if not folder.is_dir():
            problems = [f"(root): cannot validate {api_version} {kind}: CRD folder {folder} not found; set ${CRDS_DIR_ENV}"]
            namespaced = "namespace" in (obj.get("metadata") or {})
        elif (api_version, kind) not in load_crds(str(folder)):
            known = sorted(f"{a} {k}" for a, k in load_crds(str(folder)))
            problems = [f"(root): no CRD in {folder} serves {api_version} {kind}; known: {known}"]
            namespaced = "namespace" in (obj.get("metadata") or {})
        else:
            crd = load_crds(str(folder))[(api_version, kind)]
            problems = _crd_problems(obj, crd)
            namespaced = crd.namespaced
    else:
        problems = _builtin_problems(obj)
        namespaced = kind not in CLUSTER_SCOPED_BUILTINS
    problems += _metadata_problems(obj, namespaced)
    name = (obj.get("metadata") or {}).get("name", "?")
    return [f"{kind}/{name}: {p}" for p in dict.fromkeys(problems)]


def validate_all(objects: Iterable[dict[str, Any]], crds: str | os.PathLike[str] | None = None) -> list[str]:
    """Problems of every object, plus duplicates and references to objects that are not in the set.

    With `crds` named, a missing folder is a problem of every custom object. Left to the default ($SDLAB_CRDS_DIR, else
    `../shared/crds`) and absent there — a clone without the CRD files — the KEDA and Karpenter objects are not
    schema-checked, a warning says so, and everything else still is: rendering must not need the upstream files."""
    objects = list(objects)
    problems: list[str] = []
    for obj in objects:
        problems += validate_object(obj, crds)
    problems += _set_problems(objects)
    folder = crds_dir()
    if crds is None and not folder.is_dir():
        unchecked = [p for p in problems if f"CRD folder {folder} not found" in p]
        if unchecked:
            log.warning("KEDA/Karpenter schema checks NOT run for %d object(s): CRD folder %s is absent; set $%s to "
                        "the folder of the KEDA/Karpenter CRDs to run them", len(unchecked), folder, CRDS_DIR_ENV)
        problems = [p for p in problems if p not in unchecked]
    return problems


def _key(kind: str, meta: dict[str, Any]) -> tuple[str, str, str]:
    return kind, meta.get("namespace", ""), meta.get("name", "")


def _set_problems(objects: list[dict[str, Any]]) -> list[str]:
    seen: set[tuple[str, str, str]] = set()
    problems = []
    for obj in objects:
        key = _key(str(obj.get("kind")), obj.get("metadata") or {})
        if key in seen:
            problems.append(f"{key[0]}/{key[2]}: defined twice in namespace {key[1]!r}")
        seen.add(key)
    for obj in objects:
        kind, meta, spec = obj.get("kind"), obj.get("metadata") or {}, obj.get("spec") or {}
        ns = meta.get("namespace", "")
        wanted: list[tuple[str, str, str]] = []
        if kind == "Deployment":
            pod = spec.get("template", {}).get("spec", {})
            if pod.get("serviceAccountName"):
                wanted.append(("ServiceAccount", ns, pod["serviceAccountName"]))
            for vol in pod.get("volumes", []):
                if "persistentVolumeClaim" in vol:
                    wanted.append(("PersistentVolumeClaim", ns, vol["persistentVolumeClaim"]["claimName"]))
            pool = pod.get("nodeSelector", {}).get("karpenter.sh/nodepool")
            if pool:
                wanted.append(("NodePool", "", pool))
        elif kind == "PersistentVolumeClaim" and spec.get("volumeName"):
            wanted.append(("PersistentVolume", "", spec["volumeName"]))
        elif kind == "NodePool":
            ref = spec.get("template", {}).get("spec", {}).get("nodeClassRef", {})
            wanted.append((ref.get("kind", ""), "", ref.get("name", "")))
        elif kind == "ScaledObject":
            target = spec.get("scaleTargetRef", {})
            wanted.append((target.get("kind", "Deployment"), ns, target.get("name", "")))
            for trig in spec.get("triggers", []):
                ref = trig.get("authenticationRef")
                if ref:
                    wanted.append((ref.get("kind", "TriggerAuthentication"), ns, ref.get("name", "")))
        for want in wanted:
            if want not in seen:
                problems.append(f"{kind}/{meta.get('name')}: refers to {want[0]}/{want[2]}, which is not rendered")
        if ns and ("Namespace", "", ns) not in seen and any(o.get("kind") == "Namespace" for o in objects):
            problems.append(f"{kind}/{meta.get('name')}: namespace {ns!r} is not among the rendered Namespaces")
    return problems
