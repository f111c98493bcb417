"""What each generator in tools/ does with its output: write the file, or
with --check exit 1 when the committed one differs (tests run the check)."""
from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(path: Path, text: str, check: bool) -> int:
    """The generator's exit status; `text` is what `path` must hold."""
    tool = Path(sys.argv[0]).name
    if check:
        if not path.exists() or path.read_text() != text:
            print(f"{path} is out of date: run python3 tools/{tool}", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path}")
    return 0
