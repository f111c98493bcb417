"""`pg-llm-lab lab`: its command lines, the extras it offers, and a real start and stop."""
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from lab_process import running_lab
from pg_llm_lab import lab, server

REPO = Path(__file__).resolve().parent.parent


def test_lab_extra_is_pyprojects():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["lab"] == list(lab.LAB_EXTRAS.values())
    torch_pin = [r for r in extras["test"] if r.startswith("torch")]
    assert torch_pin == ["torch==2.13.0"] and "torch==2.13.0" in extras["lab"]


def test_notebooks_folder():
    assert lab.notebooks_dir() == REPO / "notebooks"
    assert (lab.notebooks_dir() / "08_training_on_text.ipynb").exists()
    with pytest.raises(FileNotFoundError, match="no such folder: .*/nowhere"):
        lab.notebooks_dir(REPO / "nowhere")


def test_jupyter_command_as_root_and_not():
    nb = REPO / "notebooks"
    as_root = lab.jupyter_command(nb, 8899, True, ["--ServerApp.ip=0.0.0.0"], euid=0)
    assert as_root[:3] == [sys.executable, "-m", "jupyterlab"]
    assert f"--ServerApp.root_dir={nb}" in as_root
    assert "--ServerApp.port=8899" in as_root and "--ServerApp.port_retries=0" in as_root
    assert as_root.count("--allow-root") == 1 and "--no-browser" in as_root
    assert as_root[-1] == "--ServerApp.ip=0.0.0.0"
    as_user = lab.jupyter_command(nb, None, False, [], euid=1000)
    assert "--allow-root" not in as_user and "--no-browser" not in as_user
    assert not any(arg.startswith("--ServerApp.port") for arg in as_user)
    given = lab.jupyter_command(nb, None, False, ["--allow-root"], euid=0)
    assert given.count("--allow-root") == 1


def test_install_command_takes_torch_from_the_cpu_index():
    command = lab.install_command(["torch", "transformers"])
    assert command[:4] == [sys.executable, "-m", "pip", "install"]
    index = command.index("--extra-index-url")
    assert command[index + 1] == "https://download.pytorch.org/whl/cpu"
    assert command[-2:] == ["torch==2.13.0", "transformers"]
    assert "--extra-index-url" not in lab.install_command(["transformers"])
    assert lab.install_command(["transformers"])[-1] == "transformers"


def missing_torch(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    ran = []
    monkeypatch.setattr(lab.subprocess, "run", lambda command, **kw: ran.append(command))
    return ran


def test_missing_extras_are_named_not_installed(monkeypatch, capsys):
    ran = missing_torch(monkeypatch)
    assert lab.missing_extras() == ["torch"]
    lab.offer_extras(install=False)
    err = capsys.readouterr().err
    assert ran == []
    assert "torch is not installed" in err and "PyTorch need it." in err and "--install-extras" in err
    assert "pip install --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in err


def test_install_extras_runs_pip(monkeypatch, capsys):
    ran = missing_torch(monkeypatch)
    lab.offer_extras(install=True)
    assert ran == [lab.install_command(["torch"])]
    assert "installing torch" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.skipif(bool(server.external_url()), reason="$DATABASE_URL is set: lab starts no server of its own")
@pytest.mark.parametrize("already_running", [False, True], ids=["lab-starts-server", "server-already-up"])
def test_lab_serves_the_notebooks_and_stops_what_it_started(db_url, already_running):
    root = Path(tempfile.mkdtemp(prefix="pg_llm_lab_lab_"))  # (see test_browser.lab)
    data = root / "pgdata"
    if already_running:
        server.start(data)
    try:
        with running_lab(root) as running:
            names = {item["name"] for item in running.api("contents")["content"]}
            assert {"00_setup.ipynb", "06_the_gpt2_tape.ipynb"} <= names
            assert server.status(data)["running"]
            expected = "was already running" if already_running else "started by lab: stopped when lab exits"
            assert expected in running.log_text()
        assert running.proc.returncode == 0, running.log_text()[-3000:]
        if os.geteuid() == 0:
            assert "Running as root is not recommended" not in running.log_text()
        assert server.status(data)["running"] == already_running
    finally:
        server.stop(data)
        shutil.rmtree(root, ignore_errors=True)
