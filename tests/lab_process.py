"""`pg-llm-lab lab` as a subprocess, for tests/test_lab.py and tests/test_browser.py.

    with running_lab(tmp_path) as lab:
        requests to lab.url + "/api/status?token=" + lab.token ...

The lab gets a free port, a known token, settings and workspace folders of
its own (no news pop-up, no layout restored from an earlier session), and its
own data directory unless $DATABASE_URL is set.  On exit it is sent SIGTERM
and must be gone, with JupyterLab and every kernel, within a minute.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

TOKEN = "pg-llm-lab-test-token"


@dataclass
class Lab:
    proc: subprocess.Popen
    url: str
    token: str
    data: Path | None
    log: Path
    descendants: list = field(default_factory=list)

    def api(self, path: str):
        with urllib.request.urlopen(f"{self.url}/api/{path}?token={self.token}", timeout=10) as response:
            return json.load(response)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_jupyterlab_env(root: Path) -> dict:
    """Settings and workspaces folders of the test's own: no news or update pop-up."""
    notification = root / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    (root / "workspaces").mkdir(exist_ok=True)
    return {"JUPYTERLAB_SETTINGS_DIR": str(root / "settings"),
            "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces")}


@contextlib.contextmanager
def running_lab(root: Path, *lab_args: str, startup_timeout: float = 180):
    """Start `pg-llm-lab lab --no-browser` (its files under `root`); stop it on exit."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    data = None if os.environ.get("DATABASE_URL") else root / "pgdata"
    args = [sys.executable, "-m", "pg_llm_lab.cli", "lab", "--no-browser", "--port", str(port),
            *(["--data", str(data)] if data else []), *lab_args,
            f"--IdentityProvider.token={TOKEN}", "--ServerApp.ip=127.0.0.1"]
    log = root / "lab.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, **quiet_jupyterlab_env(root)))
    lab = Lab(proc, f"http://127.0.0.1:{port}", TOKEN, data, log)
    try:
        _wait_until_serving(lab, startup_timeout)
        yield lab
    finally:
        stop_lab(lab)


def _wait_until_serving(lab: Lab, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if lab.proc.poll() is not None:
            raise AssertionError(f"lab exited with {lab.proc.returncode}:\n{lab.log_text()[-3000:]}")
        try:
            lab.api("status")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise AssertionError(f"lab not serving after {timeout} s:\n{lab.log_text()[-3000:]}")
            time.sleep(0.5)


def stop_lab(lab: Lab, timeout: float = 60) -> None:
    """SIGTERM the lab, wait; kill whatever is left (and then fail)."""
    try:
        lab.descendants = psutil.Process(lab.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        lab.descendants = []
    if lab.proc.poll() is None:
        lab.proc.send_signal(signal.SIGTERM)
    try:
        lab.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        lab.proc.kill()
        lab.proc.wait()
        raise AssertionError(f"lab did not stop within {timeout} s of SIGTERM:\n{lab.log_text()[-3000:]}")
    gone, alive = psutil.wait_procs(lab.descendants, timeout=10)
    for proc in alive:
        proc.kill()
    assert not alive, f"left running after lab exited: {[p.pid for p in alive]}"
