"""Latency through the stack, from the task records: queue wait, run time in the runtime, the agent's own time
(storing images, ending the task) and the notification, per task and as percentiles; beside them the figures of
`docs/benchmarks.md` (read from its tables, so the notebook shows what the document says, not a copy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from sdlab.workshop import anatomy
from sdlab.workshop.form import GenerateRequest
from sdlab.workshop.progress import wait
from sdlab.workshop.session import Session

PHASES = ("queue_wait_s", "run_s", "agent_s", "notify_s")


def run(session: Session, runtime: str, *, tasks: int = 8, size: int = 64, steps: int = 4, bars: bool = True,
        timeout: float = 300.0) -> Any:
    """Submit `tasks` at once to `runtime`, wait for all, read each record: a DataFrame with one row per task."""
    import pandas as pd

    request = GenerateRequest("two small red circles on a blue background", runtime, size=size, steps=steps).check(session)
    spec = session.runtimes[runtime]
    ids = [session.client.submit(runtime, **request.submit_kwargs(spec, i)).id for i in range(tasks)]
    wait(session.client, ids, timeout=timeout, enabled=bars)
    rows = []
    for task_id in ids:
        r = anatomy.record(session.stack, task_id)
        submitted, started, finished = float(r["created_at"]), float(r["started_at"]), float(r["finished_at"])
        notified = float(r.get("notified_at") or finished)
        rows.append({"task": task_id[:8], "status": r["status"], "queue_wait_s": started - submitted,
                     "run_s": float(r["run_s"]), "agent_s": max(0.0, finished - started - float(r["run_s"])),
                     "notify_s": max(0.0, notified - finished), "end_to_end_s": notified - submitted})
    return pd.DataFrame(rows).round(3)


def percentiles(table: Any) -> Any:
    """p50, p95 and max of each phase and of the end-to-end time."""
    cols = [*PHASES, "end_to_end_s"]
    return table[cols].quantile([0.5, 0.95, 1.0]).rename(index={0.5: "p50", 0.95: "p95", 1.0: "max"}).round(3)


def plot(table: Any) -> Any:
    """Each task's time split into its phases (stacked bars), in submit order."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    bottom = [0.0] * len(table)
    for phase in PHASES:
        ax.bar(table["task"], table[phase], bottom=bottom, label=phase.removesuffix("_s").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, table[phase], strict=True)]
    ax.set_ylabel("seconds")
    ax.set_xlabel("task (submit order)")
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def doc_tables(path: str | os.PathLike[str], heading: str) -> list[Any]:
    """The markdown tables in the section of `path` whose heading contains `heading`, as DataFrames."""
    import pandas as pd

    lines = Path(path).read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("#") and heading in line), None)
    if start is None:
        raise KeyError(f"no heading containing {heading!r} in {path}")
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    tables: list[list[list[str]]] = []
    prev_was_table = False
    for line in lines[start + 1:]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if line.startswith("|"):
            cells = [re.sub(r"\*\*|`", "", c).strip() for c in line.strip().strip("|").split("|")]
            if all(re.fullmatch(r":?-+:?", c) for c in cells):
                continue
            if tables and tables[-1] and prev_was_table:
                tables[-1].append(cells)
            else:
                tables.append([cells])
            prev_was_table = True
        else:
            prev_was_table = False
    return [pd.DataFrame(t[1:], columns=t[0]) for t in tables]
