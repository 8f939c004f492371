"""The public guidance's request shapes, turned into this API's `SubmitRequest` fields.

- `POST /v1alpha2` (and `/v1alpha2/`): `{"task": {"metadata": {id, runtime, tasktype, prefix, context}, "content": {...}}}`;
  answered 200 `{"id", "runtime", "output_location"}` as the guidance documents, plus our `status_url`.
- `POST /v1alpha1`: an SD WebUI body whose routing fields sit in `alwayson_scripts` (`task`, `sd_model_checkpoint`,
  `id_task`, `save_dir`, optional `image_link`). The guidance routes it to the runtimes whose model file is
  `sd_model_checkpoint`; so does this API (an sdwebui/diffusers runtime whose model has that name, with or without
  extension), else to `compat.v1alpha1_runtime` from sdlab.yaml. Answered 200 `{"id_task", "sd_model_checkpoint",
  "output_location"}` plus `status_url`.
Tasks submitted either way get the guidance's notification fields (`notification_format: guidance`).
The guidance's `prefix` / `save_dir` is kept under the stack's output prefix: `output` becomes `outputs/output`
(a prefix already under it stays as it is), so its outputs get the same lifecycle and access rules as every task's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdlab.api.validation import upgrade_legacy
from sdlab.contracts import bare_model_name
from sdlab.errors import ValidationError

V1ALPHA1_TASK_TYPES = ("text-to-image", "image-to-image", "extra-single-image")


def under_output_prefix(prefix: str, output_prefix: str) -> str:
    prefix = prefix.strip("/")
    if prefix == output_prefix or prefix.startswith(f"{output_prefix}/"):
        return prefix
    return f"{output_prefix}/{prefix}"


def from_v1alpha2(data: dict[str, Any], output_prefix: str) -> dict[str, Any]:
    if set(data) != {"task"} or not isinstance(data["task"], Mapping):
        raise ValidationError("task", "v1alpha2 takes {\"task\": {\"metadata\": {...}, \"content\": {...}}}; "
                              "for the project's own shape use POST /v1/tasks")
    request = {**upgrade_legacy(data), "notification_format": "guidance"}
    if isinstance(request.get("prefix"), str):
        request["prefix"] = under_output_prefix(request["prefix"], output_prefix)
    return request


def from_v1alpha1(data: dict[str, Any], runtimes: Mapping[str, Mapping[str, str]], default: str | None,
                  output_prefix: str) -> dict[str, Any]:
    """`runtimes`: name -> {"type", "model"}; `default`: where a checkpoint no runtime has goes (None: refuse)."""
    scripts = data.get("alwayson_scripts")
    if not isinstance(scripts, Mapping):
        raise ValidationError("alwayson_scripts", "v1alpha1 needs alwayson_scripts with task, sd_model_checkpoint, "
                              "id_task and save_dir")
    for key in ("task", "sd_model_checkpoint", "id_task"):
        if not isinstance(scripts.get(key), str) or not scripts[key]:
            raise ValidationError(f"alwayson_scripts.{key}", "required (a non-empty string)")
    if scripts["task"] not in V1ALPHA1_TASK_TYPES:
        raise ValidationError("alwayson_scripts.task", f"{scripts['task']!r} is not a v1alpha1 task; use one of "
                              f"{list(V1ALPHA1_TASK_TYPES)}")
    wanted = bare_model_name(scripts["sd_model_checkpoint"])
    webui = {n: spec for n, spec in runtimes.items() if spec.get("type") in ("sdwebui", "diffusers")}
    runtime = next((n for n, spec in sorted(webui.items()) if bare_model_name(spec.get("model", "")) == wanted), default)
    if runtime is None:
        models = sorted({spec.get("model", "") for spec in webui.values()})
        raise ValidationError("alwayson_scripts.sd_model_checkpoint",
                              f"no runtime serves model {scripts['sd_model_checkpoint']!r}; use one of {models}, or "
                              "set compat.v1alpha1_runtime in sdlab.yaml", status=404)
    request: dict[str, Any] = {"runtime": runtime, "task_type": scripts["task"], "id": scripts["id_task"],
                               "payload": data, "notification_format": "guidance"}
    if scripts.get("save_dir"):
        request["prefix"] = under_output_prefix(str(scripts["save_dir"]), output_prefix)
    return request
