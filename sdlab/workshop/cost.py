"""What images cost: per 1,000 images (GPU time + the serverless requests of each task), the fixed cost of a
running cluster, and the same traffic on SageMaker Asynchronous Inference, per month against images per day.

Every price comes from `sdlab aws plan`'s table (sdlab/deploy/data/prices.yaml, each with its source); the fixed
cost is the plan's idle total for this `sdlab.yaml`. The requests counted per task are listed in REQUESTS_PER_TASK.
"""

from __future__ import annotations

from typing import Any

from sdlab.config import Settings
from sdlab.deploy.plan import HOURS_PER_MONTH, build_plan, idle_cost, node_price, prices

# one task, submitted and then fetched once by status: what each pay-per-request service counts
REQUESTS_PER_TASK = {
    "api_gateway_rest": 2,  # POST /v1/tasks, GET /v1/tasks/{id}
    "lambda": 2,  # the same two requests
    "sns": 2,  # the task message, the result notification
    "sqs": 5,  # SNS delivery, receive, heartbeat, delete, the user's own receive of the notification
    "s3_put": 2,  # the PNG and result.json
}
PER = {"1M requests": 1e6, "1M publishes": 1e6, "1k PUT": 1e3}


def request_cost_per_task() -> dict[str, float]:
    """USD per task for each pay-per-request service (Lambda's GB-seconds left out: milliseconds per call)."""
    table = prices()["requests"]
    out = {}
    for key, count in REQUESTS_PER_TASK.items():
        per = str(table[key]["per"]).split(" (")[0]
        out[key] = count * float(table[key]["usd"]) / PER[per]
    return out


def per_1000_images(instance_type: str, seconds_per_image: float, *, busy_fraction: float = 0.8,
                    spot_discount: float = 0.0) -> dict[str, float]:
    """USD per 1,000 images on `instance_type`: GPU time (paid while a node is up, `busy_fraction` of it working)
    plus the requests. Raises KeyError for an instance without a price on file."""
    price = node_price(instance_type)
    if price is None:
        raise KeyError(f"no price on file for {instance_type}; add it to sdlab/deploy/data/prices.yaml with its source")
    if not 0 < busy_fraction <= 1:
        raise ValueError(f"busy_fraction {busy_fraction} must be in (0, 1]")
    gpu = price * (1 - spot_discount) * seconds_per_image * 1000 / 3600 / busy_fraction
    requests = 1000 * sum(request_cost_per_task().values())
    return {"gpu_usd": round(gpu, 4), "requests_usd": round(requests, 4), "total_usd": round(gpu + requests, 4)}


def fixed_per_hour(settings: Settings) -> float:
    """The idle cost of the stack with its cluster (`sdlab aws plan`'s total): control plane, system nodes, NAT."""
    return idle_cost(build_plan(settings))


def monthly(settings: Settings, images_per_day: list[int], *, instance_type: str = "g5.xlarge",
            seconds_per_image: float = 2.3, busy_fraction: float = 0.8) -> Any:
    """A DataFrame: monthly USD for this stack on EKS and for SageMaker async (scale-to-zero, and one always on)."""
    import pandas as pd

    eks = per_1000_images(instance_type, seconds_per_image, busy_fraction=busy_fraction)
    sm_price = float(prices()["hourly"]["sagemaker_ml_g5_xlarge"]["usd_per_hour"])
    sm_per_image = sm_price * seconds_per_image / 3600 / busy_fraction
    fixed = fixed_per_hour(settings) * HOURS_PER_MONTH
    rows = []
    for per_day in images_per_day:
        month = per_day * 30
        rows.append({"images_per_day": per_day,
                     "sdlab_eks_usd": round(fixed + month * eks["total_usd"] / 1000, 2),
                     "sagemaker_async_min0_usd": round(month * sm_per_image, 2),
                     "sagemaker_async_min1_usd": round(max(sm_price * HOURS_PER_MONTH, month * sm_per_image), 2)})
    return pd.DataFrame(rows)


def plot(table: Any) -> Any:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.5))
    for col, label in (("sdlab_eks_usd", "sdlab on EKS (cluster + GPU nodes + requests)"),
                       ("sagemaker_async_min0_usd", "SageMaker async, scale to zero"),
                       ("sagemaker_async_min1_usd", "SageMaker async, one instance always on")):
        ax.plot(table["images_per_day"], table[col], "-o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images per day")
    ax.set_ylabel("USD per month")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
