#!/usr/bin/env python3
"""Write the new functions of sql/*.sql into this release's upgrade script.

    python3 tools/gen_upgrade_functions.py            # rewrites the block
    python3 tools/gen_upgrade_functions.py --check    # exit 1 if it is out of date

A function (or procedure) is new when the previous release's frozen install
script (extension/releases/pg_llm--<previous>.sql) has no COMMENT ON for its
signature.  ALTER EXTENSION pg_llm UPDATE must create it, so the upgrade
script extension/releases/pg_llm--<previous>--<this>.sql needs its CREATE and
its COMMENT ON, exactly as sql/*.sql writes them.  This tool copies them, in
the order of sql/'s files, into one block of that script between the lines
BEGIN and END below (appended at the end the first time); the rest of the
script is written by hand (releases/README.md): changed tables and changed
functions, and a new function whose COMMENT ON it already has is left to it.

The script is committed, as PostgreSQL reads it; tests/test_upgrade.py fails
when this block is out of date.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from generated_file import write_or_check

ROOT = Path(__file__).resolve().parents[1]
SQL = ROOT / "sql"
RELEASES = ROOT / "extension" / "releases"
CONTROL = ROOT / "extension" / "pg_llm.control"
BEGIN = "-- ---- new functions of sql/*.sql: written by tools/gen_upgrade_functions.py, do not edit"
END = "-- ---- end of new functions"
CREATE = re.compile(r"CREATE (?:OR REPLACE )?(FUNCTION|PROCEDURE) (\w+)\(", re.I)
COMMENT = re.compile(r"COMMENT ON (FUNCTION|PROCEDURE) (\w+\([^)]*\)) IS", re.I)


def statements(sql: str) -> list[str]:
    """The statements of a script, each from its first keyword to its ';' (comments
    before a statement dropped; quotes, $$ bodies and comments inside it kept)."""
    out, start, i, n = [], None, 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            i = sql.index("*/", i) + 2
        elif sql[i].isspace():
            i += 1
        else:
            if start is None:
                start = i
            if sql[i] == "'":
                i = sql.index("'", i + 1) + 1  # '' inside a string is two strings in a row
            elif dollar := re.match(r"\$\w*\$", sql[i:]):
                i = sql.index(dollar[0], i + len(dollar[0])) + len(dollar[0])
            elif sql[i] == ";":
                out.append(sql[start:i + 1])
                start, i = None, i + 1
            else:
                i += 1
    return out


def signature(comment: str) -> str:
    """'llm_add(tensor, tensor)' of a COMMENT ON statement, spaces normalised."""
    return " ".join(COMMENT.match(comment)[2].split())


def commented(sql: str) -> set[str]:
    return {signature(s) for s in statements(sql) if COMMENT.match(s)}


def new_functions(sql: str, previous: str, upgrade: str) -> list[str]:
    """The CREATE and COMMENT ON statements, one text per function, of sql's functions
    that neither the previous release nor the hand-written part of the upgrade script
    comments on."""
    known = commented(previous) | commented(upgrade)
    stmts = statements(sql)
    out = []
    for i, create in enumerate(stmts):
        if not (m := CREATE.match(create)):
            continue
        comment = next((s for s in stmts[i + 1:] if (c := COMMENT.match(s)) and c[2].startswith(m[2] + "(")),
                       None)
        if comment is None:
            raise SystemExit(f"sql/: {m[1]} {m[2]} has no COMMENT ON after its CREATE (every function has one)")
        if signature(comment) not in known:
            out.append(f"{create}\n{comment}\n")
    return out


def upgrade_script() -> Path:
    version = re.search(r"^default_version = '(.*)'$", CONTROL.read_text(), re.M)[1]
    (path,) = RELEASES.glob(f"pg_llm--*--{version}.sql")
    return path


def previous_install(upgrade: Path) -> Path:
    previous = upgrade.name.split("--")[1]
    return RELEASES / f"pg_llm--{previous}.sql"


def generated(current: str) -> str:
    """The upgrade script `current` with its block of new functions rewritten."""
    hand_written = current
    if BEGIN in current:
        head, rest = current.split(BEGIN, 1)
        hand_written = head + rest.split(END + "\n", 1)[1]
    sql = "\n".join(p.read_text() for p in sorted(SQL.glob("*.sql")))
    new = new_functions(sql, previous_install(upgrade_script()).read_text(), hand_written)
    block = "\n".join([BEGIN, *new, END]) + "\n"  # a blank line between functions
    if BEGIN in current:
        return head + block + rest.split(END + "\n", 1)[1]
    return current.rstrip("\n") + "\n\n" + block


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed block differs")
    args = parser.parse_args()
    path = upgrade_script()
    return write_or_check(path, generated(path.read_text()), args.check)


if __name__ == "__main__":
    sys.exit(main())
