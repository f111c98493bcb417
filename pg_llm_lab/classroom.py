"""A class on one server: `pg-llm-lab classroom init | add-learner NAME... | status`.

    from pg_llm_lab import classroom
    classroom.init(conn)                                  # llm_classroom_init(), as a superuser
    urls = classroom.add_learners(conn, ["alice", "bob"])  # {name: the DATABASE_URL to give them}
    classroom.status(conn)                                # who is connected, doing what, with how much memory

The SQL side (sql/90_classroom.sql) does the work: roles llm_learner and
llm_instructor, row-level security on every table, a schema and the class's
settings per learner.  Here: passwords, the URLs to hand out, and a table of
the sessions from pg_stat_activity.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

from psycopg import sql


def init(conn) -> None:
    """Make the server ready for a class (run it again any time: after an update, or after
    ALTER ROLE llm_learner SET ... to copy the new settings to every learner)."""
    conn.execute("SELECT llm_classroom_init()")


def add_learners(conn, names: list[str], *, instructor: bool = False, host: str | None = None,
                 passwords: bool = True) -> dict[str, str]:
    """Make each name a LOGIN role that is a learner (or an instructor), with a new random
    password; returns {name: its DATABASE_URL}, the server's address as `conn` reaches it
    (or `host`).  passwords=False leaves passwords alone (e.g. peer or certificate logins)."""
    urls = {}
    for name in names:
        conn.execute("SELECT llm_classroom_add_learner(%s, %s)", [name, instructor])
        password = None
        if passwords:
            password = secrets.token_urlsafe(12)
            conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(name), sql.Literal(password)))
        urls[name] = learner_url(conn, name, password, host)
    return urls


def learner_url(conn, name: str, password: str | None, host: str | None = None) -> str:
    """The URL `name` connects with: the server and database of `conn` (or `host`), as `name`."""
    host = host or conn.info.host
    auth = quote(name, safe="") + (f":{quote(password, safe='')}" if password else "")
    database = quote(conn.info.dbname, safe="")
    if host.startswith("/"):        # a Unix socket's directory
        return f"postgresql://{auth}@/{database}?host={quote(host, safe='/')}&port={conn.info.port}"
    return f"postgresql://{auth}@{host}:{conn.info.port}/{database}"


STATUS = """
    SELECT a.pid, a.usename AS role,
           CASE WHEN pg_has_role(a.usesysid, 'llm_instructor', 'MEMBER') THEN 'instructor'
                WHEN pg_has_role(a.usesysid, 'llm_learner', 'MEMBER') THEN 'learner'
                ELSE '' END AS is,
           a.application_name AS application, a.state,
           to_char(now() - a.query_start, 'HH24:MI:SS') AS for, left(a.query, 70) AS query
    FROM pg_stat_activity a
    WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
    ORDER BY a.usename, a.pid
"""


def resident_mb(pid: int) -> float | None:
    """A server process's resident memory in MB, when the server runs on this machine and
    /proc/PID/status is readable; else None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def status(conn) -> list[dict]:
    """The other sessions of the server: pid, role, learner or instructor, state, for how
    long, the query, and the backend's resident memory (MB, None when not readable here)."""
    cur = conn.execute(STATUS)
    names = [c.name for c in cur.description]
    rows = [dict(zip(names, row)) for row in cur.fetchall()]
    for row in rows:
        row["memory_mb"] = resident_mb(row["pid"])
    return rows
