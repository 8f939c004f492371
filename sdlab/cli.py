"""The `sdlab` command: up, down, status, submit, demo, model build, config, contracts, k8s, sim, tune."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sdlab.errors import SdlabError


def _cmd_up(args: argparse.Namespace) -> int:
    from sdlab.config import load_config
    from sdlab.local import stack

    info = stack.up(load_config(args.config), args.home, autoscale=args.autoscale)
    print(f"stack up in {info['startup_seconds']} s")
    print(f"  API        {info['api_url']}  (key in {stack.home_dir(args.home) / stack.STACK_FILE})")
    print(f"  AWS (moto) {info['aws_endpoint_url']}  bucket {info['bucket']}")
    for name, rt in info["runtimes"].items():
        where = rt.get("runtime_url") or "autoscaled from the queue (KEDA formula)"
        print(f"  runtime    {name:<16} {rt['type']:<9} model {rt['model']:<10} {where}")
    print(f"  logs       {info['logs']}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    from sdlab.local import stack

    stopped = stack.down(args.home)
    print(f"stopped {len(stopped)} process(es)" if stopped else "no stack was running")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from sdlab.local import stack

    rows = stack.status(args.home)
    if not rows:
        print("no stack is running; start one with `sdlab up`")
        return 1
    for r in rows:
        state = "healthy" if r["healthy"] else ("alive" if r["alive"] else "DEAD")
        print(f"{r['name']:<24} pid {r['pid']:<8} {state:<8} {r.get('url') or ''}")
    return 0 if all(r["healthy"] for r in rows) else 1


def _cmd_submit(args: argparse.Namespace) -> int:
    from sdlab.client import Client

    payload = {"steps": args.steps, "width": args.width, "height": args.height, "seed": args.seed}
    if args.negative_prompt:
        payload["negative_prompt"] = args.negative_prompt
    with Client.from_stack(args.home) as client:
        task = client.submit(args.runtime, args.prompt, payload=payload)
        print(json.dumps({"id": task.id, "status_url": task.status_url, "output_location": task.output_location}))
        if not args.wait:
            return 0
        note = client.wait(task.id, timeout=args.timeout)[task.id]
        print(note.model_dump_json())
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for n, data in enumerate(client.image_bytes(note)):
                path = out / f"{task.id}-{n}.png"
                path.write_bytes(data)
                print(path)
        return 0 if note.status.value == "completed" else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from sdlab.client import Client
    from sdlab.demo import format_table, run_demo
    from sdlab.local.stack import read_stack

    stack = read_stack(args.home)
    if stack is None:
        raise SdlabError("no local stack is running; start one with `sdlab up`")
    with Client.from_stack(args.home) as client:
        rows = run_demo(client, stack["runtimes"], Path(args.out), per_runtime=args.per_runtime,
                        size=args.size, steps=args.steps)
    print(format_table(rows))
    print(f"\nimages in {Path(args.out).resolve()}")
    return 0 if all(r.status == "completed" for r in rows) else 1


def _cmd_model_build(args: argparse.Namespace) -> int:
    from sdlab.aws import AwsTarget, client
    from sdlab.config import ModelSettings, load_config
    from sdlab.local.stack import home_dir, read_stack
    from sdlab.models import build_or_locate, upload_model

    model = ModelSettings(name=args.name, source="build", variant=args.variant, seed=args.seed)
    path = build_or_locate(model, Path(args.out) if args.out else home_dir(args.home) / "cache" / "models")
    print(f"built {path}")
    if args.upload:
        settings = load_config(args.config)
        stack = read_stack(args.home)
        target = AwsTarget(stack["region"], stack["aws_endpoint_url"]) if stack else AwsTarget.from_env(settings.stack.region)
        bucket = stack["bucket"] if stack else settings.stack.bucket_name
        n = upload_model(client("s3", target), bucket, settings.stack.model_prefix, model.name, path)
        print(f"uploaded {n} file(s) to s3://{bucket}/{settings.stack.model_prefix}/{model.name}/")
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from sdlab.config import json_schema, load_config

    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    settings = load_config(args.config)
    print(f"{args.config or 'sdlab.yaml'}: valid; stack {settings.stack.name}, runtimes "
          + ", ".join(f"{r.name} ({r.type}, {r.model.name})" for r in settings.runtimes))
    return 0


def _cmd_contracts(args: argparse.Namespace) -> int:
    from sdlab.contracts import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return 0


def _cmd_k8s_render(args: argparse.Namespace) -> int:
    from sdlab.k8s.cli import render_command

    return render_command(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdlab", description="Asynchronous Stable Diffusion on AWS, locally first.")
    p.add_argument("--config", default=None, help="config file (default $SDLAB_CONFIG or ./sdlab.yaml)")
    p.add_argument("--home", default=None, help="state folder of the local stack (default $SDLAB_HOME or ./.sdlab)")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    u = sub.add_parser("up", help="start the local stack")
    u.add_argument("--autoscale", action="store_true",
                   help="scale runtime+agent pods from queue depth with KEDA's formula (from zero) instead of one each")
    u.set_defaults(fn=_cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(fn=_cmd_down)
    sub.add_parser("status", help="show what runs").set_defaults(fn=_cmd_status)

    s = sub.add_parser("submit", help="submit one text-to-image task")
    s.add_argument("--runtime", required=True)
    s.add_argument("--prompt", required=True)
    s.add_argument("--negative-prompt", default=None)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--width", type=int, default=256)
    s.add_argument("--height", type=int, default=256)
    s.add_argument("--seed", type=int, default=-1)
    s.add_argument("--wait", action="store_true", help="wait for the notification")
    s.add_argument("--out", default=None, help="write the images here (with --wait)")
    s.add_argument("--timeout", type=float, default=300.0)
    s.set_defaults(fn=_cmd_submit)

    d = sub.add_parser("demo", help="a few prompts per runtime through the running stack")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--per-runtime", type=int, default=3)
    d.add_argument("--size", type=int, default=128, help="image side; the default model is trained at 128")
    d.add_argument("--steps", type=int, default=20)
    d.set_defaults(fn=_cmd_demo)

    m = sub.add_parser("model", help="models").add_subparsers(dest="action", required=True)
    b = m.add_parser("build", help="build the project's small SD model (and upload it)")
    b.add_argument("--name", default="tiny")
    b.add_argument("--variant", default="tiny")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None)
    b.add_argument("--upload", action="store_true", help="upload under the model prefix of the stack's bucket")
    b.set_defaults(fn=_cmd_model_build)
    from sdlab.shapes.cli import register as register_shapes  # light: argparse only, torch is imported when run

    register_shapes(m)

    c = sub.add_parser("config", help="check the config or print its JSON Schema")
    c.add_argument("action", choices=["check", "schema"])
    c.set_defaults(fn=_cmd_config)
    sub.add_parser("contracts", help="print the JSON Schemas of the wire contracts").set_defaults(fn=_cmd_contracts)

    k = sub.add_parser("k8s", help="Kubernetes manifests").add_subparsers(dest="action", required=True)
    r = k.add_parser("render", help="render one file per object")
    r.add_argument("--out", required=True)
    r.add_argument("--cluster", default=None)
    r.add_argument("--registry", default=None, help="image registry (default: the account's ECR registry)")
    r.add_argument("--account-id", default=None, help="AWS account id used in queue URLs and ARNs")
    r.add_argument("--image", action="append", help="TYPE=URI: image of a runtime type (sdwebui, comfyui, diffusers)")
    r.set_defaults(fn=_cmd_k8s_render)

    from sdlab.bench.cli import register as register_bench  # light: argparse only, torch is imported when run

    register_bench(sub)
    from sdlab.deploy.cli import register as register_aws  # light: argparse only, boto3 is imported when run

    register_aws(sub)
    from sdlab.sim.cli import register as register_sim  # light: argparse only, the engine is imported when run

    register_sim(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "httpcore", "s3transfer"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = args.fn(args)
    except SdlabError as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    raise SystemExit(code)
