"""`pg-llm-lab lab`: the database server and JupyterLab on the notebooks.

    pg-llm-lab lab [--data DIR] [--port N] [--no-browser] [--notebooks DIR]
                   [--install-extras] [JUPYTER ARGS]

1. The server: $DATABASE_URL if set, else the embedded one (pg_llm built into
   it first if needed, as every other command does).  The notebooks get its
   URL as $DATABASE_URL, so `pg_llm_lab.connect()` in a kernel lands on it.
2. JupyterLab runs on `notebooks/` of the repository checkout the package is
   installed from (`pip install -e .`), or on `--notebooks DIR`.  As root it
   gets `--allow-root` (JupyterLab refuses to start as root without it).
3. On exit (Ctrl-C, or SIGTERM/SIGHUP, which are passed on to JupyterLab) the
   embedded server is stopped *if this command started it*; one that was
   already running (`pg-llm-lab start`, another lab, a notebook) is left
   running, and a $DATABASE_URL server is never touched.

The notebooks compare pg_llm with PyTorch and `transformers` when those are
installed.  `lab` says how to get them when they are missing (the CPU build
of torch, from PyTorch's CPU wheel index: PyPI's torch pulls gigabytes of
CUDA libraries) and installs them only when asked (`--install-extras`).
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import build, server

# The `lab` extra of pyproject.toml (tests/test_lab.py checks they agree): module -> requirement.
LAB_EXTRAS = {"torch": "torch==2.13.0", "transformers": "transformers"}
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
GRACE_SECONDS = 5  # see _wait()


def notebooks_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The folder JupyterLab opens: `explicit`, else the checkout's notebooks/."""
    path = Path(explicit).expanduser().resolve() if explicit else build.REPO / "notebooks"
    if not path.is_dir():
        if explicit:
            raise FileNotFoundError(f"no such folder: {path}")
        raise FileNotFoundError(
            f"the notebooks are not next to the pg_llm_lab package ({path} is missing): install it "
            "from a checkout of the repository (pip install -e .), or name the folder with --notebooks DIR")
    return path


def missing_extras() -> list[str]:
    """The modules of the `lab` extra that cannot be imported."""
    return [module for module in LAB_EXTRAS if importlib.util.find_spec(module) is None]


def install_command(modules: list[str]) -> list[str]:
    """The pip command that installs `modules` (of LAB_EXTRAS) into this Python, torch's CPU build."""
    command = [sys.executable, "-m", "pip", "install"]
    if "torch" in modules:
        command += ["--extra-index-url", TORCH_CPU_INDEX]
    return command + [LAB_EXTRAS[module] for module in modules]


def jupyter_command(notebooks: Path, port: int | None, no_browser: bool, extra: list[str],
                    euid: int | None = None) -> list[str]:
    """The JupyterLab command line, run by this Python (whose kernel the notebooks get)."""
    command = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={notebooks}"]
    if port is not None:
        # A port asked for is that port or an error, not silently the next free one.
        command += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if no_browser:
        command.append("--no-browser")
    if euid is None:
        euid = os.geteuid() if hasattr(os, "geteuid") else None
    if euid == 0 and "--allow-root" not in extra:
        command.append("--allow-root")
    return command + list(extra)


def offer_extras(install: bool) -> None:
    """Say which comparison packages are missing and how to get them; install them if asked."""
    missing = missing_extras()
    if not missing:
        return
    command = install_command(missing)
    if install:
        print(f"installing {', '.join(missing)} (the notebooks' PyTorch comparisons):\n  {shlex.join(command)}",
              flush=True)
        subprocess.run(command, check=True)
        importlib.invalidate_caches()
        return
    print(f"note: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed: the notebooks' "
          f"comparisons with PyTorch need {'it' if len(missing) == 1 else 'them'}.\n"
          f"  to see them: pg-llm-lab lab --install-extras, or\n  {shlex.join(command)}",
          file=sys.stderr, flush=True)


def run(data=None, port: int | None = None, no_browser: bool = False, notebooks=None,
        install_extras: bool = False, jupyter_args: list[str] | None = None) -> int:
    """Start the server (if needed) and JupyterLab; return JupyterLab's exit code."""
    folder = notebooks_dir(notebooks)
    offer_extras(install_extras)
    external = server.external_url()
    was_running = bool(external) or server.status(data)["running"]
    if not external and not build.is_installed():
        print("building pg_llm (first run, or its sources changed) ...", file=sys.stderr, flush=True)
    from .db import default_url
    url = default_url(data=data)
    ours = not was_running
    print(f"PostgreSQL: {url}\n  " + (
        "$DATABASE_URL: not managed by pg-llm-lab" if external else
        "started by lab: stopped when lab exits" if ours else
        "was already running: left running when lab exits"), flush=True)

    env = dict(os.environ, DATABASE_URL=url)
    proc = subprocess.Popen(jupyter_command(folder, port, no_browser, jupyter_args or []), env=env)
    return _wait(proc, on_exit=(lambda: server.stop(data)) if ours else None)


def _wait(proc: subprocess.Popen, on_exit=None) -> int:
    """Wait for JupyterLab, passing SIGTERM/SIGHUP on; then run `on_exit`.

    Ctrl-C in a terminal reaches JupyterLab too (same process group), which
    asks whether to shut down: we keep waiting for it.  A SIGINT that reached
    only this process (no terminal) is passed on if JupyterLab has not begun
    to stop within a few seconds.
    """
    def forward(signum, frame):
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGHUP)}
    deadline = None  # when to pass a SIGINT on
    try:
        while True:
            try:
                return proc.wait(timeout=None if deadline is None else 0.5)
            except KeyboardInterrupt:
                if deadline is None and not (sys.stdin and sys.stdin.isatty()):
                    deadline = time.monotonic() + GRACE_SECONDS
            except subprocess.TimeoutExpired:
                if time.monotonic() > deadline:
                    proc.send_signal(signal.SIGINT)
                    deadline = None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if on_exit is not None:
            print("stopping PostgreSQL (lab started it) ...", file=sys.stderr, flush=True)
            on_exit()
