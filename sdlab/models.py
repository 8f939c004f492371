"""Models in the bucket: build or take a model, upload it under `<model_prefix>/<name>/`, and sync it down.

On EKS the runtime reads models through the Mountpoint for S3 CSI driver, which presents the model prefix
as a read-only folder. Locally `sync_models` lays the same prefix out as the same folder, so the runtime's
loading code (a local path, `local_files_only`) is the same in both places.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from sdlab.config import ModelSettings
from sdlab.errors import ModelError

log = logging.getLogger(__name__)
MARKER = "sdlab_model.json"


def model_key_prefix(model_prefix: str, name: str) -> str:
    return f"{model_prefix}/{name}"


def build_or_locate(model: ModelSettings, cache_dir: Path) -> Path:
    """A local folder or file holding the model: the shipped one for `source: bundled`, built into `cache_dir`
    when `source: build`."""
    if model.source == "bundled":
        from sdlab.shapes import bundled_model_dir

        path = bundled_model_dir()
        if not (path / "unet" / "diffusion_pytorch_model.safetensors").is_file():
            raise ModelError(f"model {model.name}: the bundled weights are missing from {path}; reinstall sdlab "
                             "(they are package data) or train them with `sdlab model train --export-to " f"{path}`")
        return path
    if model.source == "path":
        path = Path(model.path or "").expanduser()
        if not path.exists():
            raise ModelError(f"model {model.name}: {path} does not exist; fix `model.path` in sdlab.yaml")
        return path
    if model.source != "build":
        raise ModelError(f"model {model.name} has source {model.source!r}; only 'bundled', 'build' and 'path' can be uploaded")
    out = cache_dir / f"{model.name}-{model.variant}-seed{model.seed}"
    if (out / "model_index.json").exists() and (out / MARKER).exists():
        return out
    from sdlab.runtime.model import build_tiny_model  # heavy (torch): only when a build is needed

    log.info("building model %s (variant %s, seed %d)", model.name, model.variant, model.seed)
    build_tiny_model(out, seed=model.seed, variant=model.variant)
    return out


def uploaded(s3: Any, bucket: str, model_prefix: str, name: str) -> bool:
    prefix = model_key_prefix(model_prefix, name)
    out = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/", MaxKeys=1)
    single = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}.safetensors", MaxKeys=1)
    return bool(out.get("KeyCount") or single.get("KeyCount"))


def upload_model(s3: Any, bucket: str, model_prefix: str, name: str, path: Path) -> int:
    """Upload a diffusers folder to `<prefix>/<name>/...` or a single file to `<prefix>/<name>.safetensors`."""
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ModelError(f"{path}: a single-file model must be .safetensors")
        s3.upload_file(str(path), bucket, f"{model_key_prefix(model_prefix, name)}.safetensors")
        return 1
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    if not (path / "model_index.json").exists():
        raise ModelError(f"{path} is not a diffusers folder (no model_index.json); save it with save_pretrained()")
    for file in files:
        s3.upload_file(str(file), bucket, f"{model_key_prefix(model_prefix, name)}/{file.relative_to(path).as_posix()}")
    log.info("uploaded model %s (%d files) to s3://%s/%s/", name, len(files), bucket, model_key_prefix(model_prefix, name))
    return len(files)


# One GET per object, as Mountpoint reads a file front to back. The moto server answers each ranged GET by slicing the
# whole object, so boto3's default (8 MB ranges, 10 threads) turns quadratic: a 1 GB file took 102 s, one GET 6 s.
_WHOLE_OBJECTS = TransferConfig(multipart_threshold=2**40)


def sync_models(s3: Any, bucket: str, model_prefix: str, dest: Path) -> int:
    """Mirror `s3://bucket/<model_prefix>/` into `dest` (skipping files already there with the same size)."""
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{model_prefix}/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(model_prefix) + 1:]
            target = dest / rel
            if ".." in Path(rel).parts:
                raise ModelError(f"refusing object key {obj['Key']!r} that escapes the model folder")
            if target.exists() and target.stat().st_size == obj["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target), Config=_WHOLE_OBJECTS)
            count += 1
    return count
