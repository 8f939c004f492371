"""`sdlab aws plan | deploy | teardown | render-infra`."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def _target(args: argparse.Namespace, region: str) -> Any:
    from sdlab.aws import AwsTarget

    return AwsTarget.from_env(region=region, endpoint_url=args.endpoint_url)


def _home(args: argparse.Namespace) -> Path:
    from sdlab.local.stack import home_dir

    return home_dir(args.home)


def _cmd_plan(args: argparse.Namespace) -> int:
    from sdlab.config import load_config
    from sdlab.deploy.plan import build_plan, format_plan

    settings = load_config(args.config)
    print(format_plan(build_plan(settings, cluster=not args.no_cluster, cluster_name=args.cluster)))
    return 0


def _write_private(path: Path, text: str) -> Path:
    """A file only its owner can read, created so from the start (no window with wider permissions)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    return path


def _cmd_deploy(args: argparse.Namespace) -> int:
    from sdlab.config import load_config
    from sdlab.deploy import ecr
    from sdlab.deploy.cluster import deploy_cluster
    from sdlab.deploy.stack import deploy_serverless

    settings = load_config(args.config)
    target = _target(args, settings.stack.region)
    home = _home(args)
    deployment = deploy_serverless(settings, target, cluster=args.cluster, vendor=not args.no_vendor,
                                   cache_dir=home / "cache")
    out = home / f"aws-{settings.stack.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(deployment.to_dict(), indent=2, default=str) + "\n")
    key_file = _write_private(home / f"aws-{settings.stack.name}.key", deployment.api.key_value)
    secret_file = _write_private(home / f"aws-{settings.stack.name}.callback-secret", deployment.callback_secret)
    print(f"serverless layer of {settings.stack.name} deployed to {deployment.account}/{deployment.region}")
    print(f"  API   {deployment.api.url}  (key in {key_file})")
    print(f"  callbacks are signed with the secret in {secret_file} (verify with sdlab.callbacks.verify)")
    print(f"  state {out}")
    if args.push_images:
        from sdlab.aws import client

        for line in ecr.push_images(client("ecr", target), deployment.account, deployment.region,
                                    run=False if target.local else None):
            print("run:", line)
    if args.with_cluster:
        deploy_cluster(settings, target, deployment.account, home, cluster=args.cluster, kubeconfig=args.kubeconfig)
    return 0


def _cmd_teardown(args: argparse.Namespace) -> int:
    from sdlab.config import load_config
    from sdlab.deploy.cluster import teardown_cluster
    from sdlab.deploy.stack import account_id
    from sdlab.deploy.teardown import remaining, teardown_stack

    settings = load_config(args.config)
    target = _target(args, settings.stack.region)
    if args.with_cluster:
        teardown_cluster(settings, target, account_id(target), _home(args), cluster=args.cluster, kubeconfig=args.kubeconfig)
    for line in teardown_stack(settings, target, cluster=args.cluster, delete_bucket=not args.keep_bucket):
        print("deleted", line)
    left = remaining(settings, target, cluster=args.cluster)
    if args.keep_bucket:
        left = [x for x in left if not x.startswith("S3 bucket")]
    for line in left:
        print("REMAINS", line)
    print("nothing of the stack remains" if not left else f"{len(left)} resource(s) remain; see above")
    return 0 if not left else 1


def _cmd_render_infra(args: argparse.Namespace) -> int:
    from sdlab.config import load_config
    from sdlab.deploy.infra import PLACEHOLDER_ACCOUNT, render_infra, write_infra

    settings = load_config(args.config)
    paths = write_infra(render_infra(settings, args.account_id or PLACEHOLDER_ACCOUNT, args.cluster), args.out)
    print(f"wrote {len(paths)} file(s) under {Path(args.out) / 'infra'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `aws …` to the `sdlab` command."""
    aws = subparsers.add_parser("aws", help="deploy to AWS (or rehearse against a moto server)")
    sub = aws.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--cluster", default=None, help="EKS cluster name (default: the stack name)")
        return p

    def target_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--endpoint-url", default=None,
                       help="AWS endpoint (a moto server) instead of AWS ($SDLAB_AWS_ENDPOINT_URL)")
        p.add_argument("--with-cluster", action="store_true", help="also the EKS layer (eksctl/helm run when installed)")
        p.add_argument("--kubeconfig", default=None)

    p = common(sub.add_parser("plan", help="what deploy creates, with idle cost per hour (no AWS call)"))
    p.add_argument("--no-cluster", action="store_true", help="serverless layer only")
    p.set_defaults(fn=_cmd_plan)

    d = common(sub.add_parser("deploy", help="create or converge the stack"))
    target_opts(d)
    d.add_argument("--no-vendor", action="store_true", help="Lambda package without pydantic/PyYAML (offline rehearsal)")
    d.add_argument("--push-images", action="store_true", help="build and push the agent and runtime images (docker)")
    d.set_defaults(fn=_cmd_deploy)

    t = common(sub.add_parser("teardown", help="delete everything tagged sdlab:stack=<name>, report what remains"))
    target_opts(t)
    t.add_argument("--keep-bucket", action="store_true", help="keep the bucket (models and outputs)")
    t.set_defaults(fn=_cmd_teardown)

    r = common(sub.add_parser("render-infra", help="write infra/ (eksctl, Helm values, IAM documents) from sdlab.yaml"))
    r.add_argument("--out", default=".", help="repository root to write infra/ under")
    r.add_argument("--account-id", default=None, help="AWS account id in the ARNs (default: a placeholder)")
    r.set_defaults(fn=_cmd_render_infra)

