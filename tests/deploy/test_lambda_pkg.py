"""The API function's package: byte-identical builds, the light core only, importable on its own; ensure_function."""

from __future__ import annotations

import io
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from sdlab.deploy import lambda_pkg
from sdlab.errors import ProvisionError


@pytest.fixture(scope="module")
def vendored_builds(tmp_path_factory) -> tuple[bytes, bytes]:
    """Two builds, each vendoring the pinned dependencies with its own pip run (PyPI reachable), else without."""
    try:
        return tuple(lambda_pkg.build_zip(vendor=True, cache_dir=tmp_path_factory.mktemp(f"cache{i}")) for i in (1, 2))
    except ProvisionError as err:  # no package index here: the reproducibility of our own part is still checked
        pytest.skip(f"cannot vendor dependencies ({err}); run with PyPI access")


def test_two_builds_are_byte_identical(vendored_builds):
    first, second = vendored_builds
    assert first == second
    assert lambda_pkg.build_zip(vendor=False) == lambda_pkg.build_zip(vendor=False)


def test_package_holds_the_light_core_and_its_pure_dependencies(vendored_builds):
    zf = zipfile.ZipFile(io.BytesIO(vendored_builds[0]))
    names = zf.namelist()
    assert names == sorted(names)
    assert "sdlab/api/handlers.py" in names and "sdlab/taskstore.py" in names
    for excluded in lambda_pkg.EXCLUDED_PACKAGES:
        assert not [n for n in names if n.startswith(f"sdlab/{excluded}/")], f"sdlab/{excluded} must not ship"
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]
    assert any(n.startswith("pydantic/") for n in names) and any(n.startswith("yaml/") for n in names)
    assert any(n.startswith("httpx/") for n in names), "the callback dispatcher's HTTP client"
    assert any(n.startswith("pydantic_core/_pydantic_core.cpython-312-x86_64-linux-gnu") for n in names), "Lambda's platform"
    assert not [n for n in names if n.startswith(("boto3/", "botocore/"))], "boto3 comes with Lambda's runtime"
    assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_handler_imports_from_the_package_alone(tmp_path):
    zipfile.ZipFile(io.BytesIO(lambda_pkg.build_zip(vendor=False))).extractall(tmp_path)
    site = sysconfig.get_paths()["purelib"]  # boto3/pydantic of this interpreter, as Lambda's runtime + layer give them
    code = (f"import sys; sys.path[:0] = [{str(tmp_path)!r}, {site!r}]; import sdlab.api.handlers as h; "
            f"assert h.__file__.startswith({str(tmp_path)!r}), h.__file__; assert callable(h.handler); "
            "import sdlab.api.callbacks as c; assert callable(c.handler); "
            "assert 'torch' not in sys.modules and 'starlette' not in sys.modules")
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True)  # -S: no editable install
    assert done.returncode == 0, done.stderr


def test_function_environment_drops_the_variables_lambda_reserves():
    env = lambda_pkg.function_environment({"AWS_DEFAULT_REGION": "x", "SDLAB_TASK_TABLE": "t", "AWS_REGION": "y"})
    assert env == {"SDLAB_TASK_TABLE": "t"}


@pytest.mark.integration
def test_ensure_function_converges_and_updates_code_only_when_it_changed(aws, test_settings, names):
    from sdlab.aws import client
    from sdlab.deploy.iam import Arns, ensure_role, role_specs

    role = next(s for s in role_specs(test_settings, names, Arns("123456789012", aws.region)) if s.principal == "lambda")
    role_arn = ensure_role(client("iam", aws), role)
    lam = client("lambda", aws)
    code = lambda_pkg.build_zip(vendor=False)
    env = {"SDLAB_TASK_TABLE": "t", "AWS_DEFAULT_REGION": aws.region}
    arn = lambda_pkg.ensure_function(lam, names.function, role_arn=role_arn, code=code, environment=env, tags=names.tags)
    assert lambda_pkg.ensure_function(lam, names.function, role_arn=role_arn, code=code, environment=env,
                                      tags=names.tags) == arn
    config = lam.get_function(FunctionName=names.function)["Configuration"]
    assert config["CodeSha256"] == lambda_pkg.code_sha256(code)
    assert config["Handler"] == "sdlab.api.handlers.handler" and config["Runtime"] == "python3.12"
    assert config["Environment"]["Variables"] == {"SDLAB_TASK_TABLE": "t"}
    changed = code + b""  # a different package (an extra file) must be uploaded
    buf = io.BytesIO(changed)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("sdlab/extra.py", "X = 1\n")
    lambda_pkg.ensure_function(lam, names.function, role_arn=role_arn, code=buf.getvalue(), environment=env, tags=names.tags)
    assert lam.get_function(FunctionName=names.function)["Configuration"]["CodeSha256"] == lambda_pkg.code_sha256(buf.getvalue())
    assert lambda_pkg.delete_function(lam, names.function) and not lambda_pkg.delete_function(lam, names.function)
