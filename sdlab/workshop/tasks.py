"""Tasks as tables (pandas DataFrames): one row per task, its status and timings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sdlab.contracts import Notification


def frame(notes: Mapping[str, Notification] | Sequence[Notification], **extra: Sequence[Any]) -> Any:
    """A DataFrame: task (short id), runtime, status, images, queued s, running s; `extra` adds columns."""
    import pandas as pd

    items = list(notes.values()) if isinstance(notes, Mapping) else list(notes)
    rows = [{"task": n.id[:8], "runtime": n.runtime, "status": n.status.value, "images": len(n.images),
             "queued_s": n.timings.queued_s, "run_s": n.timings.run_s} for n in items]
    table = pd.DataFrame(rows)
    for name, values in extra.items():
        table[name] = list(values)
    return table
