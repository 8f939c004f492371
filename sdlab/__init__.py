"""sdlab: asynchronous Stable Diffusion on AWS, locally first.

The public API is small: `load_config`, `Client`, and the local stack's `up`/`down`/`status`.
Heavy parts (the diffusers runtime) live in `sdlab.runtime` and are imported only where used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "load_config", "up", "down", "status", "scaling", "sim", "workshop", "__version__"]
_SUBMODULES = {"scaling", "sim", "workshop"}

if TYPE_CHECKING:
    from sdlab.client import Client
    from sdlab.config import load_config
    from sdlab.local.stack import down, status, up

_LAZY = {
    "Client": "sdlab.client",
    "load_config": "sdlab.config",
    "up": "sdlab.local.stack",
    "down": "sdlab.local.stack",
    "status": "sdlab.local.stack",
}


def __getattr__(name: str) -> Any:
    # lazy: `import sdlab` stays cheap and does no work (no boto3 import until used)
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"sdlab.{name}")
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sdlab' has no attribute {name!r}")
