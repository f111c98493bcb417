"""Fixtures of the fuzz suite, and its report at the end of the run.

    pytest tests/fuzz                      # ~1 minute on 2 cores
    PG_LLM_FUZZ_SCALE=10 pytest tests/fuzz # ten times the inputs

The tests use the session's server (tests/conftest.py): the embedded one, or
$DATABASE_URL's (how .ci/sanitize runs them against a sanitizer build).
"""
import shutil
import tempfile
from pathlib import Path

import pytest
from fuzz_harness import REPORT, FuzzDB


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/fuzz/" in str(item.fspath):
            item.add_marker(pytest.mark.fuzz)


@pytest.fixture
def db(db_url):
    """A FuzzDB on the session's server."""
    fuzz = FuzzDB(db_url)
    yield fuzz
    fuzz.close()


@pytest.fixture(scope="module")
def server_dir():
    """A temporary folder the server's OS user can read and write (when we are
    root, the embedded server runs as its own unprivileged user)."""
    path = Path(tempfile.mkdtemp(prefix="pg_llm_fuzz_"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    tr = terminalreporter
    tr.section("pg_llm fuzz: inputs per target")
    total_inputs = total_seconds = 0
    for name, r in sorted(REPORT.items()):
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items(), key=lambda kv: -kv[1]))
        flag = f"  VIOLATIONS {r['violations']}" if r["violations"] else ""
        tr.write_line(f"{name:<44} {r['inputs']:>6} inputs {r['seconds']:6.1f}s  [{outcomes}]{flag}")
        total_inputs += r["inputs"]
        total_seconds += r["seconds"]
    tr.write_line(f"{'total':<44} {total_inputs:>6} inputs {total_seconds:6.1f}s")
