"""Connections to the lab's database, ready to use.

    conn = pg_llm_lab.connect()       # psycopg 3: tensors arrive as ndarrays
    eng = pg_llm_lab.engine()         # SQLAlchemy, for %sql (jupysql) and pandas

Without a URL both use $DATABASE_URL if set, else the embedded server (which
they start, after building and installing pg_llm into it if needed).  Every
connection gets `CREATE EXTENSION IF NOT EXISTS pg_llm` and the numpy
adapters.  A database whose pg_llm is older than this package is updated
(`ALTER EXTENSION pg_llm UPDATE`: models, datasets, logs and checkpoints are
kept), saying so on stderr.
"""

from __future__ import annotations

import sys
import warnings

import psycopg
import sqlalchemy
from psycopg.types import TypeInfo
from psycopg.types.string import TextLoader

from . import build, server
from .adapters import register_tensor
from .version import __version__


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
        update_extension(conn)
    if install or psycopg.types.TypeInfo.fetch(conn, "tensor"):
        register_tensor(conn, load_numpy)
    if not conn.autocommit:
        conn.commit()


def version_key(version: str) -> tuple:
    """'0.10.1' -> (0, 10, 1), for comparing extension versions."""
    return tuple(int(part) if part.isdigit() else part for part in version.split("."))


def update_extension(conn: psycopg.Connection) -> str | None:
    """ALTER EXTENSION pg_llm UPDATE if the database's pg_llm is older than this package.

    Returns (and prints to stderr) what happened, e.g. "pg_llm 0.1.0 -> 0.2.0:
    updated, ...", or None when there was nothing to do.  Warns instead when
    the server has no newer pg_llm to update to, or the user may not update it.
    """
    row = conn.execute(
        "SELECT e.extversion, a.default_version FROM pg_extension e "
        "JOIN pg_available_extensions a ON a.name = e.extname WHERE e.extname = 'pg_llm'").fetchone()
    if row is None or version_key(row[0]) >= version_key(__version__):
        return None
    installed, available = row
    if version_key(available) <= version_key(installed):
        warnings.warn(f"pg_llm {installed} is installed in the database and the server has no newer "
                      f"one; pg_llm_lab is {__version__}: install the extension of this release "
                      "(pg-llm-lab install --pg-config ...) and reconnect", stacklevel=3)
        return None
    try:
        with conn.transaction():
            conn.execute("ALTER EXTENSION pg_llm UPDATE")
    except psycopg.errors.InsufficientPrivilege as err:
        warnings.warn(f"pg_llm {installed} is older than pg_llm_lab {__version__} and this user "
                      f"may not update it ({err}): ask the database owner to run "
                      "ALTER EXTENSION pg_llm UPDATE", stacklevel=3)
        return None
    updated = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_llm'").fetchone()[0]
    if updated == installed:
        return None
    message = (f"NOTICE:  pg_llm {installed} -> {updated}: updated, your models, datasets, logs "
               "and checkpoints are kept")
    print(message, file=sys.stderr, flush=True)
    return message


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


def engine(url: str | None = None, *, conn: psycopg.Connection | None = None, install: bool = True,
           numpy: bool = False, **kwargs) -> sqlalchemy.Engine:
    """A SQLAlchemy engine (psycopg 3 driver) whose connections are prepared like connect()'s.

    With conn (a connection from connect()), the engine's one connection IS
    conn: `%%sql` cells and Python then share one session -- its autograd
    mode, its tape (llm_tape shows the session's own), its temporary tables.
    Otherwise it opens connections to url (default: the lab's server).

    By default tensors in results keep their text form, which is what a %sql
    table shows (jupysql compares result rows, which ndarrays of different
    shapes cannot do); numpy=True loads them as ndarrays, e.g. for
    pandas.read_sql.  ndarray parameters are sent as tensors either way.
    Extra keyword arguments go to sqlalchemy.create_engine.
    """
    if conn is not None:
        eng = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: conn,
                                       poolclass=sqlalchemy.pool.StaticPool, **kwargs)
        if not numpy:        # conn loads ndarrays; the engine's cursors keep the text form
            tensor_oid = TypeInfo.fetch(conn, "tensor").oid

            @sqlalchemy.event.listens_for(eng, "before_cursor_execute")
            def _text_tensors(connection, cursor, statement, parameters, context, executemany):
                cursor.adapters.register_loader(tensor_oid, TextLoader)

        return eng
    eng = sqlalchemy.create_engine(sqlalchemy_url(url or default_url(install)), **kwargs)

    @sqlalchemy.event.listens_for(eng, "connect")
    def _prepare(dbapi_connection, connection_record):
        prepare(dbapi_connection, install, load_numpy=numpy)

    return eng
