"""The cluster layer end to end: files with the real account's ARNs, eksctl + Helm, then the manifests.

Files go to `<home>/aws/<stack>/` (not committed: they carry the account id): `infra/…` as `render-infra` writes
them and `manifests/` as `sdlab k8s render` does, with the deployed queue URLs, topic, table and ECR images. Tools
run where installed (`shutil.which`) and the target is real AWS; otherwise every command is printed, exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sdlab.aws import AwsTarget
from sdlab.config import Settings
from sdlab.deploy import ecr, eks
from sdlab.deploy.infra import render_infra, write_infra
from sdlab.deploy.names import DeployNames
from sdlab.errors import ConfigError

log = logging.getLogger(__name__)


def cluster_dir(home: Path, stack: str) -> Path:
    return home / "aws" / stack


def render_manifests(settings: Settings, account: str, cluster: str) -> list[dict[str, Any]]:
    """The stack's Kubernetes objects with the account's ARNs and ECR images, validated."""
    from sdlab.k8s.cli import context_for
    from sdlab.k8s.render import render_stack
    from sdlab.k8s.validate import validate_all

    ctx = context_for(settings, account_id=account, registry=ecr.registry(account, settings.stack.region), cluster=cluster)
    objects = render_stack(settings, ctx)
    problems = validate_all(objects)
    if problems:
        raise ConfigError(problems, "rendered manifests")
    return objects


def write_cluster_files(settings: Settings, account: str, home: Path, cluster: str | None = None) -> Path:
    """infra/ and manifests/ for this account under `<home>/aws/<stack>/`; returns that folder."""
    from sdlab.k8s.files import write_manifests

    names = DeployNames.of(settings, cluster)
    out = cluster_dir(home, names.stack)
    write_infra(render_infra(settings, account, names.cluster), out)
    write_manifests(render_manifests(settings, account, names.cluster), out / "manifests")
    return out


def _connect(kubeconfig: str | None) -> Any | None:
    from sdlab.k8s.apply import connect

    try:
        return connect(kubeconfig=kubeconfig)
    except Exception as err:  # no kubeconfig, no context: the user applies later
        log.info("no Kubernetes access (%s); printing the apply command", err)
        return None


def deploy_cluster(settings: Settings, target: AwsTarget, account: str, home: Path, *, cluster: str | None = None,
                   kubeconfig: str | None = None, wait_seconds: float = 900.0) -> list[str]:
    """Create the cluster and its controllers, then apply the manifests and wait for rollouts; returns the commands."""
    from sdlab.k8s.apply import apply_objects, wait_for_rollouts

    names = DeployNames.of(settings, cluster)
    folder = write_cluster_files(settings, account, home, cluster)
    run = None if not target.local else False  # never point eksctl/helm at a real account during a rehearsal
    print(f"cluster files in {folder}")
    lines = [f"cd {folder}"] + eks.run_or_print(eks.install_commands(names), run=run, cwd=str(folder))
    apply_line = "kubectl apply --server-side --field-manager sdlab -R -f manifests/"
    dyn = None if target.local else _connect(kubeconfig)
    if dyn is None:
        print("run:", apply_line)
        return [*lines, apply_line]
    objects = render_manifests(settings, account, names.cluster)
    apply_objects(dyn, objects)
    for name, state in wait_for_rollouts(dyn, objects, timeout_seconds=wait_seconds).items():
        print(f"{name}: {state}")
    return lines


def teardown_cluster(settings: Settings, target: AwsTarget, account: str, home: Path, *, cluster: str | None = None,
                     kubeconfig: str | None = None) -> list[str]:
    """Delete the manifests (Karpenter then terminates its GPU nodes), the charts, the cluster."""
    from sdlab.k8s.apply import delete_objects

    names = DeployNames.of(settings, cluster)
    folder = write_cluster_files(settings, account, home, cluster)
    delete_line = "kubectl delete --wait -R -f manifests/"
    dyn = None if target.local else _connect(kubeconfig)
    if dyn is None:
        print("run:", f"cd {folder} &&", delete_line)
    else:
        for ref in delete_objects(dyn, render_manifests(settings, account, names.cluster)):
            print("deleted", ref)
    run = None if not target.local else False
    return [delete_line, *eks.run_or_print(eks.uninstall_commands(names), run=run, cwd=str(folder))]
