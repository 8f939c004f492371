"""Local autoscaling from zero and back, watched as it happens: pods of one runtime and its queue depth over time.

`sdlab up --autoscale` runs the local autoscaler, which starts and stops runtime+agent pods with KEDA's formula
(`sdlab.scaling`) from the runtime's `scaling:` values. This module makes a one-runtime config with quick values,
starts that stack in a home of its own, and samples it while tasks run and after, until the pods are gone.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sdlab.config import Settings, parse_config
from sdlab.local.autoscaler import pod_processes
from sdlab.local.stack import up
from sdlab.workshop import anatomy
from sdlab.workshop.progress import UpBar
from sdlab.workshop.session import Session


def one_runtime(settings: Settings, runtime: str, **scaling: Any) -> Settings:
    """`settings` with only `runtime`, its `scaling:` values overridden, under a stack name of its own."""
    data = settings.model_dump(mode="json", exclude_none=True)
    spec = next(rt for rt in data["runtimes"] if rt["name"] == runtime)
    spec["scaling"] = {**spec.get("scaling", {}), **scaling}
    data["runtimes"] = [spec]
    data["stack"] = {**data["stack"], "name": f"{data['stack']['name']}-scale"}
    data["stack"].pop("bucket", None)
    return parse_config(data, f"{runtime} with scaling {scaling}")


def start(settings: Settings, home: str | os.PathLike[str], *, model_cache: str | os.PathLike[str] | None = None,
          progress: bool = True) -> Session:
    """Bring an autoscaled stack up in `home` (sharing built models from `model_cache` when given)."""
    root = Path(home)
    if model_cache and not (root / "cache" / "models").exists():
        (root / "cache").mkdir(parents=True, exist_ok=True)
        (root / "cache" / "models").symlink_to(Path(model_cache).resolve())
    with UpBar(enabled=progress) as bar:
        stack = up(settings, root, autoscale=True, progress=bar)
    return Session(stack=stack, home=root.resolve(), started=True)


def sample(session: Session, runtime: str) -> dict[str, int]:
    """Pods running for `runtime` and its queue's visible and in-flight messages, now."""
    pods = [p for p in pod_processes(session.home) if p.name.startswith(f"runtime-{runtime}-")]
    q = anatomy.queue(session.stack, runtime)
    return {"pods": len(pods), "visible": q["visible"], "in_flight": q["in_flight"]}


def watch(session: Session, runtime: str, task_ids: list[str], *, timeout: float = 180.0, every_s: float = 0.5,
          live: bool = True) -> Any:
    """Sample until every task ended and the pods are back to zero; re-plot in place while it runs. A DataFrame."""
    import pandas as pd
    from IPython.display import display

    handle = display("starting…", display_id=True) if live else None
    rows: list[dict[str, Any]] = []
    pending, t0, last_plot = set(task_ids), time.monotonic(), 0.0
    while time.monotonic() - t0 < timeout:
        pending = {i for i in pending if session.client.status(i)["status"] in ("queued", "running")}
        rows.append({"t_s": round(time.monotonic() - t0, 1), **sample(session, runtime), "done": len(task_ids) - len(pending)})
        if handle is not None and time.monotonic() - last_plot > 2:
            last_plot = time.monotonic()
            handle.update(_png(pd.DataFrame(rows)))
        if not pending and rows[-1]["pods"] == 0:
            break
        time.sleep(every_s)
    timeline = pd.DataFrame(rows)
    if handle is not None:
        handle.update(_png(timeline))
    return timeline


def plot(timeline: Any) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot(timeline["t_s"], timeline["visible"] + timeline["in_flight"], label="messages (visible + in flight)")
    ax.plot(timeline["t_s"], timeline["done"], label="tasks done", linestyle="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("messages / tasks")
    twin = ax.twinx()
    twin.step(timeline["t_s"], timeline["pods"], where="post", color="tab:red", label="pods")
    twin.set_ylabel("pods")
    twin.set_ylim(bottom=0, top=max(2, int(timeline["pods"].max()) + 1))
    fig.legend(loc="upper left", bbox_to_anchor=(0.1, 0.97), fontsize=8)
    fig.tight_layout()
    return fig


def _png(timeline: Any) -> Any:
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image

    fig = plot(timeline)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return Image(data=buf.getvalue(), format="png")
