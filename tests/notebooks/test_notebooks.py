"""The workshop course: every numbered notebook is committed clean and runs top to bottom under papermill.

The notebooks share one local stack, started here from `sdlab.yaml` with quick queue settings (a short visibility
timeout, so the kill -9 of notebook 12 is redelivered in seconds); each notebook finds it through its `home`
parameter, as participants' notebooks find the stack `make lab` started. They run in course order; 14 stops the
stack and audits the teardown. Executed copies and an HTML rendering of each are kept under outputs/notebooks/.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUT = ROOT / "outputs" / "notebooks"
# small parameters per notebook (all notebooks also get `home` and `config`)
SMALL = {
    "02_generate_first_images": {"size": 64, "steps": 6, "batch": 2},
    "03_follow_one_task": {"steps": 4},
    "04_use_the_api": {"steps": 4},
    "05_compare_runtimes": {"steps": 4, "burst": 3},
    "07_tune_keda_thresholds": {"queue_lengths": [1, 4, 16], "cooldowns": [0, 600]},
    "08_choose_instances_and_spot": {"instance_types": ["g5.xlarge", "p5.4xlarge"]},
    "09_autoscale_locally": {"tasks": 4},  # still two pods (queue_length 2)
    "10_benchmark_latency": {"tasks": 4, "compare_tasks": 1},
    "12_break_things": {"slow_size": 192, "slow_steps": 30},
    "13_deploy_to_aws": {"with_cluster": False},  # the cluster files are tested in tests/deploy
}
DURATIONS: dict[str, float] = {}


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def test_notebooks_form_a_course():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(NOTEBOOKS) >= 12 and numbers == [f"{i:02d}" for i in range(1, len(NOTEBOOKS) + 1)], numbers


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    """The .ipynb is the one source: no outputs, the course's opening, a parameters cell, closing asserts."""
    nb = json.loads(path.read_text())
    assert set(nb["metadata"]) <= {"kernelspec", "language_info"}, "no widget state or run metadata: `make notebooks-clean`"
    assert all(set(c.get("metadata", {})) <= {"tags"} for c in nb["cells"]), "cell metadata besides tags: make notebooks-clean"
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not [c for c in code if c.get("outputs") or c.get("execution_count")], "strip outputs before committing"
    opening = "".join(cells[0]["source"])
    for part in ("**Goal:**", "**Prerequisites:**", "**Time:**", "**AWS cost:**"):
        assert cells[0]["cell_type"] == "markdown" and part in opening, f"the first cell says {part}"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and code[0] is tagged[0], "the first code cell, and only it, is tagged 'parameters'"
    assert 'target = "local"' in "".join(tagged[0]["source"])
    closing = ["".join(c["source"]).splitlines() for c in code[-3:]]
    assert any(line.startswith("assert ") for lines in closing for line in lines), "it ends by asserting what it achieved"
    assert "!pip" not in "".join("".join(c["source"]) for c in code)


@pytest.fixture(scope="module")
def course_stack(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[dict]:
    """One local stack for the whole course, from sdlab.yaml with quick queues."""
    from sdlab.config import load_config
    from sdlab.local import stack as local_stack

    # a text edit, so the copy reads like the original (notebook 07 writes its choice back into it, comments kept)
    text = (ROOT / "sdlab.yaml").read_text()
    quick, count = re.subn(r"visibility_timeout_seconds: \d+", "visibility_timeout_seconds: 10, receive_wait_seconds: 1", text)
    assert count == len(yaml.safe_load(text)["runtimes"]), "every runtime of sdlab.yaml names its visibility timeout"
    folder = tmp_path_factory.mktemp("course")
    config = folder / "sdlab.yaml"
    config.write_text(quick)
    home = folder / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "models").symlink_to(model_cache)
    started = time.monotonic()
    local_stack.up(load_config(config), home)
    DURATIONS["(stack up)"] = time.monotonic() - started
    try:
        yield {"home": str(home), "config": str(config)}
    finally:
        local_stack.down(home)  # 14 has stopped it already when the course ran through
        figures = {**{k: round(v, 1) for k, v in DURATIONS.items()}, "total": round(sum(DURATIONS.values()), 1)}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "durations.json").write_text(json.dumps(figures, indent=1))  # a figure to read, not a timed assertion
        print("\nnotebook seconds:", json.dumps(figures))


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, course_stack):
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    from tests.notebooks.kernels import SlicedPollKernelManager

    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / path.name
    started = time.monotonic()
    try:
        papermill.execute_notebook(
            str(path), str(out), cwd=str(path.parent), kernel_name="python3", progress_bar=False,
            execution_timeout=420,  # a cell that never answers fails, naming itself, before pytest's own timeout
            kernel_manager_class=SlicedPollKernelManager,  # a missed socket wake-up costs a second, not the timeout
            parameters={**course_stack, **SMALL.get(path.stem, {})},
        )
    finally:
        DURATIONS[path.stem] = time.monotonic() - started
        if out.exists():  # the evidence first, failed or not
            html, _ = HTMLExporter().from_notebook_node(nbformat.read(out, as_version=4))
            out.with_suffix(".html").write_text(html)
    executed = nbformat.read(out, as_version=4)
    kinds = {kind for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs for kind in o.get("data", {})}
    if path.stem in ("02_generate_first_images", "07_tune_keda_thresholds", "08_choose_instances_and_spot"):
        assert "image/png" in kinds, "images and plots are stored as PNG outputs"
