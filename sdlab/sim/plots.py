"""Plots for the notebooks and docs: timelines of queue depth, pods and nodes; the tuner's Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdlab.sim.result import Result


def _plt() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline", "nbagg", "widget"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def timeline(*results: Result, path: str | Path | None = None, title: str | None = None) -> Any:
    """Queue depth (visible + in flight), pods (ready and all) and nodes over time; one column per result."""
    plt = _plt()
    fig, axes = plt.subplots(3, len(results), figsize=(5.5 * len(results), 6), sharex="col", squeeze=False)
    for col, r in enumerate(results):
        tl = r.timeline
        minutes = tl[:, 0] / 60.0
        ax = axes[:, col]
        ax[0].plot(minutes, tl[:, 1] + tl[:, 2], label="visible + in flight")
        ax[0].plot(minutes, tl[:, 1], label="visible", alpha=0.7)
        ax[0].set_ylabel("messages")
        ax[0].legend(fontsize=7)
        ax[0].set_title(r.label, fontsize=9)
        ax[1].step(minutes, tl[:, 3], where="post", label="desired (KEDA/HPA)")
        ax[1].step(minutes, tl[:, 5], where="post", label="pods", alpha=0.8)
        ax[1].step(minutes, tl[:, 4], where="post", label="pods ready", alpha=0.8)
        ax[1].set_ylabel("replicas")
        ax[1].legend(fontsize=7)
        ax[2].step(minutes, tl[:, 6], where="post", color="tab:purple")
        ax[2].set_ylabel("nodes")
        ax[2].set_xlabel("minutes")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=60, bbox_inches="tight")
        plt.close(fig)
    return fig


def pareto(tune_result: Any, path: str | Path | None = None, labelled: int = 6) -> Any:
    """Every evaluated setting (grey), the Pareto front (line), the chosen point (star), the p95 target (dashed)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in tune_result.points if p.p95 != float("inf")]
    ax.scatter([p.p95 for p in pts], [p.cost for p in pts], s=8, color="lightgrey", label="evaluated")
    front = tune_result.front
    ax.plot([p.p95 for p in front], [p.cost for p in front], "o-", color="tab:blue", label="Pareto front")
    step = max(1, len(front) // labelled)
    for p in front[::step]:
        c = p.choice
        ax.annotate(f"{c.instance_type} {'spot' if 'spot' in c.capacity_types else 'OD'} q{c.scaling.queue_length} "
                    f"min{c.scaling.min_replicas}", (p.p95, p.cost), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if tune_result.chosen:
        ax.plot([tune_result.chosen.p95], [tune_result.chosen.cost], "*", color="tab:red", markersize=14, label="chosen")
    ax.axvline(tune_result.target_p95_s, linestyle="--", color="tab:red", linewidth=0.8, label="p95 target")
    ax.set_xlabel("p95 end-to-end latency (s)")
    ax.set_ylabel("$ per 1,000 images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
    return fig


def compare_bars(rows: list[dict[str, Any]], path: str | Path | None = None) -> Any:
    """p95 and cost per 1,000 images side by side for named scenarios (rows: label, p95_s, cost_per_1000_images_usd)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(10, 0.45 * len(rows) + 1.5))
    labels = [r["label"] for r in rows]
    ax[0].barh(labels, [r["p95_s"] or 0 for r in rows], color="tab:orange")
    ax[0].set_xlabel("p95 latency (s)")
    ax[0].invert_yaxis()
    ax[1].barh(labels, [r["cost_per_1000_images_usd"] or 0 for r in rows], color="tab:green")
    ax[1].set_xlabel("$ per 1,000 images")
    ax[1].invert_yaxis()
    ax[1].set_yticklabels([])
    for a in ax:
        a.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
    return fig
