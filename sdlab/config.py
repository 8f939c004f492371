"""The one configuration file, `sdlab.yaml`: schema, defaults and validation.

Every problem in a file is reported at once (`ConfigError.problems`), each naming the key and the fix.
The schema is exported with `python -m sdlab config schema` and documented in docs/configuration.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from sdlab import envvars
from sdlab.errors import ConfigError

DEFAULT_CONFIG_FILE = "sdlab.yaml"
RuntimeType = Literal["sdwebui", "comfyui", "diffusers"]
CapacityType = Literal["spot", "on-demand"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,38}[a-z0-9]$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    """Request limits enforced at the API: 400 above a payload limit, 413 above `max_request_bytes`."""

    max_steps: int = Field(150, ge=1, le=1000)
    max_side_px: int = Field(2048, ge=64)
    max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    max_images_per_task: int = Field(16, ge=1, le=256)
    max_request_bytes: int = Field(256 * 1024, ge=1024, le=256 * 1024)


class QueueSettings(_Strict):
    """SQS settings of one runtime's queue."""

    visibility_timeout_seconds: int = Field(120, ge=2, le=43200)
    max_receive_count: int = Field(3, ge=1, le=1000)
    message_retention_seconds: int = Field(4 * 24 * 3600, ge=60, le=14 * 24 * 3600)
    receive_wait_seconds: int = Field(20, ge=0, le=20)


class HpaPolicy(_Strict):
    """One HPA scaling policy: change by at most `value` pods (or percent) per `period_seconds`."""

    type: Literal["Pods", "Percent"]
    value: int = Field(ge=1)
    period_seconds: int = Field(ge=1, le=1800)


class HpaRules(_Strict):
    """HPA behaviour in one direction (`advanced.horizontalPodAutoscalerConfig.behavior.scaleUp|scaleDown`).

    `stabilization_window_seconds: None` means Kubernetes' default (scale-up 0 s; for scale-down sdlab renders
    min(cooldown_seconds, 3600)); `policies: None` means Kubernetes' defaults.
    """

    stabilization_window_seconds: int | None = Field(None, ge=0, le=3600)
    select_policy: Literal["Max", "Min", "Disabled"] = "Max"
    policies: tuple[HpaPolicy, ...] | None = None


class HpaBehavior(_Strict):
    """The HPA that KEDA creates: scale-up left to Kubernetes' defaults unless set; scale-down gentle (1 pod a minute)."""

    scale_up: HpaRules | None = Field(None, description="None: not rendered (0 s window; +4 pods or +100 % per 15 s)")
    scale_down: HpaRules = HpaRules(policies=(HpaPolicy(type="Pods", value=1, period_seconds=60),))


class ScalingSettings(_Strict):
    """KEDA ScaledObject values; locally the same formula scales local processes."""

    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(4, ge=1)
    queue_length: int = Field(4, ge=1, description="target messages per replica")
    activation_queue_length: int = Field(0, ge=0, description="scale 0->1 only above this")
    scale_on_in_flight: bool = True
    polling_interval_seconds: int = Field(15, ge=1)
    cooldown_seconds: int = Field(300, ge=0)
    hpa: HpaBehavior = HpaBehavior()

    @model_validator(mode="after")
    def _min_le_max(self) -> ScalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas}); "
                "lower min_replicas or raise max_replicas"
            )
        return self


class BatchSettings(_Strict):
    """How the runtime groups compatible tasks (same model, size, steps, sampler) into one generation."""

    max_batch: int | None = Field(None, ge=1, le=64, description="None: chosen from the card's memory")
    max_wait_ms: int = Field(50, ge=0, le=5000, description="how long the first task waits for company")
    buckets: tuple[int, ...] | None = Field(
        None, description="batch sizes compiled ahead (with `optimize: fast`), e.g. [1, 2, 4, 8]; None: the runtime's")

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is not None and (not value or any(b < 1 or b > 64 for b in value) or list(value) != sorted(set(value))):
            raise ValueError(f"{list(value)}: list batch sizes from 1 to 64 in increasing order, each once, e.g. [1, 2, 4, 8]")
        return value

    @model_validator(mode="after")
    def _buckets_within_max(self) -> BatchSettings:
        if self.buckets and self.max_batch is not None and self.buckets[-1] > self.max_batch:
            raise ValueError(f"buckets go up to {self.buckets[-1]}, above max_batch ({self.max_batch}); "
                             "drop the larger buckets or raise max_batch")
        return self


class NodeSettings(_Strict):
    """Karpenter NodePool choices for the runtime's GPU nodes (used on AWS)."""

    instance_types: tuple[str, ...] = ("g6.xlarge", "g6.2xlarge", "g5.xlarge", "g5.2xlarge")
    capacity_types: tuple[CapacityType, ...] = ("spot", "on-demand")
    gpu_limit: int = Field(8, ge=1)

    @field_validator("instance_types")
    @classmethod
    def _gpu_families(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in value if t.split(".")[0] not in GPU_FAMILIES]
        if bad:
            raise ValueError(f"{bad} are not GPU instance types; use families {sorted(GPU_FAMILIES)}")
        if not value:
            raise ValueError("name at least one instance type, e.g. g6.xlarge")
        return value


GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en"}


class ModelSettings(_Strict):
    """Where a runtime's model comes from.

    `source: bundled` (the default) uploads the trained captioned-shapes model shipped in the package
    (docs/model.md); `source: build` makes a small model with seeded random weights (`variant`, `seed`), for tests;
    `source: path` uploads a diffusers folder or a single .safetensors file from `path`; `source: s3` expects it
    already under the model prefix.
    """

    name: str
    source: Literal["bundled", "build", "path", "s3"] = "bundled"
    variant: str = "tiny"
    seed: int = 0
    path: str | None = None

    @model_validator(mode="after")
    def _path_when_needed(self) -> ModelSettings:
        if self.source == "path" and not self.path:
            raise ValueError("source 'path' needs `path:` (a diffusers folder or a .safetensors file)")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"name {self.name!r} must be letters, digits, '.', '_' or '-'")
        return self


class RuntimeSettings(_Strict):
    """One SD runtime: its queue, model and scaling."""

    name: str
    type: RuntimeType = "sdwebui"
    model: ModelSettings
    queue: QueueSettings = QueueSettings()
    scaling: ScalingSettings = ScalingSettings()
    nodes: NodeSettings = NodeSettings()
    batch: BatchSettings = BatchSettings()
    optimize: Literal["off", "fast"] = Field(
        "off", description="the project's runtime: 'fast' turns on the benchmarked GPU optimisations (docs/benchmarks.md)")
    torch_threads: int | None = Field(None, ge=1, description="local runtime: torch threads (default: cores/runtimes)")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid runtime name; use 2-40 lowercase letters, digits and '-', "
                "starting with a letter (it names queues, k8s objects and the SNS routing value)"
            )
        return value


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class StackSettings(_Strict):
    """Names shared by every resource of one stack."""

    name: str = "sdlab"
    region: str = "us-east-1"
    bucket: str | None = Field(None, description="default: <name>-data (locally) ; set a globally unique name on AWS")
    output_prefix: str = "outputs"
    model_prefix: str = "models"
    workflow_prefix: str = "workflows"
    input_buckets: tuple[str, ...] = Field(
        (), description="bare names of the buckets s3:// input images may come from besides the stack's own bucket "
                        "(`s3://name` is accepted and stored as `name`); the agent may read any object in them")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(f"{value!r}: use 2-40 lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator("input_buckets")
    @classmethod
    def _bare_bucket_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """One format everywhere (config, IAM, API, agent): bare bucket names; `s3://name` is normalised."""
        out, problems = [], []
        for item in value:
            name = item.removeprefix("s3://").rstrip("/")
            if "/" in name:
                problems.append(f"{item!r}: give a bucket name (`{name.split('/')[0]}`); input buckets are allowed whole, "
                                "not by prefix")
            elif not _BUCKET_RE.fullmatch(name):
                problems.append(f"{item!r}: not a valid S3 bucket name (3-63 lowercase letters, digits, '.' and '-')")
            out.append(name)
        if problems:
            raise ValueError("; ".join(problems))
        return tuple(dict.fromkeys(out))

    @field_validator("output_prefix", "model_prefix", "workflow_prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9/_-]*[A-Za-z0-9]", value) or "//" in value:
            raise ValueError(f"{value!r}: a prefix is letters, digits, '-', '_' and single '/', no leading/trailing '/'")
        return value

    @property
    def bucket_name(self) -> str:
        return self.bucket or f"{self.name}-data"


class Settings(_Strict):
    """The whole file."""

    version: Literal[1] = 1
    stack: StackSettings = StackSettings()
    limits: Limits = Limits()
    runtimes: tuple[RuntimeSettings, ...]

    @model_validator(mode="after")
    def _unique_runtimes(self) -> Settings:
        names = [r.name for r in self.runtimes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"runtime names must be unique; {dupes} appear more than once")
        if not names:
            raise ValueError("define at least one runtime under `runtimes:`")
        return self

    def runtime(self, name: str) -> RuntimeSettings:
        for rt in self.runtimes:
            if rt.name == name:
                return rt
        raise ConfigError([f"no runtime named {name!r}; configured: {[r.name for r in self.runtimes]}"])


def _problems(err: PydanticValidationError) -> list[str]:
    out = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; remove it or check its spelling against docs/configuration.md"
        elif e["type"] == "missing":
            msg = "required key is missing; add it"
        out.append(f"{where}: {msg}")
    return out


def parse_config(data: object, source: str = "config") -> Settings:
    """Validate a mapping (as read from YAML) and return frozen settings, or raise ConfigError listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"the file must hold a mapping with a `runtimes:` key, not {type(data).__name__}"], source)
    try:
        return Settings.model_validate(data)
    except PydanticValidationError as err:
        raise ConfigError(_problems(err), source) from err


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """Explicit path > $SDLAB_CONFIG > ./sdlab.yaml."""
    return Path(path or os.environ.get(envvars.CONFIG) or DEFAULT_CONFIG_FILE)


def load_config(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate `sdlab.yaml`."""
    file = config_path(path)
    try:
        text = file.read_text()
    except FileNotFoundError as err:
        raise ConfigError([f"{file} not found; create it (see sdlab.yaml in the repository) or set ${envvars.CONFIG}"]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([f"not valid YAML: {err}"], str(file)) from err
    return parse_config(data, str(file))


def json_schema() -> dict:
    """JSON Schema of sdlab.yaml (for editors and docs)."""
    return Settings.model_json_schema()
