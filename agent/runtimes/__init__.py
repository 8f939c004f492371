"""Runtime adapters: one small interface (`RuntimeAdapter`), one module per runtime API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.runtimes.base import RuntimeAdapter, RuntimeFailure, RuntimeResult

if TYPE_CHECKING:
    from agent.inputs import TaskInputs


def adapter_for(runtime_type: str, base_url: str, timeout_seconds: float,
                inputs: TaskInputs | None = None) -> RuntimeAdapter:
    """The adapter that speaks `runtime_type`'s API at `base_url`.

    `inputs` gives it the bucket access it needs for s3:// input images and named ComfyUI workflows.
    """
    if runtime_type == "diffusers":
        from agent.runtimes.diffusers import DiffusersAdapter

        adapter = DiffusersAdapter(base_url, timeout_seconds)
        adapter.inputs = inputs  # its SD WebUI route resolves s3:// images as SdWebUIAdapter does
        return adapter
    if runtime_type == "sdwebui":
        from agent.runtimes.sdwebui import SdWebUIAdapter

        return SdWebUIAdapter(base_url, timeout_seconds, inputs)
    if runtime_type == "comfyui":
        from agent.runtimes.comfyui import ComfyUIAdapter

        return ComfyUIAdapter(base_url, timeout_seconds, inputs)
    raise ValueError(f"no adapter for runtime type {runtime_type!r}; use sdwebui, comfyui or diffusers")


__all__ = ["RuntimeAdapter", "RuntimeFailure", "RuntimeResult", "adapter_for"]
