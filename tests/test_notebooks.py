"""The notebooks as committed: the numbered path, clean, time-limited, and
runnable where the README's first command leaves a learner (no PyTorch).

nbmake executes every notebook (pytest's testpaths include notebooks/); these
tests check what nbmake does not.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pg_llm_lab.notebook import INSTALL_HINT

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATH = ["00_setup", "01_tensors_in_sql", "02_gpt2_forward", "03_autograd_tape", "04_training",
        "05_tokenizer", "06_generation", "07_gradients_and_inspection", "08_checkpoints_and_hf"]
# Each notebook's own limit (nbmake reads metadata.execution.timeout): seconds per cell.
MAX_TIMEOUT = 300
# What `pip install -e .` does not bring: the notebooks must run without them.
OPTIONAL = ["torch", "transformers", "tokenizers", "tiktoken"]


def load(name: str) -> dict:
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def test_the_numbered_path_is_complete():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == PATH


@pytest.mark.parametrize("name", PATH)
def test_committed_notebooks_carry_no_outputs(name):
    for i, cell in enumerate(load(name)["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], (f"{name} cell {i} has outputs: clear them before committing "
                                           "(jupyter nbconvert --clear-output --inplace notebooks/*.ipynb)")
            assert cell["execution_count"] is None, f"{name} cell {i} has an execution count"


@pytest.mark.parametrize("name", PATH)
def test_notebooks_run_under_a_time_limit(name):
    timeout = load(name)["metadata"].get("execution", {}).get("timeout")
    assert isinstance(timeout, int) and 0 < timeout <= MAX_TIMEOUT, f"{name}: metadata.execution.timeout {timeout!r}"


# A kernel in which the optional packages are not importable, as after
# `pip install -e .`: a sitecustomize on PYTHONPATH puts a finder first on
# sys.meta_path that refuses them (importlib.util.find_spec raises too).
HIDE_OPTIONAL = textwrap.dedent("""
    import sys

    HIDDEN = {hidden!r}

    class Hide:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Hide())
""")

RUN_NOTEBOOK = textwrap.dedent("""
    import sys
    import nbclient, nbformat
    nb = nbformat.read(sys.argv[1], as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": sys.argv[2]}}).execute()
    nbformat.write(nb, sys.argv[3])
""")


def outputs_text(nb: dict) -> str:
    return "\n".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell["outputs"])


# The notebooks that compare with an optional package (the others import none).
COMPARING = ["02_gpt2_forward", "03_autograd_tape", "05_tokenizer", "06_generation", "08_checkpoints_and_hf"]


@pytest.mark.parametrize("name", COMPARING)
def test_notebook_runs_without_pytorch(name, db_url, tmp_path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(HIDE_OPTIONAL.format(hidden=OPTIONAL))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert "No module named 'torch'" in probe.stderr      # the shim works

    executed = tmp_path / f"{name}.ipynb"
    run = subprocess.run([sys.executable, "-c", RUN_NOTEBOOK, str(NOTEBOOKS / f"{name}.ipynb"),
                          str(NOTEBOOKS), str(executed)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    text = outputs_text(json.loads(executed.read_text()))
    assert " not installed: " in text and "To see it: pip install" in text
    if name != "05_tokenizer":                             # (05 compares with tiktoken only)
        assert INSTALL_HINT in text
    assert "pg_llm - transformers" not in text and "pg_llm - torch" not in text   # skipped, not faked


def test_no_notebook_imports_an_optional_package_unguarded():
    """Every import of torch, transformers, tokenizers or tiktoken sits under an optional() check."""
    for name in PATH:
        for i, cell in enumerate(load(name)["cells"]):
            lines = "".join(cell["source"]).splitlines()
            for line in lines:
                words = line.split()
                if words[:1] in (["import"], ["from"]) and words[1].split(".")[0] in OPTIONAL:
                    assert line.startswith((" ", "\t")), f"{name} cell {i}: {line!r} runs without optional()"
