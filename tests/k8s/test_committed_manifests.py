"""manifests/ holds what `sdlab k8s render --out manifests` makes from sdlab.yaml; it must not drift."""

from pathlib import Path

from sdlab.config import load_config
from sdlab.k8s.cli import PLACEHOLDER_ACCOUNT, context_for
from sdlab.k8s.files import write_manifests
from sdlab.k8s.render import render_stack

ROOT = Path(__file__).resolve().parents[2]


def test_committed_manifests_match_the_config(tmp_path):
    settings = load_config(ROOT / "sdlab.yaml")
    ctx = context_for(settings, account_id=PLACEHOLDER_ACCOUNT,
                      registry=f"{PLACEHOLDER_ACCOUNT}.dkr.ecr.{settings.stack.region}.amazonaws.com",
                      cluster=settings.stack.name)
    write_manifests(render_stack(settings, ctx), tmp_path)
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.yaml")}
    committed = {p.relative_to(ROOT / "manifests"): p.read_text() for p in (ROOT / "manifests").rglob("*.yaml")}
    assert fresh.keys() == committed.keys(), "run `sdlab k8s render --out manifests` and commit"
    stale = [str(k) for k in fresh if fresh[k] != committed[k]]
    assert not stale, f"stale manifests {stale}: run `sdlab k8s render --out manifests` and commit"
