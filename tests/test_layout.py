"""`ls extension/src` shows the architecture: every folder is described in
extension/src/README.md and in pg_llm.h's map, and no folder includes a
folder that includes it back.  Reads the sources only."""
from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "extension" / "src"
FOLDERS = sorted(p.name for p in SRC.iterdir() if p.is_dir())


def folder_of(path: Path) -> str:
    """A file's top folder under src/, or "pg_llm" for pg_llm.c and pg_llm.h."""
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else "pg_llm"


def folder_includes() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for source in SRC.rglob("*.[ch]"):
        here = folder_of(source)
        for name in re.findall(r'^#include "([^"]+)"', source.read_text(), re.M):
            target = SRC / name
            if target.exists() and folder_of(target) != here:
                graph.setdefault(here, set()).add(folder_of(target))
    return graph


def test_no_include_cycle_between_folders():
    try:
        list(TopologicalSorter(folder_includes()).static_order())
    except CycleError as cycle:
        raise AssertionError(f"folders include each other: {' -> '.join(cycle.args[1])}") from None


def test_readme_describes_every_folder():
    readme = (SRC / "README.md").read_text()
    assert [f for f in FOLDERS if f"| `{f}/` |" not in readme] == []


def test_pg_llm_h_maps_every_folder():
    header = (SRC / "pg_llm.h").read_text()
    assert [f for f in FOLDERS if f"{f}/" not in header] == []


SQL_TABLE_ROW = re.compile(r"^\| `(?P<c>[\w.]+/?)` \| (?P<sql>.*`\d\d_\w+\.sql`.*) \|$", re.M)
C_FUNCTION = re.compile(r"CREATE (?:FUNCTION|PROCEDURE) (?P<name>\w+)\((?:(?!CREATE ).)*?"
                        r"AS 'MODULE_PATHNAME'(?:,\s*'(?P<symbol>\w+)')?", re.S)


def test_every_c_function_of_a_sql_file_lives_in_a_folder_mapped_to_it():
    mapped = {}
    for row in SQL_TABLE_ROW.finditer((SRC / "README.md").read_text()):
        for sql in re.findall(r"`(\d\d_\w+\.sql)`", row["sql"]):
            mapped.setdefault(sql, set()).add("pg_llm" if row["c"] == "pg_llm.c" else row["c"].rstrip("/"))
    defined = {}
    for source in SRC.rglob("*.c"):
        for symbol in re.findall(r"PG_FUNCTION_INFO_V1\((\w+)\)", source.read_text()):
            defined[symbol] = folder_of(source)
    misplaced = []
    for sql in sorted((ROOT / "sql").glob("*.sql")):
        for m in C_FUNCTION.finditer(sql.read_text()):
            folder = defined.get(m["symbol"] or m["name"])
            if folder not in mapped.get(sql.name, set()):
                misplaced.append(f"{sql.name}: {m['name']} is C in {folder}, not in {sorted(mapped.get(sql.name, []))}")
    assert not misplaced, "extension/src/README.md's SQL table does not say where:\n  " + "\n  ".join(misplaced)
