"""Every numbered notebook runs top to bottom under papermill (local target); committed notebooks carry no outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_notebooks_exist():
    assert NOTEBOOKS, "no numbered notebooks in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not [c for c in code if c.get("outputs") or c.get("execution_count")], "strip outputs before committing"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert 'target = "local"' in "".join(tagged[0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown"


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, model_cache):
    import papermill

    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    out = tmp_path / path.name
    try:
        papermill.execute_notebook(
            str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False,
            parameters={"home": str(home), "config": str(ROOT / "sdlab.yaml")},
        )
    finally:
        from sdlab.local.stack import down

        down(home)  # a failed notebook must not leave its stack running
