"""Runtime adapters: one small interface (`RuntimeAdapter`), one module per runtime API."""

from __future__ import annotations

from agent.runtimes.base import RuntimeAdapter, RuntimeFailure, RuntimeResult


def adapter_for(runtime_type: str, base_url: str, timeout_seconds: float) -> RuntimeAdapter:
    """The adapter that speaks `runtime_type`'s API at `base_url`."""
    if runtime_type == "diffusers":
        from agent.runtimes.diffusers import DiffusersAdapter

        return DiffusersAdapter(base_url, timeout_seconds)
    if runtime_type == "sdwebui":
        from agent.runtimes.sdwebui import SdWebUIAdapter

        return SdWebUIAdapter(base_url, timeout_seconds)
    raise ValueError(f"no adapter for runtime type {runtime_type!r}; use sdwebui, comfyui or diffusers")


__all__ = ["RuntimeAdapter", "RuntimeFailure", "RuntimeResult", "adapter_for"]
