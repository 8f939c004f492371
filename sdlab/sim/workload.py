"""Arrivals: Poisson, bursts, diurnal, and replay of a recorded trace; read from a workload file.

A workload file is YAML:

```yaml
name: bursty                # free text
duration_s: 3600            # arrivals happen in [0, duration_s); the run then drains the queue
model: sd15-512-16          # service-time key in the facts table (sd15-512-16, sd15-512-25, sdxl-1024-30)
seed: 1
arrivals:                   # summed; each entry one of:
  - {kind: poisson, rate_per_s: 0.5}
  - {kind: burst, at_s: 600, count: 200}                       # `count` tasks at once (a batch submit)
  - {kind: burst, start_s: 1200, length_s: 300, rate_per_s: 4} # a Poisson burst
  - {kind: diurnal, mean_per_s: 11.6, peak_to_mean: 2.0, peak_at_s: 50400, period_s: 86400}
  - {kind: trace, path: trace.csv}                              # relative to the workload file
```

A trace file is CSV with a header; one row per task; column `t` is the submit time in seconds from the start of
the trace (any order; `#` lines are comments); other columns are ignored. A `.csv` given as the workload itself is
replayed as it is (duration = last arrival). Times are seconds; rates per second.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from sdlab.errors import ConfigError

KINDS = ("poisson", "burst", "diurnal", "trace")


@dataclass(frozen=True)
class Workload:
    name: str
    duration_s: float
    arrivals: tuple[dict[str, Any], ...]
    model: str = "sd15-512-16"
    seed: int = 0
    base_dir: Path = field(default=Path("."), compare=False)

    def times(self, seed: int | None = None) -> np.ndarray:
        """Sorted arrival times (seconds), the same for the same seed."""
        rng = np.random.default_rng(self.seed if seed is None else seed)
        parts = [_arrivals(a, self.duration_s, rng, self.base_dir) for a in self.arrivals]
        out = np.sort(np.concatenate(parts)) if parts else np.zeros(0)
        return out

    def mean_rate(self) -> float:
        return len(self.times()) / self.duration_s if self.duration_s else 0.0


def _poisson_times(rate: float, start: float, end: float, rng: np.random.Generator) -> np.ndarray:
    n = rng.poisson(max(rate, 0.0) * max(end - start, 0.0))
    return rng.uniform(start, end, n)


def _arrivals(spec: dict[str, Any], duration: float, rng: np.random.Generator, base: Path) -> np.ndarray:
    kind = spec.get("kind")
    if kind == "poisson":
        return _poisson_times(float(spec["rate_per_s"]), float(spec.get("start_s", 0)),
                              float(spec.get("end_s", duration)), rng)
    if kind == "burst":
        if "count" in spec:
            return np.full(int(spec["count"]), float(spec.get("at_s", 0.0)))
        start = float(spec["start_s"])
        return _poisson_times(float(spec["rate_per_s"]), start, start + float(spec["length_s"]), rng)
    if kind == "diurnal":
        # rate(t) = mean × (1 + a cos(2π (t - peak) / period)), a = peak_to_mean - 1; thinning of a Poisson process
        mean, period = float(spec["mean_per_s"]), float(spec.get("period_s", 86400))
        amp = float(spec.get("peak_to_mean", 2.0)) - 1.0
        if not 0 <= amp <= 1:
            raise ConfigError(["arrivals[].peak_to_mean must be between 1 and 2 (the rate never goes negative)"])
        peak = float(spec.get("peak_at_s", period / 2))
        cand = _poisson_times(mean * (1 + amp), 0.0, duration, rng)
        keep = rng.uniform(0, 1, len(cand)) < (1 + amp * np.cos(2 * math.pi * (cand - peak) / period)) / (1 + amp)
        return cand[keep]
    if kind == "trace":
        return read_trace(base / spec["path"])
    raise ConfigError([f"arrivals[].kind {kind!r} is unknown; use one of {list(KINDS)}"])


def read_trace(path: str | Path) -> np.ndarray:
    """Submit times (seconds) from a CSV trace with a `t` column."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except FileNotFoundError as err:
        raise ConfigError([f"trace file {path} not found"]) from err
    rows = list(csv.DictReader(lines))
    if rows and "t" not in rows[0]:
        raise ConfigError([f"{path}: the trace needs a header with a `t` column (seconds from start)"])
    try:
        times = np.array([float(r["t"]) for r in rows])
    except ValueError as err:
        raise ConfigError([f"{path}: column `t` must hold numbers (seconds): {err}"]) from err
    if (times < 0).any():
        raise ConfigError([f"{path}: column `t` must not be negative"])
    return np.sort(times)


def write_trace(path: str | Path, times: np.ndarray) -> None:
    """Record arrival times in the trace format (for replay)."""
    Path(path).write_text("t\n" + "".join(f"{t:.3f}\n" for t in np.sort(times)))


def shipped_workloads() -> list[str]:
    """Names of the reference workloads shipped in the package (`bursty`, `steady`, `day`)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("sdlab.sim").joinpath("data/workloads").iterdir()
                  if p.name.endswith(".yaml"))


def load_workload(path: str | Path) -> Workload:
    """A workload YAML file, a CSV trace replayed as it is, or the name of a shipped workload (`bursty`)."""
    path = Path(path)
    if not path.exists() and str(path) in shipped_workloads():
        with resources.as_file(resources.files("sdlab.sim").joinpath(f"data/workloads/{path}.yaml")) as shipped:
            return load_workload(shipped)
    if path.suffix == ".csv":
        times = read_trace(path)
        return Workload(name=path.stem, duration_s=float(times[-1]) + 1.0 if len(times) else 1.0,
                        arrivals=({"kind": "trace", "path": path.name},), base_dir=path.parent)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError([f"workload file {path} not found"]) from err
    if not isinstance(data, dict) or "arrivals" not in data or "duration_s" not in data:
        raise ConfigError([f"{path}: a workload needs `duration_s` and `arrivals:` (see docs/tuning.md)"], str(path))
    return Workload(name=str(data.get("name", path.stem)), duration_s=float(data["duration_s"]),
                    arrivals=tuple(data["arrivals"]), model=str(data.get("model", "sd15-512-16")),
                    seed=int(data.get("seed", 0)), base_dir=path.parent)


def steady(rate_per_s: float, duration_s: float, model: str = "sd15-512-16", seed: int = 0) -> Workload:
    return Workload("steady", duration_s, ({"kind": "poisson", "rate_per_s": rate_per_s},), model, seed)


def bursty(duration_s: float = 3600.0, base_per_s: float = 0.05, burst_count: int = 300, bursts: int = 3,
           model: str = "sd15-512-16", seed: int = 0) -> Workload:
    """A trickle plus `bursts` batch submits of `burst_count` tasks spread over the period."""
    arrivals: list[dict[str, Any]] = [{"kind": "poisson", "rate_per_s": base_per_s}]
    arrivals += [{"kind": "burst", "at_s": duration_s * (i + 0.5) / bursts / 1.5, "count": burst_count}
                 for i in range(bursts)]
    return Workload("bursty", duration_s, tuple(arrivals), model, seed)


def diurnal_day(requests: int = 1_000_000, peak_to_mean: float = 2.0, model: str = "sd15-512-16", seed: int = 0) -> Workload:
    """A day of `requests` with a daily cycle (peak at 14:00)."""
    return Workload("day", 86400.0, ({"kind": "diurnal", "mean_per_s": requests / 86400.0, "peak_to_mean": peak_to_mean,
                                      "peak_at_s": 14 * 3600.0},), model, seed)
