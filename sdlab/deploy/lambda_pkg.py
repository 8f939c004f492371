"""The API function's deployment package, built reproducibly, and `ensure_function`.

The zip holds the light core of `sdlab` (the same `sdlab.api.handlers` module the local gateway runs; without
the runtime, k8s, local-stack, bench and deploy parts) plus its pure dependencies (pydantic, PyYAML), vendored
with pip for Lambda's platform (manylinux2014_x86_64, CPython 3.12) at the exact versions of
`data/lambda-requirements.txt`. boto3 comes with Lambda's Python runtime. Same sources, same bytes: entries are
sorted, timestamps fixed at 1980-01-01, permissions normalised, no bytecode.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from sdlab.errors import ProvisionError

log = logging.getLogger(__name__)
HANDLER = "sdlab.api.handlers.handler"
CALLBACKS_HANDLER = "sdlab.api.callbacks.handler"  # the callback dispatcher, on the callbacks queue
LAMBDA_RUNTIME, LAMBDA_PYTHON, LAMBDA_PLATFORM = "python3.12", "3.12", "manylinux2014_x86_64"
REQUIREMENTS = Path(__file__).with_name("data") / "lambda-requirements.txt"
EXCLUDED_PACKAGES = ("runtime", "k8s", "bench", "local", "deploy", "sim")  # heavy or not needed by the API function
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
_SKIP_PARTS = {"__pycache__", "bin"}
_RESERVED_ENV_PREFIX = "AWS_"  # Lambda refuses variables it sets itself (AWS_REGION, AWS_DEFAULT_REGION, ...)


def source_files(package_root: Path | None = None) -> dict[str, Path]:
    """arcname -> file for the light core of the sdlab package (modules and their data, e.g. workflow templates)."""
    root = package_root or Path(__file__).resolve().parents[1]
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if not path.is_file() or path.suffix == ".pyc" or rel.parts[0] in EXCLUDED_PACKAGES or _SKIP_PARTS & set(rel.parts):
            continue
        out[f"sdlab/{rel.as_posix()}"] = path
    return out


def vendor_dependencies(dest: Path, requirements: Path = REQUIREMENTS) -> dict[str, Path]:
    """pip-install the pinned requirements for Lambda's platform into `dest` (once); arcname -> file."""
    if not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--no-compile",
               "--target", str(dest), "--platform", LAMBDA_PLATFORM, "--implementation", "cp", "--python-version",
               LAMBDA_PYTHON, "--only-binary=:all:", "-r", str(requirements)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise ProvisionError(f"vendoring Lambda dependencies failed (pip exit {done.returncode}): "
                                 f"{done.stderr.strip()[-500:]}; check access to PyPI, or build with vendor=False")
        (dest / ".complete").write_text(requirements.read_text())
    return {p.relative_to(dest).as_posix(): p for p in sorted(dest.rglob("*"))
            if p.is_file() and p.name != ".complete" and not _SKIP_PARTS & set(p.relative_to(dest).parts)}


def _deps_cache(cache_dir: Path) -> Path:
    key = hashlib.sha256((REQUIREMENTS.read_text() + LAMBDA_PLATFORM + LAMBDA_PYTHON).encode()).hexdigest()[:16]
    return cache_dir / f"lambda-deps-{key}"


def build_zip(*, vendor: bool = True, cache_dir: Path | None = None) -> bytes:
    """The deployment package as bytes: identical for identical sources and requirements."""
    files = source_files()
    if vendor:
        with tempfile.TemporaryDirectory() as tmp:
            deps = vendor_dependencies(_deps_cache(cache_dir) if cache_dir else Path(tmp) / "deps")
            files = {**deps, **files}
            return _zip(files)
    return _zip(files)


def _zip(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so external_attr carries the mode
            info.external_attr = (0o100644 if not files[arcname].stat().st_mode & 0o111 else 0o100755) << 16
            zf.writestr(info, files[arcname].read_bytes(), compresslevel=9)
    return buf.getvalue()


def code_sha256(data: bytes) -> str:
    """Lambda's CodeSha256: base64 of the SHA-256 of the zip."""
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def function_environment(env: dict[str, str]) -> dict[str, str]:
    """The API environment (sdlab.wiring.api_environment) without the variables Lambda reserves."""
    return {k: v for k, v in sorted(env.items()) if not k.startswith(_RESERVED_ENV_PREFIX)}


def ensure_log_group(logs: Any, name: str, tags: dict[str, str], retention_days: int = 14) -> None:
    """The function's log group, created up front so it is tagged, expires old logs and is torn down with the stack."""
    try:
        logs.create_log_group(logGroupName=name, tags=tags)
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceAlreadyExistsException":
            raise ProvisionError(f"log group {name}: {err}") from err
    logs.put_retention_policy(logGroupName=name, retentionInDays=retention_days)


def ensure_function(lam: Any, name: str, *, role_arn: str, code: bytes, environment: dict[str, str], tags: dict[str, str],
                    timeout_seconds: int = 15, memory_mb: int = 512, role_wait_seconds: float = 90.0,
                    handler: str = HANDLER, description: str = "sdlab API: POST/GET/DELETE /v1/tasks") -> str:
    """Create or converge a function of the package (code only when its hash changed); returns the function ARN."""
    config = {"Role": role_arn, "Handler": handler, "Runtime": LAMBDA_RUNTIME, "Timeout": timeout_seconds,
              "MemorySize": memory_mb, "Environment": {"Variables": function_environment(environment)},
              "Description": description}
    try:
        current = lam.get_function(FunctionName=name)["Configuration"]
    except ClientError as err:
        if err.response["Error"]["Code"] != "ResourceNotFoundException":
            raise ProvisionError(f"function {name}: {err}") from err
        return _create(lam, name, config, code, tags, role_wait_seconds)
    if current.get("CodeSha256") != code_sha256(code):
        lam.update_function_code(FunctionName=name, ZipFile=code)
        _wait_updated(lam, name)
    lam.update_function_configuration(FunctionName=name, **config)
    _wait_updated(lam, name)
    lam.tag_resource(Resource=current["FunctionArn"], Tags=tags)
    return str(current["FunctionArn"])


def _create(lam: Any, name: str, config: dict[str, Any], code: bytes, tags: dict[str, str], role_wait_seconds: float) -> str:
    deadline = time.monotonic() + role_wait_seconds
    while True:
        try:
            arn = lam.create_function(FunctionName=name, Code={"ZipFile": code}, Architectures=["x86_64"], Publish=False,
                                      Tags=tags, **config)["FunctionArn"]
            break
        except ClientError as err:
            # A role created seconds ago is not assumable yet (IAM is eventually consistent): wait and retry.
            retry = err.response["Error"]["Code"] == "InvalidParameterValueException" and "assume" in str(err)
            if not retry or time.monotonic() > deadline:
                raise ProvisionError(f"function {name}: {err}") from err
            time.sleep(3)
    log.info("created function %s", name)
    _wait_updated(lam, name)
    return str(arn)


def _wait_updated(lam: Any, name: str) -> None:
    lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 90})


def current_environment(lam: Any, name: str) -> dict[str, str]:
    """The environment of an existing function ({} when there is none), e.g. to keep a generated secret."""
    try:
        config = lam.get_function_configuration(FunctionName=name)
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceNotFoundException":
            return {}
        raise
    return dict((config.get("Environment") or {}).get("Variables") or {})


def ensure_queue_trigger(lam: Any, function_name: str, queue_arn: str, *, batch_size: int) -> str:
    """The SQS event source mapping of a function, with partial batch responses; returns its UUID."""
    settings = {"BatchSize": batch_size, "FunctionResponseTypes": ["ReportBatchItemFailures"], "Enabled": True}
    found = lam.list_event_source_mappings(FunctionName=function_name, EventSourceArn=queue_arn)["EventSourceMappings"]
    if found:
        uuid = str(found[0]["UUID"])
        lam.update_event_source_mapping(UUID=uuid, FunctionName=function_name, **settings)
        return uuid
    return str(lam.create_event_source_mapping(EventSourceArn=queue_arn, FunctionName=function_name, **settings)["UUID"])


def delete_queue_triggers(lam: Any, function_name: str) -> int:
    """Remove the function's event source mappings; returns how many there were."""
    try:
        found = lam.list_event_source_mappings(FunctionName=function_name)["EventSourceMappings"]
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceNotFoundException":
            return 0
        raise
    for mapping in found:
        lam.delete_event_source_mapping(UUID=mapping["UUID"])
    return len(found)


def delete_function(lam: Any, name: str) -> bool:
    try:
        lam.delete_function(FunctionName=name)
        return True
    except ClientError as err:
        if err.response["Error"]["Code"] == "ResourceNotFoundException":
            return False
        raise
