"""AUTOMATIC1111 sampler names mapped onto diffusers schedulers.

A1111 clients send names such as ``"DPM++ 2M Karras"``; diffusers spells the same
algorithm as ``DPMSolverMultistepScheduler(use_karras_sigmas=True)``. This table is
the single place that translation lives. Newer A1111 versions split the noise
schedule into a separate ``scheduler`` field (``"Karras"``, ``"Exponential"``…),
which :func:`sampler_for` also accepts.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from sdlab.errors import ValidationError


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler and the diffusers scheduler that implements it."""

    name: str
    scheduler_class: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


_DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
# DPM++ SDE in A1111 needs the `torchsde` package through DPMSolverSDEScheduler; the
# SDE variant of the multistep solver is the same family and has no extra dependency.
_DPMPP_SDE = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", _DPMPP, ("k_dpmpp_2m",)),
    SamplerSpec("DPM++ SDE", "DPMSolverMultistepScheduler", _DPMPP_SDE, ("k_dpmpp_sde",), {"brownian_noise": True}),
    SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", _DPMPP_SDE, ("k_dpmpp_2m_sde",), {"brownian_noise": True}),
    SamplerSpec(
        "DPM++ 3M SDE",
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
        ("k_dpmpp_3m_sde",),
        {"brownian_noise": True},
    ),
    SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, ("k_euler_a", "k_euler_ancestral"), {"uses_ensd": True}),
    SamplerSpec("Euler", "EulerDiscreteScheduler", {}, ("k_euler",)),
    SamplerSpec("LMS", "LMSDiscreteScheduler", {}, ("k_lms",)),
    SamplerSpec("Heun", "HeunDiscreteScheduler", {}, ("k_heun",), {"second_order": True}),
    SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, ("k_dpm_2",), {"discard_next_to_last_sigma": True}),
    SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, ("k_dpm_2_a",), {"uses_ensd": True}),
    SamplerSpec("DDIM", "DDIMScheduler", {}, ("ddim",)),
    SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}, ("plms", "PNDM", "pndm")),
    SamplerSpec("UniPC", "UniPCMultistepScheduler", {}, ("unipc",)),
)

# Noise schedules ("scheduler" in A1111 ≥ 1.9) → diffusers keyword arguments.
SCHEDULES: dict[str, dict[str, Any]] = {
    "automatic": {},
    "uniform": {},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
}

# SD 1.x values for settings that only some scheduler families have; applied when the
# model's own scheduler config (often Euler or PNDM) does not mention them.
_SD_DEFAULTS = {"clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True}

_BY_NAME: dict[str, SamplerSpec] = {}
for _spec in SAMPLERS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_NAME[_key.lower()] = _spec


def sampler_names() -> list[str]:
    """Every accepted canonical name, including the ``"<name> Karras"`` spellings."""
    names = [s.name for s in SAMPLERS]
    names += [f"{s.name} Karras" for s in SAMPLERS if _supports(s, "use_karras_sigmas")]
    return names


def sampler_list() -> list[dict[str, Any]]:
    """The ``GET /sdapi/v1/samplers`` payload: ``[{name, aliases, options}]``."""
    items = [{"name": s.name, "aliases": list(s.aliases), "options": dict(s.options)} for s in SAMPLERS]
    for s in SAMPLERS:
        if _supports(s, "use_karras_sigmas"):
            items.append({"name": f"{s.name} Karras", "aliases": [], "options": {**s.options, "scheduler": "karras"}})
    return items


def _scheduler_class(spec: SamplerSpec):
    import diffusers

    return getattr(diffusers, spec.scheduler_class)


def _supports(spec: SamplerSpec, kwarg: str) -> bool:
    return kwarg in inspect.signature(_scheduler_class(spec).__init__).parameters


def resolve(name: str, schedule: str | None = None) -> tuple[SamplerSpec, dict[str, Any]]:
    """Return the sampler spec and the noise-schedule kwargs for an A1111 name.

    ``"DPM++ 2M Karras"`` is the same as ``name="DPM++ 2M", schedule="Karras"``.
    Raises :class:`ValidationError` listing the valid names when ``name`` is unknown.
    """
    key = (name or "").strip().lower()
    schedule_key = (schedule or "automatic").strip().lower()
    if key not in _BY_NAME:
        for suffix in SCHEDULES:
            if key.endswith(" " + suffix) and key[: -len(suffix) - 1] in _BY_NAME:
                key, schedule_key = key[: -len(suffix) - 1], suffix
                break
    spec = _BY_NAME.get(key)
    if spec is None:
        raise ValidationError(
            "sampler_name",
            f"unknown sampler {name!r}; valid samplers are: {', '.join(sampler_names())}",
            status=422,
        )
    if schedule_key not in SCHEDULES:
        raise ValidationError(
            "scheduler",
            f"unknown scheduler {schedule!r}; valid schedulers are: {', '.join(s.title() for s in SCHEDULES)}",
            status=422,
        )
    schedule_kwargs = SCHEDULES[schedule_key]
    for kwarg in schedule_kwargs:
        if not _supports(spec, kwarg):
            raise ValidationError(
                "scheduler",
                f"sampler {spec.name!r} does not support the {schedule_key.title()} schedule; "
                "use scheduler 'Automatic' or another sampler",
                status=422,
            )
    return spec, dict(schedule_kwargs)


def sampler_for(name: str, base_config: Any, schedule: str | None = None):
    """Build the diffusers scheduler for A1111 sampler ``name``.

    Args:
        name: An A1111 sampler name or alias, e.g. ``"Euler a"``, ``"DPM++ 2M Karras"``, ``"k_lms"``.
        base_config: The model's own scheduler config (``pipe.scheduler.config``); it carries the
            training noise schedule (betas, prediction type) the new scheduler must keep.
        schedule: Optional A1111 ``scheduler`` field (``"Automatic"``, ``"Karras"``, ``"Exponential"``).
    """
    spec, schedule_kwargs = resolve(name, schedule)
    cls = _scheduler_class(spec)
    accepted = inspect.signature(cls.__init__).parameters
    # Drop keys from other scheduler families (e.g. Karras flags on a DDIM base config)
    # so they cannot leak into a scheduler that would misread them.
    config = {k: v for k, v in dict(base_config).items() if k in accepted}
    for key, value in _SD_DEFAULTS.items():
        if key in accepted:
            config.setdefault(key, value)
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(flag, None)
    try:
        return cls.from_config(config, **spec.kwargs, **schedule_kwargs)
    except ImportError as exc:
        # diffusers exposes placeholder classes when an optional backend (scipy for LMS) is missing.
        raise ValidationError(
            "sampler_name", f"sampler {spec.name!r} is unavailable on this server: {exc}".strip(), status=422
        ) from exc
