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
