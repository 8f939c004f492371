"""Named ComfyUI workflow templates: stored in the bucket, filled in with a task's parameters.

A client can send a whole API-format graph, or name a template stored at
``s3://<bucket>/<workflow_prefix>/<name>.json`` and give parameters::

    {"workflow": "txt2img-basic", "params": {"prompt": "a red fox", "seed": 7, "steps": 20}}

:func:`apply_params` finds where each parameter goes by node class, the way a person reads the graph:
the KSampler's ``positive`` / ``negative`` links lead to the CLIPTextEncode nodes holding the prompts, its
``latent_image`` link to the EmptyLatentImage holding the size. The templates shipped with sdlab
(``sdlab/workflows/*.json``) are uploaded by ``sdlab up`` (:func:`upload_workflows`).
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

from botocore.exceptions import ClientError

from sdlab.errors import ValidationError

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# parameter -> (accepted types, where it goes)
PARAMS: dict[str, tuple[tuple[type, ...], str]] = {
    "prompt": ((str,), "text of the CLIPTextEncode on the KSampler's positive input"),
    "negative_prompt": ((str,), "text of the CLIPTextEncode on the KSampler's negative input"),
    "seed": ((int,), "KSampler seed"),
    "steps": ((int,), "KSampler steps"),
    "cfg": ((int, float), "KSampler cfg"),
    "denoise": ((int, float), "KSampler denoise"),
    "sampler_name": ((str,), "KSampler sampler_name"),
    "scheduler": ((str,), "KSampler scheduler"),
    "width": ((int,), "EmptyLatentImage width"),
    "height": ((int,), "EmptyLatentImage height"),
    "batch_size": ((int,), "EmptyLatentImage batch_size"),
    "ckpt_name": ((str,), "CheckpointLoaderSimple ckpt_name"),
    "image": ((str,), "LoadImage image (s3:// URI or base64; the agent uploads it)"),
}
_SAMPLER_KEYS = ("seed", "steps", "cfg", "denoise", "sampler_name", "scheduler")
_LATENT_KEYS = ("width", "height", "batch_size")


def check_name(name: Any, field: str = "payload.workflow") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValidationError(field, f"{name!r} is not a workflow name; use 1-64 letters, digits, '.', '_' or '-' "
                              "(the template's file name without .json)")
    return name


def check_params(params: Any, field: str = "payload.params") -> dict[str, Any]:
    """Known names with values of the right type; every problem names the parameter."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ValidationError(field, "must be an object, e.g. {\"prompt\": \"a red fox\", \"seed\": 7}")
    for key, value in params.items():
        if key not in PARAMS:
            raise ValidationError(f"{field}.{key}", f"unknown parameter; use one of {sorted(PARAMS)}")
        kinds = PARAMS[key][0]
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ValidationError(f"{field}.{key}", f"must be {' or '.join(k.__name__ for k in kinds)}, "
                                  f"got {type(value).__name__}")
    return dict(params)


def _linked(graph: Mapping[str, Any], link: Any, class_type: str) -> dict[str, Any] | None:
    """The node a link ``[node_id, index]`` points at, if it is a ``class_type`` node."""
    if isinstance(link, list) and len(link) == 2:
        node = graph.get(str(link[0]))
        if isinstance(node, dict) and node.get("class_type") == class_type:
            return node
    return None


def apply_params(graph: Mapping[str, Any], params: Mapping[str, Any] | None,
                 field: str = "payload.params") -> dict[str, Any]:
    """A copy of ``graph`` with ``params`` written into the nodes they belong to.

    Raises ValidationError naming the parameter when it is unknown, has the wrong type, or the
    graph has no node it could go to (e.g. ``width`` for a graph without an EmptyLatentImage).
    """
    params = check_params(params, field)
    out = copy.deepcopy(dict(graph))
    applied: set[str] = set()

    def put(node: dict[str, Any] | None, key: str, input_name: str) -> None:
        if node is not None and key in params:
            node.setdefault("inputs", {})[input_name] = params[key]
            applied.add(key)

    for node in out.values():
        if not isinstance(node, dict):
            continue
        kind, inputs = node.get("class_type"), node.get("inputs") or {}
        if kind == "KSampler":
            for key in _SAMPLER_KEYS:
                put(node, key, key)
            put(_linked(out, inputs.get("positive"), "CLIPTextEncode"), "prompt", "text")
            put(_linked(out, inputs.get("negative"), "CLIPTextEncode"), "negative_prompt", "text")
            latent = _linked(out, inputs.get("latent_image"), "EmptyLatentImage")
            for key in _LATENT_KEYS:
                put(latent, key, key)
        elif kind == "CheckpointLoaderSimple":
            put(node, "ckpt_name", "ckpt_name")
        elif kind == "LoadImage":
            put(node, "image", "image")
    for key in params:
        if key not in applied:
            raise ValidationError(f"{field}.{key}", f"the workflow has no place for it ({PARAMS[key][1]}); remove it")
    return out


# -- the bucket -----------------------------------------------------------------------------------


def bundled() -> dict[str, dict[str, Any]]:
    """The templates shipped in ``sdlab/workflows/``, by name."""
    folder = resources.files("sdlab") / "workflows"
    return {f.name.removesuffix(".json"): json.loads(f.read_text()) for f in folder.iterdir() if f.name.endswith(".json")}


def workflow_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}.json"


def upload_workflows(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Put every bundled template at ``<prefix>/<name>.json``; returns the names."""
    names = []
    for name, graph in sorted(bundled().items()):
        s3.put_object(Bucket=bucket, Key=workflow_key(prefix, name), Body=json.dumps(graph, indent=2).encode(),
                      ContentType="application/json")
        names.append(name)
    log.info("uploaded %d workflow template(s) to s3://%s/%s/", len(names), bucket, prefix)
    return names


def list_workflows(s3: Any, bucket: str, prefix: str) -> list[str]:
    out = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
    return sorted(o["Key"][len(prefix) + 1:].removesuffix(".json") for o in out.get("Contents", [])
                  if o["Key"].endswith(".json"))


def load_workflow(s3: Any, bucket: str, prefix: str, name: str) -> dict[str, Any]:
    """The template ``name`` from the bucket. Raises ValidationError when it is missing or not a graph;
    other S3 errors (throttling, network) propagate as they are, for the caller to retry."""
    check_name(name)
    key = workflow_key(prefix, name)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
        raise ValidationError("payload.workflow", f"no workflow {name!r} at s3://{bucket}/{key}; available: "
                              f"{list_workflows(s3, bucket, prefix)}") from err
    try:
        graph = json.loads(body)
    except ValueError as err:
        raise ValidationError("payload.workflow", f"s3://{bucket}/{key} is not JSON ({err}); "
                              "store an API-format export ('Save (API Format)')") from err
    if not isinstance(graph, dict) or not graph:
        raise ValidationError("payload.workflow", f"s3://{bucket}/{key} is not an API-format workflow object")
    return graph
