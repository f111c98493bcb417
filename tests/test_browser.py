"""JupyterLab in a real browser: `pg-llm-lab lab`, headless Chromium, notebooks run through the UI:
08's `%%sql CALL llm_train` cell with its live loss, and 06's tape stepper over a GPT-2's tape.

Needs Debian's chromium (/usr/bin/chromium) and the `playwright` package (its
driver only: no `playwright install`, no downloaded browser).  `.ci/browser`
installs both and runs `pytest -m browser`.

The notebooks are copied to a temporary folder first: JupyterLab autosaves,
and the committed notebooks must stay without outputs.  The lab runs with
$PG_LLM_LAB_QUICK=1: notebook 08 trains for a few steps only.
"""
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from unittest import mock

import nbformat
import pytest

from lab_process import running_lab

pytestmark = [pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
IMAGES = REPO / "docs" / "images"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab renders error outputs and stderr streams alike; an error shows one of these
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
ERROR = r"Traceback|^\w*(Error|Exception)\b"  # (warnings read "file.py:12: UserWarning: ...")
RUN_TIMEOUT_MS = 300_000  # the whole notebook, run through the UI (08 quick: its tokenizer, data, 30 steps)


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A headless Debian Chromium with a fresh profile, driven by Playwright."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (or run .ci/browser)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed: pip install playwright (or run .ci/browser)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(60_000)
        yield context
        context.close()


@pytest.fixture(scope="module")
def lab(db_url):
    """`pg-llm-lab lab` on a copy of the notebooks, its own data directory.

    Not under pytest's tmp_path: concurrent pytest runs of the same user
    prune each other's old /tmp/pytest-of-<user> folders.
    """
    root = Path(tempfile.mkdtemp(prefix="pg_llm_lab_browser_"))
    # Every cell in the page: JupyterLab otherwise leaves the cells out of view out of it
    tracker = root / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    notebooks = root / "notebooks"
    shutil.copytree(REPO / "notebooks", notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"),
                    copy_function=shutil.copy)  # fresh times: the file browser shows "seconds ago"
    try:
        with mock.patch.dict(os.environ, {"PG_LLM_LAB_QUICK": "1"}), \
                running_lab(root, "--notebooks", str(notebooks)) as running:
            running.notebooks = notebooks
            yield running
        assert running.proc.returncode == 0, running.log_text()[-3000:]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def open_notebook(context, lab, name, timeout: float = 90):
    """A page with notebook `name` open and its kernel started and idle.

    JupyterLab starts the notebook's kernel (python3) by itself; on a busy
    machine it may ask "Select Kernel" instead, and we answer as a user
    would: Select (the preferred kernel).
    """
    page = context.new_page()
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")  # reset: not the last layout
    page.wait_for_selector(".jp-Notebook .jp-CodeCell")
    deadline = time.monotonic() + timeout
    while not any(s["path"] == name and s["kernel"]["execution_state"] == "idle" for s in lab.api("sessions")):
        select_kernel = page.locator(".jp-Dialog", has_text="Select Kernel")
        if select_kernel.count():
            select_kernel.locator(".jp-mod-accept").click()
        assert time.monotonic() < deadline, f"no idle kernel for {name} after {timeout} s: {lab.api('sessions')}"
        time.sleep(0.5)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    return page


def run_all_cells(page, code_cells: int) -> None:
    """Run > Run All Cells, through the menu; wait until the kernel is idle again with
    every code cell run, or with an error shown (JupyterLab stops at the first error)."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    page.wait_for_function(
        """([n, stderr, error]) => {
            const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
            const indicator = document.querySelector('.jp-Notebook-ExecutionIndicator');
            if (!indicator || indicator.dataset.status !== 'idle' || prompts.some(p => p.textContent.includes('*')))
                return false;
            const failed = [...document.querySelectorAll(stderr)].some(o => new RegExp(error, 'm').test(o.textContent));
            return failed || (prompts.length === n && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)));
        }""", arg=[code_cells, STDERR, ERROR], timeout=RUN_TIMEOUT_MS, polling=500)


def page_errors(page) -> list[str]:
    """The outputs that show an error."""
    return [t for t in page.locator(STDERR).all_text_contents() if re.search(ERROR, t, re.M)]


def save(page, lab, name):
    """Ctrl+S, then the saved file: what JupyterLab holds, for a second look at the outputs."""
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=30_000)
    return nbformat.read(lab.notebooks / name, as_version=4)


def run_notebook(context, lab, name):
    """Open `name`, run all its cells through the UI; the page (a screenshot of it on failure)."""
    code_cells = sum(c.cell_type == "code" for c in nbformat.read(lab.notebooks / name, as_version=4).cells)
    page = open_notebook(context, lab, name)
    started = time.monotonic()
    try:
        run_all_cells(page, code_cells)
    except Exception:
        shot = lab.notebooks.parent.parent / f"{lab.notebooks.parent.name}_{name}_failed.png"
        page.screenshot(path=shot, full_page=True)
        print(f"\nscreenshot of the failure: {shot}\n{lab.log_text()[-3000:]}")
        raise
    print(f"\n{name}: Run All Cells ({code_cells} code cells) done in {time.monotonic() - started:.0f} s")
    return page


def test_training_notebook_runs_in_jupyterlab(browser_context, lab):
    """08: the %%sql cell that CALLs llm_train, the watcher's live loss beside it, the loss plot after."""
    name = "08_training_on_text.ipynb"
    page = run_notebook(browser_context, lab, name)

    assert page_errors(page) == []
    assert page.locator(".jp-CodeCell", has_text="CALL llm_train(").count() == 1
    watcher = page.locator(".jp-OutputArea-output .widget-vbox", has_text="the run is over").first
    assert watcher.locator("img").evaluate("img => img.naturalWidth > 100 && img.naturalHeight > 100")
    plots = page.locator(".jp-OutputArea-output > img")
    assert plots.count() >= 1, "no image output: the loss plot did not appear"
    assert plots.first.evaluate("img => img.naturalWidth > 100 && img.naturalHeight > 100")

    saved = save(page, lab, name)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), [c.source[:60] for c in code if not c.execution_count]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)

    training = page.locator(".jp-CodeCell", has_text="CALL llm_train(")
    training.evaluate("cell => cell.scrollIntoView({block: 'end'})")   # the watcher above its %%sql cell
    IMAGES.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=IMAGES / "jupyterlab_training.png")
    page.close()


def test_tape_stepper_widget(browser_context, lab):
    """06's tape stepper over a GPT-2's full tape, live: moving its slider asks the kernel for another op."""
    page = run_notebook(browser_context, lab, "06_the_gpt2_tape.ipynb")
    assert page_errors(page) == []
    cell = page.locator(".jp-CodeCell", has_text="TapeStepper(").filter(has=page.locator(".widget-vbox")).first
    stepper = cell.locator(".jp-OutputArea-output .widget-vbox").first
    stepper.scroll_into_view_if_needed()
    panel = stepper.locator("pre").first
    first = panel.inner_text()
    assert re.search(r"^op 1/", first, re.M), first[:300]
    handle = stepper.locator(".noUi-handle").first  # ipywidgets 8's slider
    handle.focus()
    handle.press("ArrowRight")
    page.wait_for_function(  # the panel's <pre> is replaced on each update: ask its container
        "box => /^op 2\\//m.test(box.querySelector('pre').innerText)", arg=stepper.element_handle())
    assert panel.inner_text() != first and "grad" in panel.inner_text()
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]')
    page.wait_for_timeout(1000)  # the rest of the panel (pictures) follows the text
    IMAGES.mkdir(parents=True, exist_ok=True)
    cell.screenshot(path=IMAGES / "jupyterlab_tape_stepper.png")
    page.close()
