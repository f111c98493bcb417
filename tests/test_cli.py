"""The `pg-llm-lab` command, run as a user runs it (against the session's server)."""
import os
import subprocess
import sys


def run_cli(db_url, *args):
    env = dict(os.environ, DATABASE_URL=db_url)
    return subprocess.run([sys.executable, "-m", "pg_llm_lab.cli", *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_demo(db_url):
    result = run_cli(db_url, "demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[[ 4.  5.]\n [10. 11.]]" in out                     # the matmul
    assert "SQLSTATE 22000" in out and "do not align" in out    # the friendly error
    assert "-> [3, 500]" in out                                 # GPT-2 logits shape
    generated = out.split("with a KV cache")[1].splitlines()[2]
    assert generated.startswith("-> [") and generated.count(",") == 9


def test_url_and_errors(db_url):
    assert run_cli(db_url, "url").stdout.strip() == db_url
    bad = run_cli(db_url, "import-hf", "/no/such/folder", "m")
    assert bad.returncode == 1 and "error" in bad.stderr
