"""Connections to the lab's database, ready to use.

    conn = pg_llm_lab.connect()       # psycopg 3: tensors arrive as ndarrays
    eng = pg_llm_lab.engine()         # SQLAlchemy, for %sql (jupysql) and pandas

Without a URL both use $DATABASE_URL if set, else the embedded server (which
they start, after building and installing pg_llm into it if needed).  Every
connection gets `CREATE EXTENSION IF NOT EXISTS pg_llm` and the numpy
adapters.
"""

from __future__ import annotations

import psycopg
import sqlalchemy

from . import build, server
from .adapters import register_tensor


def default_url(install: bool = True, data=None) -> str:
    """$DATABASE_URL, else the URL of the embedded server in `data`.

    The embedded server is started if needed, and with `install` pg_llm is
    built and installed into it first if missing or older than its sources.
    """
    if server.external_url():
        return server.external_url()
    if install:
        build.ensure_installed()
    return server.url(data)


def prepare(conn: psycopg.Connection, install: bool = True, load_numpy: bool = True) -> None:
    """CREATE EXTENSION pg_llm (if `install`) and register the tensor adapters."""
    if install:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_llm")
        except psycopg.errors.UniqueViolation:  # another session created it just now
            conn.rollback()
    if install or psycopg.types.TypeInfo.fetch(conn, "tensor"):
        register_tensor(conn, load_numpy)
    if not conn.autocommit:
        conn.commit()


def connect(url: str | None = None, *, autocommit: bool = True, install: bool = True) -> psycopg.Connection:
    """A psycopg connection to the lab's database (see the module docstring).

    install=False: don't build pg_llm nor create the extension; the adapters
    are registered only if the `tensor` type already exists.
    """
    conn = psycopg.connect(url or default_url(install), autocommit=autocommit)
    try:
        prepare(conn, install)
    except BaseException:
        conn.close()
        raise
    return conn


def sqlalchemy_url(url: str) -> str:
    """'postgresql://user@/db?host=/sock' -> 'postgresql+psycopg://user@/db?host=/sock'."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    return "postgresql+psycopg://" + rest


def engine(url: str | None = None, *, install: bool = True, numpy: bool = False,
           **kwargs) -> sqlalchemy.Engine:
    """A SQLAlchemy engine (psycopg 3 driver) whose connections are prepared like connect()'s.

    By default tensors in results keep their text form, which is what a %sql
    table shows (jupysql compares result rows, which ndarrays of different
    shapes cannot do); numpy=True loads them as ndarrays, e.g. for
    pandas.read_sql.  ndarray parameters are sent as tensors either way.
    Extra keyword arguments go to sqlalchemy.create_engine.
    """
    eng = sqlalchemy.create_engine(sqlalchemy_url(url or default_url(install)), **kwargs)

    @sqlalchemy.event.listens_for(eng, "connect")
    def _prepare(dbapi_connection, connection_record):
        prepare(dbapi_connection, install, load_numpy=numpy)

    return eng
