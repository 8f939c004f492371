"""Find and load Stable Diffusion checkpoints, strictly from local files.

Two on-disk formats are accepted:

* a diffusers folder (it contains ``model_index.json``), as written by
  :func:`sdlab.runtime.model.build_tiny_model` or ``save_pretrained``;
* a single-file ``.safetensors`` checkpoint in the original (LDM / A1111) layout.
  A single file carries weights only, so diffusers also needs the component configs.
  Offline they must come from a local diffusers folder of the same architecture
  (``config=``), because the hub is never contacted. An original LDM ``.yaml``
  (``original_config=``) is accepted too, but diffusers then still wants the CLIP
  tokenizer, which is only available offline if it is already in the HF cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdlab.errors import ModelError

logger = logging.getLogger(__name__)

_DTYPES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def resolve_device(device: str | None = None) -> str:
    """Return ``device`` or, when None, ``"cuda"`` if available else ``"cpu"``."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | None, device: str) -> torch.dtype:
    """fp16 on CUDA, fp32 elsewhere, unless ``dtype`` (e.g. ``"fp16"``, ``"bf16"``) overrides."""
    if dtype is None:
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def _common_kwargs(torch_dtype: torch.dtype) -> dict:
    kwargs = {
        "dtype": torch_dtype,
        "local_files_only": True,
        "safety_checker": None,
        "requires_safety_checker": False,
    }
    # Without accelerate diffusers falls back anyway, but warns on every load.
    if importlib.util.find_spec("accelerate") is None:
        kwargs["low_cpu_mem_usage"] = False
    return kwargs


def load_pipeline(
    model_path: Path,
    *,
    device: str | None = None,
    dtype: str | None = None,
    config: Path | None = None,
    original_config: Path | None = None,
    optimizations: Any = None,
):
    """Load a ``StableDiffusionPipeline`` from local files only.

    Args:
        model_path: A diffusers folder (with ``model_index.json``) or a ``.safetensors`` checkpoint.
        device: ``"cuda"``, ``"cpu"``, … ; default CUDA when available, else CPU.
        dtype: ``"fp16"``, ``"bf16"`` or ``"fp32"``; default fp16 on CUDA and fp32 on CPU.
        config: Single files only: a local diffusers folder whose component configs
            (and tokenizer) match the checkpoint's architecture.
        original_config: Single files only: the original LDM ``.yaml`` config.
        optimizations: :class:`sdlab.runtime.optimize.Optimizations` to apply after loading (its dtype wins).

    Raises:
        ModelError: the path is missing, has an unknown format, or fails to load.
    """
    model_path = Path(model_path)
    device = resolve_device(device)
    dtype = getattr(optimizations, "dtype", None) or dtype
    torch_dtype = resolve_dtype(dtype, device)
    kwargs = _common_kwargs(torch_dtype)

    if model_path.is_dir():
        if not (model_path / "model_index.json").is_file():
            raise ModelError(f"{model_path} is a folder without model_index.json; point at a diffusers model folder")
        if device.startswith("cuda") and importlib.util.find_spec("accelerate") is not None:
            kwargs["device_map"] = device  # safetensors straight to the GPU: no CPU copy, no .to() afterwards
        cls = pipeline_class(model_path)
        if cls.__name__ == "StableDiffusionXLPipeline":
            kwargs = {k: v for k, v in kwargs.items() if k not in ("safety_checker", "requires_safety_checker")}
        try:
            pipe = cls.from_pretrained(str(model_path), **kwargs)
        except Exception as exc:
            raise ModelError(f"cannot load diffusers model {model_path}: {exc}") from exc
    elif model_path.is_file() and model_path.suffix == ".safetensors":
        if config is None and original_config is None:
            raise ModelError(
                f"single-file checkpoint {model_path} needs its component configs to load offline: "
                "pass config=<local diffusers folder of the same architecture> "
                "(server: --single-file-config DIR) or put the original LDM config next to it as "
                f"{model_path.with_suffix('.yaml').name}"
            )
        if config is not None:
            kwargs["config"] = str(config)
        if original_config is not None:
            kwargs["original_config"] = str(original_config)
        kwargs.pop("requires_safety_checker")
        # from_single_file still spells it torch_dtype; with `dtype` it would load fp32 and cast afterwards.
        kwargs["torch_dtype"] = kwargs.pop("dtype")
        cls = pipeline_class(model_path)
        if cls.__name__ == "StableDiffusionXLPipeline":
            kwargs.pop("safety_checker")
        try:
            pipe = cls.from_single_file(str(model_path), **kwargs)
        except Exception as exc:
            raise ModelError(
                f"cannot load single-file checkpoint {model_path} (config={config}, original_config={original_config}): "
                f"{exc}. The file must be an SD 1.x or SDXL checkpoint in the original LDM layout matching that config."
            ) from exc
    elif model_path.exists():
        raise ModelError(f"unsupported model file {model_path}; use a diffusers folder or a .safetensors checkpoint")
    else:
        raise ModelError(f"model path {model_path} does not exist")

    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    logger.info("loaded %s on %s (%s)", model_path.name, device, str(torch_dtype).replace("torch.", ""))
    if optimizations is not None:
        from sdlab.runtime.optimize import apply, load_cache_file, shipped_cache_file

        pipe = apply(pipe, optimizations)
        if optimizations.compiled and model_path.is_dir():
            # a cache shipped next to the model (compiled once for this software and card) before the first trace
            pipe._sdlab_cache_shipped = load_cache_file(shipped_cache_file(model_path))
        pipe._sdlab_model_path = model_path
    return pipe


SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")


def import_pipelines() -> None:
    """Import the pipeline classes (diffusers resolves them lazily, pulling in transformers) ahead of a load."""
    import diffusers

    for name in SUPPORTED_PIPELINES:
        getattr(diffusers, name)


def pipeline_class(model_path: Path) -> Any:
    """The diffusers pipeline class of a model: SD 1.x/2.x or SDXL.

    A folder says so in ``model_index.json`` (``_class_name``); a single file in the original LDM layout is SDXL
    when it holds the second text encoder (``conditioner.embedders.1.*``), read from the safetensors header alone.
    """
    import diffusers

    if model_path.is_dir():
        name = json.loads((model_path / "model_index.json").read_text()).get("_class_name", "StableDiffusionPipeline")
    else:
        from safetensors import safe_open

        with safe_open(str(model_path), framework="pt") as f:
            xl = any(k.startswith("conditioner.embedders.1.") for k in f.keys())
        name = "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"
    if name not in SUPPORTED_PIPELINES:
        raise ModelError(f"{model_path} is a {name}; the sdlab runtime serves {', '.join(SUPPORTED_PIPELINES)} models")
    return getattr(diffusers, name)


def with_scheduler(pipe, scheduler, *, img2img: bool = False):
    """A pipeline sharing ``pipe``'s modules but using ``scheduler``; ``pipe`` stays unchanged."""
    from diffusers import (
        StableDiffusionImg2ImgPipeline,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: its own pipelines, no safety checker
        xl: Any = (StableDiffusionXLImg2ImgPipeline if img2img else StableDiffusionXLPipeline).from_pipe(
            pipe, scheduler=scheduler)
        xl.set_progress_bar_config(disable=True)
        return xl
    cls = StableDiffusionImg2ImgPipeline if img2img else StableDiffusionPipeline
    components = {**pipe.components, "scheduler": scheduler}
    components["safety_checker"] = None
    new: Any = cls(**components, requires_safety_checker=False)
    new.set_progress_bar_config(disable=True)
    return new


class ModelNotFoundError(ModelError):
    """The requested checkpoint is not in the models folder (HTTP 404)."""


def _file_sha256(path: Path, cache: dict) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in cache:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        cache[key] = digest.hexdigest()
    return cache[key]


@dataclass(frozen=True)
class Checkpoint:
    """One model found in the models folder. ``title`` is the folder or file name."""

    title: str
    path: Path

    @property
    def model_name(self) -> str:
        return self.path.stem if self.path.is_file() else self.path.name


class ModelRegistry:
    """The models in ``models_dir`` plus a small LRU cache of loaded pipelines.

    Thread-safe; loading itself is serialised by the caller (the server's generation lock).
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        max_loaded: int = 2,
        single_file_config: Path | None = None,
        optimizations: Any = None,
    ) -> None:
        self.models_dir = Path(models_dir)
        self.optimizations = optimizations
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_loaded = max(1, max_loaded)
        self.single_file_config = single_file_config
        self._lock = threading.RLock()
        self._checkpoints: dict[str, Checkpoint] = {}
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._hashes: dict = {}
        self.refresh()

    def refresh(self) -> list[Checkpoint]:
        """Rescan ``models_dir``; returns the checkpoints sorted by title."""
        if not self.models_dir.is_dir():
            raise ModelError(f"models folder {self.models_dir} does not exist; create it or pass --models-dir")
        found = {}
        for entry in sorted(self.models_dir.iterdir()):
            if entry.is_dir() and (entry / "model_index.json").is_file():
                found[entry.name] = Checkpoint(entry.name, entry)
            elif entry.is_file() and entry.suffix == ".safetensors":
                found[entry.name] = Checkpoint(entry.name, entry)
        with self._lock:
            self._checkpoints = found
        logger.info("found %d model(s) in %s", len(found), self.models_dir)
        return list(found.values())

    def titles(self) -> list[str]:
        with self._lock:
            return list(self._checkpoints)

    def find(self, name: str) -> Checkpoint:
        """Look up a checkpoint by title, model name, or A1111-style ``"title [hash]"``."""
        with self._lock:
            checkpoints = dict(self._checkpoints)
        wanted = name.strip()
        if wanted.endswith("]") and " [" in wanted:
            wanted = wanted[: wanted.rindex(" [")]
        for ckpt in checkpoints.values():
            if wanted in (ckpt.title, ckpt.model_name, str(ckpt.path)):
                return ckpt
        raise ModelNotFoundError(
            f"model {name!r} not found in {self.models_dir}; available: {sorted(checkpoints)}. "
            "Add it there and POST /sdapi/v1/refresh-checkpoints"
        )

    def sha256(self, ckpt: Checkpoint) -> str:
        """sha256 of the file, or of all files (path + content hash) of a diffusers folder."""
        if ckpt.path.is_file():
            return _file_sha256(ckpt.path, self._hashes)
        digest = hashlib.sha256()
        for path in sorted(p for p in ckpt.path.rglob("*") if p.is_file()):
            digest.update(path.relative_to(ckpt.path).as_posix().encode())
            digest.update(_file_sha256(path, self._hashes).encode())
        return digest.hexdigest()

    def describe(self) -> list[dict]:
        """The ``GET /sdapi/v1/sd-models`` payload."""
        items = []
        for title in self.titles():
            ckpt = self._checkpoints[title]
            sha = self.sha256(ckpt)
            yaml = ckpt.path.with_suffix(".yaml")
            items.append(
                {
                    "title": ckpt.title,
                    "model_name": ckpt.model_name,
                    "hash": sha[:10],
                    "sha256": sha,
                    "filename": str(ckpt.path),
                    "config": str(yaml) if ckpt.path.is_file() and yaml.is_file() else None,
                }
            )
        return items

    def get(self, title: str):
        """Return the loaded pipeline for ``title``, loading it (and evicting the LRU one) if needed."""
        ckpt = self.find(title)
        with self._lock:
            if ckpt.title in self._loaded:
                self._loaded.move_to_end(ckpt.title)
                return self._loaded[ckpt.title]
        original = ckpt.path.with_suffix(".yaml") if ckpt.path.is_file() else None
        pipe = load_pipeline(
            ckpt.path,
            device=self.device,
            dtype=self.dtype,
            config=self.single_file_config if ckpt.path.is_file() else None,
            original_config=original if original is not None and original.is_file() else None,
            optimizations=self.optimizations,
        )
        with self._lock:
            self._loaded[ckpt.title] = pipe
            while len(self._loaded) > self.max_loaded:
                evicted, _ = self._loaded.popitem(last=False)
                logger.info("unloaded %s to make room", evicted)
        return pipe

    def is_loaded(self, title: str) -> bool:
        with self._lock:
            return title in self._loaded

    def unload(self) -> None:
        """Drop every loaded pipeline and free accelerator memory."""
        with self._lock:
            self._loaded.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
