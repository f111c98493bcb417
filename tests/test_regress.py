"""The extension's pg_regress suite (extension/test/), run against the test server."""
import os
import shutil
import subprocess

import psycopg
import pytest

from pg_llm_lab import build


def test_pg_regress(db_url):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    params = psycopg.conninfo.conninfo_to_dict(db_url)
    env = dict(os.environ,
               PGHOST=str(params.get("host", "")), PGPORT=str(params.get("port", 5432)),
               PGUSER=str(params.get("user", "postgres")))
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    result = subprocess.run(
        ["make", "-C", str(build.extension_dir()), f"PG_CONFIG={build.find_pg_config()}", "installcheck"],
        env=env, capture_output=True, text=True)
    diffs = build.extension_dir() / "test" / "regression.diffs"
    detail = diffs.read_text()[-6000:] if diffs.exists() else result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"pg_regress failed:\n{detail}"
