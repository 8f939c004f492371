"""The workshop notebooks' logic, so each notebook stays a thin, readable walk over the package.

Notebooks start with `from sdlab import workshop as ws`. One module per idea:
`session` (the local stack a notebook uses), `progress` (tqdm bars for `up` and for tasks), `gallery` (images as
real PNG outputs), `form` (the generate form), `friendly` (user mistakes as one clear message), `tasks` (task
tables), `anatomy` (one task through every resource), `manifests` (config → Kubernetes diff), `tuning` (KEDA
thresholds), `fleet` (instance types and Spot), `autoscale` (the local autoscaler watched), `latency`, `cost`,
`reliability`, `observe` (status, metrics, teardown audit).
Widgets, pandas and matplotlib are imported inside the functions that draw.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["anatomy", "api", "autoscale", "cost", "deploy", "fleet", "form", "friendly", "gallery", "latency", "manifests",
           "observe", "progress", "reliability", "session", "tasks", "tuning"]


def __getattr__(name: str) -> Any:
    # lazy, as `sdlab` itself: `from sdlab import workshop as ws` imports nothing until a module is used
    if name in __all__:
        return importlib.import_module(f"sdlab.workshop.{name}")
    raise AttributeError(f"module 'sdlab.workshop' has no attribute {name!r}")
