"""A real browser in JupyterLab: open the first-images notebook, run it, press Generate, see a new image arrive.

Debian's chromium (installed here with apt-get when missing; Playwright's own browser download cannot work offline)
is driven by Playwright's Python package. JupyterLab runs on 127.0.0.1 over a copy of the notebook (so the committed
one never gets outputs), its kernels finding the test stack through SDLAB_HOME, as `make lab` arranges for
participants. The screenshot is saved under outputs/browser/.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "02_generate_first_images.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "outputs" / "browser"
CELLS_TIMEOUT_MS = int(os.environ.get("SDLAB_BROWSER_TIMEOUT_MS", "240000"))
# JupyterLab settings for this test only: every cell in the DOM (no windowing), no news prompt
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false", "checkForUpdates": false}',
}


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get if it is not there yet."""
    if not Path(CHROMIUM).exists():
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed (run it as root): {done.stderr[-1000:]}")
    return CHROMIUM


@pytest.fixture()
def lab(stack, tmp_path: Path) -> Iterator[str]:
    """JupyterLab on a free loopback port over a copy of notebook 02; yields the notebook's URL (with its token)."""
    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    settings = tmp_path / "settings"
    for name, text in SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    port, token = free_port(), secrets.token_hex(16)
    args = ["-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root}", f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"] + (["--allow-root"] if os.geteuid() == 0 else [])
    env = {"SDLAB_HOME": stack["home"], "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc, popen = spawn("jupyterlab", args, env, tmp_path / "lab.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(http_ok(f"{base}/api/status?token={token}"), popen, proc, 120)
        yield f"{base}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        stop([proc])  # its process group: the kernels it started go with it


def _cells_done(page) -> None:
    """Wait until every code cell has run (a number in its prompt, none busy)."""
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent);
            return prompts.length > 0 && prompts.every(t => /\\[\\d+\\]/.test(t));
        }""", timeout=CELLS_TIMEOUT_MS)


def test_lab_runs_first_images_notebook_and_generate_adds_an_image(lab):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(lab)
            page.locator(".jp-Notebook").wait_for(timeout=120_000)
            select = page.locator(".jp-Dialog").get_by_role("button", name="Select", exact=True)
            try:  # JupyterLab may ask which kernel to start: the notebook's own (python3) is preselected
                select.wait_for(timeout=15_000)
                select.click()
            except PlaywrightTimeout:
                pass
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_text("Run All Cells", exact=True).click()
            _cells_done(page)
            generate = page.locator("button.widget-button", has_text="Generate")
            generate.wait_for(timeout=30_000)
            in_form = ".jp-Notebook .widget-vbox img"  # images the form's output area shows
            before = page.locator(in_form).count()
            assert before >= 1, "the run from the notebook showed its images in the form"
            generate.click()
            page.wait_for_function(f"() => document.querySelectorAll('{in_form}').length > {before}", timeout=180_000)
            page.locator(in_form).last.evaluate("e => e.scrollIntoView({block: 'end'})")
            page.screenshot(path=str(SHOTS / "generate.png"), full_page=False)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            assert not [e for e in errors if "Error" in e], errors
        except BaseException:
            page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)  # the evidence first
            (SHOTS / "failure.html").write_text(page.content())
            raise
        finally:
            browser.close()


def test_chromium_is_debians_not_a_download():
    assert ensure_chromium() == CHROMIUM and sys.platform.startswith("linux")
