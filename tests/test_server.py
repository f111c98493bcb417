"""The embedded server's lifecycle, and $DATABASE_URL overriding it.

These tests make their own throwaway cluster (they start and stop it), so
they don't disturb the session's server; they need no pg_llm.
"""

import os
import subprocess
import sys

import psycopg
import pytest

from pg_llm_lab import build, db, server


@pytest.fixture(autouse=True)
def no_database_url(monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture(scope="module")
def pgdata(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster") / "pgdata"
    yield path
    server.stop(path)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PG_LLM_LAB_DATA", str(tmp_path / "from_env"))
    assert server.data_dir(tmp_path / "given") == tmp_path / "given"
    assert server.data_dir() == tmp_path / "from_env"
    monkeypatch.delenv("PG_LLM_LAB_DATA")
    assert server.data_dir().parts[-2:] == ("pg_llm_lab", "pgdata")


def test_database_url_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example/lab")
    assert server.url(tmp_path / "pgdata") == "postgresql://someone@db.example/lab"
    assert server.start(tmp_path / "pgdata") == "postgresql://someone@db.example/lab"
    assert server.stop(tmp_path / "pgdata") is False
    assert db.default_url() == "postgresql://someone@db.example/lab"
    assert not (tmp_path / "pgdata").exists(), "nothing embedded may be created"


def test_start_status_url_stop(pgdata):
    assert server.status(pgdata)["running"] is False
    url = server.start(pgdata)
    info = server.status(pgdata)
    assert info["running"] and info["pid"] and info["url"] == url
    assert info["version"].startswith("18")
    assert server.start(pgdata) == url == server.url(pgdata)  # idempotent
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)  # lab settings
    assert server.stop(pgdata) is True
    assert server.status(pgdata)["running"] is False
    assert server.stop(pgdata) is False


def test_server_outlives_the_process_that_started_it(pgdata):
    code = f"import pg_llm_lab.server as s; print(s.start({str(pgdata)!r}))"
    url = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert server.status(pgdata)["url"] == url
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
    server.stop(pgdata)


def test_stale_pidfile_is_ignored(pgdata):
    server.start(pgdata)
    server.stop(pgdata)
    # A postmaster.pid left by a crash, naming a pid that now belongs to
    # another process (this one): the server must not be considered running.
    (pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{pgdata}\n0\n5432\n{pgdata}\n\n 0 0\nready\n")
    assert server.status(pgdata)["running"] is False
    url = server.start(pgdata)
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
    server.stop(pgdata)


def test_sqlalchemy_url():
    url = "postgresql://postgres@/postgres?host=/tmp/x/pgdata"
    assert db.sqlalchemy_url(url) == "postgresql+psycopg://postgres@/postgres?host=/tmp/x/pgdata"
    assert db.sqlalchemy_url("postgres://u:p@h:5/d") == "postgresql+psycopg://u:p@h:5/d"
    with pytest.raises(ValueError):
        db.sqlalchemy_url("mysql://u@h/d")


def test_find_pg_config(monkeypatch, tmp_path):
    monkeypatch.delenv("PG_CONFIG", raising=False)
    embedded = build.find_pg_config()
    assert embedded == server.embedded_bin("pg_config")
    assert build.pg_config_value(embedded, "version").startswith("PostgreSQL 18")
    monkeypatch.setenv("PG_CONFIG", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        build.find_pg_config()
    assert build.find_pg_config(embedded) == embedded  # explicit wins over $PG_CONFIG


def test_build_error_excerpt_starts_at_the_first_error():
    log = "\n".join(["gcc -Werror=vla -c a.c"] * 50 + ["a.c: In function 'f':", "a.c:3:1: error: boom", "more"])
    excerpt = build._excerpt(log)
    assert excerpt.splitlines()[:2] == ["a.c: In function 'f':", "a.c:3:1: error: boom"]
    assert build._excerpt("\n".join(map(str, range(100)))).splitlines()[0] == "60"  # no error: the tail
