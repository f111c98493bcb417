"""Shared fixtures: one database server for the whole test session.

The session's server is set up by the repository's top-level conftest.py (so
that `pytest notebooks/` alone gets it too): $DATABASE_URL if set, else a
private embedded cluster in a temporary directory.
"""

import pytest

import pg_llm_lab


@pytest.fixture(scope="session")
def db_url():
    """URL of the session's server, with pg_llm installed and the extension created."""
    url = pg_llm_lab.db.default_url()
    pg_llm_lab.connect(url).close()  # CREATE EXTENSION once, up front
    return url


@pytest.fixture
def conn(db_url):
    """A fresh autocommit psycopg connection with the numpy adapters."""
    with pg_llm_lab.connect(db_url) as connection:
        yield connection
