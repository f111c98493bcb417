"""Run notebooks of the learning path headless, in order, one kernel each, and time them.

    .venv/bin/python tests/notebook_runs.py              # the whole path: each notebook's Run All time
    .venv/bin/python tests/notebook_runs.py 03 04        # some of it, by number or name
    .venv/bin/python tests/notebook_runs.py --json       # the same as JSON

Each notebook runs as JupyterLab's Run All would (nbclient, the notebooks folder as the
working directory, each notebook's own metadata.execution.timeout), and the table gives
its wall time, including the kernel's start, and its slowest cell.  A chain stops at the
first notebook that fails.  The environment chooses the rest: PG_LLM_LAB_DATA or
DATABASE_URL the server, JUPYTERHUB_USER the learner, PG_LLM_LAB_QUICK=1 short training
runs.  tests/test_notebooks.py runs two chains of it at once, as two learners.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def cell_seconds(cell: dict) -> float:
    """How long a code cell ran, from the timestamps nbclient records (record_timing)."""
    timing = cell.get("metadata", {}).get("execution", {})
    start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
    if not (start and end):
        return 0.0
    return (datetime.fromisoformat(end.replace("Z", "+00:00"))
            - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()


def outputs_text(nb: dict) -> str:
    """The text a notebook's code cells printed or showed (streams and text/plain), one string."""
    return "\n".join("".join(o.get("text", "")) + json.dumps(o.get("data", {}).get("text/plain", ""))
                     for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell["outputs"])


def run(name: str) -> dict:
    """Execute notebooks/<name>.ipynb; its name, seconds, slowest cell (index, seconds), error (or None)
    and outputs (outputs_text: what it printed, e.g. which comparison it skipped)."""
    import nbclient
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    timeout = nb.metadata.get("execution", {}).get("timeout", 300)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.monotonic()
    error = None
    try:
        client.execute()
    except Exception as exc:  # a cell failed or timed out: report it, as nbmake would
        error = f"{type(exc).__name__}: {str(exc)[-2000:]}"
    seconds = [cell_seconds(cell) if cell.cell_type == "code" else 0.0 for cell in nb.cells]
    slowest = max(range(len(seconds)), key=seconds.__getitem__)
    return {"name": name, "seconds": round(time.monotonic() - start, 1),
            "slowest_cell": slowest, "slowest_cell_seconds": round(seconds[slowest], 1), "error": error,
            "outputs": outputs_text(nb)}


def run_chain(names: list[str]) -> list[dict]:
    """Run the notebooks one after the other, stopping after the first that fails."""
    results = []
    for name in names:
        results.append(run(name))
        if results[-1]["error"]:
            break
    return results


def path_names(selected: list[str]) -> list[str]:
    """The path's notebooks (sorted names), or those whose name or number is in selected."""
    names = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not selected:
        return names
    return [n for n in names if n in selected or n.split("_")[0] in selected]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="names or numbers (default: the whole path)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run_chain(path_names(args.notebooks))
    if args.json:
        print(json.dumps(results))
    else:
        for r in results:
            status = "ok" if not r["error"] else f"FAILED: {r['error'][:200]}"
            print(f"{r['name']:36} {r['seconds']:7.1f} s   slowest cell {r['slowest_cell']:3} "
                  f"{r['slowest_cell_seconds']:6.1f} s   {status}")
        print(f"{'Run All of these notebooks':36} {sum(r['seconds'] for r in results):7.1f} s")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
